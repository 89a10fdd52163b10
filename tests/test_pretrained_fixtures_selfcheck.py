"""The checkpoints in tests/fixtures/pretrained/ and their reference logits belong together.

Always (no torch): every fixture folder has config.json, reference.json and its safetensors
weights (one file, or shards named by model.safetensors.index.json), and reference.json's logits
have the shape its input_ids and config give. When torch + transformers are importable: transformers
reloads each folder and computes reference.json's logits again (made by make_pretrained_fixtures.py).
"""
import json
import struct
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent / "fixtures" / "pretrained"
EXPECTED = {"gpt2-tiny", "llama-tiny", "llama-tiny-headdim", "llama-tiny-bf16-sharded",
            "llama3-tiny-rope-scaling", "qwen2-tiny", "mistral-tiny"}
FIXTURES = sorted(p.name for p in HERE.iterdir() if p.is_dir())


def read_json(path):
    with open(path) as f:
        return json.load(f)


def safetensors_header(path):
    """The JSON header of a .safetensors file (8-byte little-endian length, then the JSON)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def test_all_fixtures_present():
    assert EXPECTED <= set(FIXTURES), EXPECTED - set(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_files(name):
    folder = HERE / name
    config = read_json(folder / "config.json")
    ref = read_json(folder / "reference.json")
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    assert single.exists() or index.exists()
    files = sorted(set(read_json(index)["weight_map"].values())) if index.exists() else [single.name]
    names, dtypes = set(), set()
    for file in files:
        header = safetensors_header(folder / file)
        header.pop("__metadata__", None)
        names |= set(header)
        dtypes |= {t["dtype"] for t in header.values()}
    assert dtypes == ({"BF16"} if "bf16" in name else {"F32"})
    if index.exists():
        assert len(files) >= 3 and names == set(read_json(index)["weight_map"])
    assert any("embed_tokens" in n or "wte" in n for n in names)

    ids, logits = np.array(ref["input_ids"]), np.array(ref["logits"])
    assert ids.ndim == 2 and logits.shape == ids.shape + (config["vocab_size"],)
    assert 0 <= ids.min() and ids.max() < config["vocab_size"]
    assert np.isfinite(logits).all() and logits.std() > 0.1
    assert {"transformers", "torch", "note"} <= set(ref)


@pytest.mark.parametrize("name", FIXTURES)
def test_transformers_reproduces_reference(name):
    torch = pytest.importorskip("torch", reason="torch not installed: the fixtures are checked without it")
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    ref = read_json(HERE / name / "reference.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            HERE / name, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(ref["input_ids"])).logits.float().numpy()
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(logits, np.array(ref["logits"], dtype=np.float32), rtol=1e-5, atol=1e-6)
