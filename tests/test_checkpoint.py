"""Checkpoints: exact round trip, atomic writes, old .npz checkpoints (format 1) still loading and
resuming, and CheckpointError (naming the path) for every kind of bad file."""
import gc
import json
import warnings
import zipfile

import numpy as np
import pytest
import safetensors.numpy

from tinygrad_lm.checkpoint import (CKPT_NAME, FORMAT_VERSION, LEGACY_CKPT_NAME, META_KEY, CheckpointError,
                                    checkpoint_path, checkpoint_step, find_checkpoint, load_checkpoint,
                                    save_checkpoint)
from tinygrad_lm.hub.safetensors_file import read_safetensors, read_safetensors_header
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.tensor import manual_seed

CFG = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)


def _trained(seed=0):
    """A tiny GPT and its AdamW after two steps (so the optimizer has moments and a step count)."""
    manual_seed(seed)
    model = GPT(GPTConfig(**CFG))
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.99))
    rng = np.random.default_rng(seed)
    for _ in range(2):
        x = rng.integers(0, CFG["vocab_size"], size=(2, 8))
        _, loss = model(x, np.roll(x, -1, axis=1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _meta(step=7):
    return {"model_config": GPTConfig(**CFG).to_dict(), "tokenizer": {"kind": "char", "chars": list("abc")},
            "step": step, "best_val_loss": 1.25, "note": "ünïcode ✓", "nested": {"a": [1, 2.5, None]}}


@pytest.fixture
def saved(tmp_path):
    model, opt = _trained()
    path = save_checkpoint(tmp_path / "run", model.state_dict(), _meta(), opt.state_dict())
    return path, model, opt


def _np(a):
    return np.asarray(a.data if hasattr(a, "data") and not isinstance(a, np.ndarray) else a)


def _to_npz(src, dst, edit_meta=None, drop=(), extra=None, version=1):
    """A checkpoint in the old layout (format 1): np.savez of the same "model/.." and "optim/.." arrays
    and the JSON meta as a uint8 array "meta" (written here, as tinygrad_lm 0.1 wrote it)."""
    arrays = read_safetensors(src)
    meta = json.loads(read_safetensors_header(src)[1][META_KEY])
    meta["format_version"] = version
    if edit_meta is not None:
        meta = edit_meta(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays = {k: v for k, v in arrays.items() if k not in drop}
    arrays.update(extra or {})
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, **arrays)
    return dst


@pytest.fixture
def legacy(saved, tmp_path):
    """The saved checkpoint as an old run folder holds it: old/ckpt.npz, format 1."""
    path, model, opt = saved
    return _to_npz(path, tmp_path / "old" / LEGACY_CKPT_NAME), model, opt


def test_checkpoint_path_resolves_folders_and_files(tmp_path):
    assert CKPT_NAME == "ckpt.safetensors" and LEGACY_CKPT_NAME == "ckpt.npz"
    assert checkpoint_path(tmp_path) == tmp_path / CKPT_NAME
    assert checkpoint_path(tmp_path / "new_run") == tmp_path / "new_run" / CKPT_NAME  # no suffix: a folder
    assert checkpoint_path(tmp_path / "x.npz") == tmp_path / "x.npz"
    assert find_checkpoint(tmp_path) == tmp_path / CKPT_NAME  # nothing there yet: where it would be


def test_a_folder_finds_the_new_file_else_an_old_one(tmp_path):
    (tmp_path / LEGACY_CKPT_NAME).write_bytes(b"")
    assert find_checkpoint(tmp_path) == tmp_path / LEGACY_CKPT_NAME
    (tmp_path / CKPT_NAME).write_bytes(b"")
    assert find_checkpoint(tmp_path) == tmp_path / CKPT_NAME  # the new one wins
    (tmp_path / CKPT_NAME).unlink()
    assert find_checkpoint(tmp_path / CKPT_NAME) == tmp_path / CKPT_NAME  # a file asked for by name is that file


@pytest.mark.parametrize("kind", ["saved", "legacy"])
def test_round_trip_is_exact(request, kind):
    """The new format, and an old .npz checkpoint: the same dict."""
    path, model, opt = request.getfixturevalue(kind)
    assert path.name == (CKPT_NAME if kind == "saved" else LEGACY_CKPT_NAME) and path.exists()
    ck = load_checkpoint(path.parent)  # a folder finds its ckpt.safetensors, or an old run's ckpt.npz
    assert ck["path"] == path

    sd = model.state_dict()
    assert set(ck["model"]) == set(sd)
    for k, v in sd.items():
        got = ck["model"][k]
        assert isinstance(got, np.ndarray)                     # host arrays, whatever the device
        assert got.dtype == _np(v).dtype and got.shape == _np(v).shape
        np.testing.assert_array_equal(got, _np(v))

    want = opt.state_dict()
    got = ck["optimizer"]
    assert got["param_groups"] == want["param_groups"]
    assert set(got["state"]) == set(want["state"])
    for i, entry in want["state"].items():
        assert set(got["state"][i]) == set(entry)
        for name, v in entry.items():
            if isinstance(v, np.ndarray):
                assert got["state"][i][name].dtype == v.dtype
                np.testing.assert_array_equal(got["state"][i][name], v)
            else:
                assert got["state"][i][name] == v and type(got["state"][i][name]) is type(v)

    meta = ck["meta"]
    assert meta["format_version"] == (FORMAT_VERSION if kind == "saved" else 1)
    for k, v in _meta().items():
        assert meta[k] == v


@pytest.mark.parametrize("kind", ["saved", "legacy"])
def test_round_trip_restores_model_and_optimizer(request, kind):
    """Loaded into a fresh model and optimizer, the next step is exactly the saved run's next step."""
    path, model, opt = request.getfixturevalue(kind)
    ck = load_checkpoint(path)
    manual_seed(123)  # different init: everything must come from the checkpoint
    model2 = GPT(GPTConfig(**ck["meta"]["model_config"]))
    opt2 = model2.configure_optimizers(0.0, 1.0, (0.5, 0.5))
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optimizer"])
    x = np.arange(16).reshape(2, 8) % CFG["vocab_size"]
    for m, o in ((model, opt), (model2, opt2)):
        _, loss = m(x, np.roll(x, -1, axis=1))
        loss.backward()
        o.step()
    for (k, a), (k2, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(_np(a), _np(b))


def test_the_file_is_plain_safetensors_with_the_meta_as_one_json_string(saved):
    """Any safetensors reader sees the tensors; the meta is one JSON string in __metadata__."""
    path, model, opt = saved
    ref = safetensors.numpy.load_file(path)
    assert {k for k in ref if k.startswith("model/")} == {f"model/{k}" for k in model.state_dict()}
    assert any(k.startswith("optim/") for k in ref) and "meta" not in ref
    meta = json.loads(read_safetensors_header(path)[1][META_KEY])
    assert meta["format_version"] == FORMAT_VERSION == 2 and meta["step"] == 7
    assert checkpoint_step(path.parent) == 7


def test_save_without_optimizer(tmp_path):
    model, _ = _trained()
    save_checkpoint(tmp_path / "w.safetensors", model.state_dict(), _meta())
    ck = load_checkpoint(tmp_path / "w.safetensors")
    assert ck["optimizer"] is None and "optimizer" not in ck["meta"]


def test_save_overwrites_atomically_and_leaves_no_temp_files(saved):
    path, model, opt = saved
    save_checkpoint(path, model.state_dict(), _meta(step=8), opt.state_dict())
    assert load_checkpoint(path)["meta"]["step"] == 8
    assert sorted(p.name for p in path.parent.iterdir()) == [CKPT_NAME]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_old_checkpoint(saved, monkeypatch, exc):
    path, model, opt = saved
    before = path.read_bytes()
    real_save = safetensors.numpy.save_file

    def half_then_fail(tensors, filename, metadata=None):  # write part of a real file, then die
        real_save(dict([next(iter(tensors.items()))]), filename, metadata=metadata)
        raise exc

    monkeypatch.setattr(safetensors.numpy, "save_file", half_then_fail)
    with pytest.raises(type(exc)):
        save_checkpoint(path, model.state_dict(), _meta(step=99), opt.state_dict())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["meta"]["step"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == [CKPT_NAME]  # the temp file is gone


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint") as e:
        load_checkpoint(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(e.value)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)  # a folder without ckpt.safetensors (or ckpt.npz)
    assert str(tmp_path / CKPT_NAME) in str(e.value)
    assert checkpoint_step(tmp_path) is None


def _expect_corrupt(path, match=None):
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)
    assert checkpoint_step(path) in (None, 7)  # never raises
    return e.value


@pytest.mark.parametrize("kind", ["saved", "legacy"])
def test_truncated_checkpoint(request, kind):
    path, _, _ = request.getfixturevalue(kind)
    raw = path.read_bytes()
    bad = path.with_name("bad" + path.suffix)
    for n in (0, 1, 8, 9, 30, len(raw) // 3, len(raw) // 2, len(raw) - 100, len(raw) - 1):
        bad.write_bytes(raw[:n])
        _expect_corrupt(bad)


def test_truncated_checkpoint_says_why(saved):
    path, _, _ = saved
    raw = path.read_bytes()
    bad = path.with_name("bad.safetensors")
    bad.write_bytes(raw[:len(raw) // 2])
    _expect_corrupt(bad, r"is not a tinygrad_lm checkpoint \(tensor '.*': data_offsets .* end past .*truncated")
    bad.write_bytes(raw[:100])
    _expect_corrupt(bad, "header length")


@pytest.mark.parametrize("kind", ["saved", "legacy"])
def test_failed_load_closes_the_file(request, kind):
    path, _, _ = request.getfixturevalue(kind)
    bad = path.with_name("bad" + path.suffix)
    bad.write_bytes(path.read_bytes()[:200])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError):
            load_checkpoint(bad)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_damaged_checkpoint_bytes(saved):
    """Random bytes, and damaged bytes in the header: always a CheckpointError (or an intact load
    when the byte did not matter), never another exception."""
    path, _, _ = saved
    raw = path.read_bytes()
    bad = path.with_name("bad.safetensors")
    rng = np.random.default_rng(0)
    bad.write_bytes(rng.integers(0, 256, size=5000, dtype=np.uint8).tobytes())
    _expect_corrupt(bad)
    bad.write_bytes(raw[:8] + rng.integers(0, 256, size=len(raw) - 8, dtype=np.uint8).tobytes())
    _expect_corrupt(bad)
    n = int.from_bytes(raw[:8], "little")
    for pos in [*range(8), *rng.integers(8, 8 + n, size=60)]:
        for val in (0x00, 0x22, 0x7D, 0xFF):
            b = bytearray(raw)
            b[pos] = val
            bad.write_bytes(bytes(b))
            try:
                load_checkpoint(bad)
            except CheckpointError as e:
                assert str(bad) in str(e)


def test_damaged_legacy_checkpoint_bytes(legacy):
    """Random bytes, and single damaged bytes in the zip headers of an old .npz: always a
    CheckpointError (or an intact load when the byte did not matter), never another exception."""
    path, _, _ = legacy
    raw = path.read_bytes()
    bad = path.with_name("bad.npz")
    rng = np.random.default_rng(0)
    bad.write_bytes(b"PK\x03\x04" + rng.integers(0, 256, size=500, dtype=np.uint8).tobytes())
    _expect_corrupt(bad)
    # central directory entries ("PK\1\2"): bytes 6-11 are the version needed, the flags (bit 0:
    # encrypted) and the compression method; damage there makes zipfile raise unusual exceptions
    entries = [i for i in range(len(raw) - 3) if raw[i:i + 4] == b"PK\x01\x02"][:3]
    assert entries
    for pos in [e + k for e in entries for k in (6, 7, 8, 10)]:
        for val in (0x01, 0x63, 0xFF):
            b = bytearray(raw)
            b[pos] = val
            bad.write_bytes(bytes(b))
            try:
                load_checkpoint(bad)
            except CheckpointError as e:
                assert str(bad) in str(e)


def _rewrite(src, dst, edit_meta=None, drop=(), extra=None, raw_meta=None, metadata=None):
    """Copy the tensors of a checkpoint to dst with its meta edited (raw safetensors, no save_checkpoint).
    raw_meta: the "tinygrad_lm" string itself; metadata: the whole __metadata__."""
    arrays = {k: v for k, v in read_safetensors(src).items() if k not in drop}
    arrays.update(extra or {})
    if metadata is None:
        meta = json.loads(read_safetensors_header(src)[1][META_KEY])
        if edit_meta is not None:
            meta = edit_meta(meta)
        metadata = {META_KEY: json.dumps(meta) if raw_meta is None else raw_meta}
    safetensors.numpy.save_file(arrays, dst, metadata=metadata)
    return dst


def test_wrong_format_version(saved):
    path, _, _ = saved
    for v in (FORMAT_VERSION + 1, 1, None, "2"):
        bad = _rewrite(path, path.with_name(f"v{v}.safetensors"), lambda m: {**m, "format_version": v})
        _expect_corrupt(bad, "format version")
    bad = _rewrite(path, path.with_name("nov.safetensors"),
                   lambda m: {k: x for k, x in m.items() if k != "format_version"})
    _expect_corrupt(bad, "format version")


def test_wrong_format_version_in_an_old_npz(saved, tmp_path):
    path, _, _ = saved
    for v in (2, 0, None):
        bad = _to_npz(path, tmp_path / f"v{v}.npz", version=v)
        msg = str(_expect_corrupt(bad, "format version"))
        assert "an .npz archive" in msg and "version 2 (ckpt.safetensors) and version 1 (ckpt.npz)" in msg


@pytest.mark.parametrize("key", ["model_config", "tokenizer", "step"])
def test_missing_meta_key(saved, tmp_path, key):
    path, _, _ = saved
    def edit(m):
        return {k: v for k, v in m.items() if k != key}
    _expect_corrupt(_rewrite(path, path.with_name("bad.safetensors"), edit), key)
    _expect_corrupt(_to_npz(path, tmp_path / "bad.npz", edit), key)


def test_meta_missing_unreadable_or_not_an_object(saved):
    path, _, _ = saved
    msg = str(_expect_corrupt(_rewrite(path, path.with_name("nometa.safetensors"), metadata={"format": "pt"})))
    assert "without tinygrad_lm's 'tinygrad_lm' metadata" in msg
    _expect_corrupt(_rewrite(path, path.with_name("nothing.safetensors"), metadata={}))
    _expect_corrupt(_rewrite(path, path.with_name("badjson.safetensors"), raw_meta="{not json"))
    _expect_corrupt(_rewrite(path, path.with_name("deep.safetensors"), raw_meta="[" * 100_000 + "]" * 100_000))
    _expect_corrupt(_rewrite(path, path.with_name("list.safetensors"), lambda m: [m]), "not an object")


def test_meta_missing_unreadable_or_not_an_object_in_an_old_npz(saved, tmp_path):
    path, _, _ = saved
    _expect_corrupt(_to_npz(path, tmp_path / "nometa.npz", drop=("meta",)))
    _expect_corrupt(_to_npz(path, tmp_path / "badjson.npz", extra={"meta": np.frombuffer(b"{not json", np.uint8)}))
    _expect_corrupt(_to_npz(path, tmp_path / "badutf8.npz", extra={"meta": np.frombuffer(b"\xff\xfe{}", np.uint8)}))
    _expect_corrupt(_to_npz(path, tmp_path / "list.npz", lambda m: [m]), "not an object")


def test_a_pretrained_model_file_is_not_a_checkpoint(tmp_path):
    """A Hugging Face model.safetensors is a fine safetensors file, but no tinygrad_lm checkpoint."""
    bad = tmp_path / "model.safetensors"
    safetensors.numpy.save_file({"wte.weight": np.zeros((4, 2), np.float32)}, bad, metadata={"format": "pt"})
    msg = str(_expect_corrupt(bad, "is not a tinygrad_lm checkpoint"))
    assert "model weights from elsewhere" in msg and "expected the ckpt.safetensors file" in msg


def test_damaged_optimizer_section(saved):
    path, _, _ = saved
    _expect_corrupt(_rewrite(path, path.with_name("a.safetensors"), lambda m: {**m, "optimizer": {"param_groups": []}}))
    _expect_corrupt(_rewrite(path, path.with_name("b.safetensors"), lambda m: {**m, "optimizer": [1]}))
    _expect_corrupt(_rewrite(path, path.with_name("c.safetensors"), extra={"optim/x/exp_avg": np.zeros(2)}))


def test_pickled_arrays_are_refused(legacy):
    path, _, _ = legacy
    bad = path.with_name("pickle.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(bad, **arrays, evil=np.array([object()], dtype=object))
    _expect_corrupt(bad, "pickled Python objects")


def test_not_a_zip_but_a_plain_npy(saved):
    path, _, _ = saved
    bad = path.with_name("plain.npz")
    with open(bad, "wb") as f:
        np.save(f, np.zeros(3))
    _expect_corrupt(bad, "not a safetensors file")
    assert not zipfile.is_zipfile(bad)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("name", ["ckpt.npz", "ckpt.safetensors"])
@pytest.mark.parametrize("kind", ["pickle", "object-array", "text"])
def test_a_foreign_file_is_named_and_unpickling_is_never_suggested(tmp_path, kind, name):
    """NumPy's own message for pickled data advises loading it "unsafely": a file from a
    stranger would then run code. The error says what the file is not, and what was expected."""
    import pickle
    bad = tmp_path / name
    if kind == "pickle":
        bad.write_bytes(pickle.dumps({"model": [1, 2]}))
    elif kind == "object-array":
        with open(bad, "wb") as f:
            np.savez(f, meta=np.array([{"a": 1}], dtype=object))
    else:
        bad.write_text("hello\n")
    msg = str(_expect_corrupt(bad, "is not a tinygrad_lm checkpoint"))
    assert "expected the ckpt.safetensors file that `tinygrad-lm train` writes" in msg
    assert "allow_pickle" not in msg and "unsafe" not in msg and "pickle.load" not in msg


# ---- a run folder of an older tinygrad_lm ----------------------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 30


def _trainer(tmp_path, out, resume=False, overwrite=False, **kw):
    from tinygrad_lm.train import TrainConfig, Trainer
    data = tmp_path / "input.txt"
    data.write_text(TEXT)
    cfg = TrainConfig(**{**dict(out_dir=str(out), data=str(data), batch_size=4, max_iters=6, eval_interval=3,
                                eval_iters=2, log_interval=1, warmup_iters=2, lr_decay_iters=6, learning_rate=1e-2,
                                sample_tokens=0, progress=False), **kw})
    return Trainer(cfg, dict(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.1), resume=resume,
                   overwrite=overwrite, log=lambda s: None)


def _make_old_run(tmp_path, out):
    """A run folder as tinygrad_lm 0.1 left it: ckpt.npz (format 1) at iter 3, log.jsonl."""
    _trainer(tmp_path, out, max_iters=3).train()
    _to_npz(out / CKPT_NAME, out / LEGACY_CKPT_NAME)
    (out / CKPT_NAME).unlink()
    (out / "loss.png").unlink(missing_ok=True)


def test_an_old_run_resumes_exactly_and_moves_to_the_new_format(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(tmp_path / "cache"))
    from tinygrad_lm.train import RunExistsError, existing_run
    full = _trainer(tmp_path, tmp_path / "full")
    full.train()
    old = tmp_path / "old"
    _make_old_run(tmp_path, old)
    assert existing_run(old) == "ckpt.npz at iter 3, log.jsonl"
    with pytest.raises(RunExistsError, match="ckpt.npz at iter 3"):
        _trainer(tmp_path, old)
    resumed = _trainer(tmp_path, old, resume=True)
    assert resumed.step == 3 and resumed.ckpt["path"] == old / LEGACY_CKPT_NAME
    resumed.train()
    # one folder, one checkpoint: the new file, and the old one is gone
    assert (old / CKPT_NAME).exists() and not (old / LEGACY_CKPT_NAME).exists()
    a, b = load_checkpoint(old), load_checkpoint(tmp_path / "full")
    assert a["meta"]["step"] == b["meta"]["step"] == 6
    for k, v in b["model"].items():
        np.testing.assert_array_equal(a["model"][k], v, err_msg=k)  # bit for bit the run never interrupted
    assert existing_run(old).startswith("ckpt.safetensors at iter 6")


def test_overwrite_removes_an_old_runs_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(tmp_path / "cache"))
    old = tmp_path / "old"
    _make_old_run(tmp_path, old)
    _trainer(tmp_path, old, overwrite=True, max_iters=1).train()
    assert (old / CKPT_NAME).exists() and not (old / LEGACY_CKPT_NAME).exists()
    assert load_checkpoint(old)["meta"]["step"] == 1
