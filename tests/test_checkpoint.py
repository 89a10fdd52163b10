"""Checkpoints: exact round trip, atomic writes, and CheckpointError (naming the path) for
every kind of bad file."""
import gc
import json
import warnings
import zipfile

import numpy as np
import pytest

from tinygrad_lm.checkpoint import (CKPT_NAME, FORMAT_VERSION, CheckpointError, checkpoint_path, load_checkpoint,
                                    save_checkpoint)
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


def test_checkpoint_path_resolves_folders_and_files(tmp_path):
    assert checkpoint_path(tmp_path) == tmp_path / CKPT_NAME
    assert checkpoint_path(tmp_path / "new_run") == tmp_path / "new_run" / CKPT_NAME  # no suffix: a folder
    assert checkpoint_path(tmp_path / "x.npz") == tmp_path / "x.npz"


def test_round_trip_is_exact(saved):
    path, model, opt = saved
    assert path.name == CKPT_NAME and path.exists()
    ck = load_checkpoint(path.parent)  # a folder finds its ckpt.npz
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
    assert meta["format_version"] == FORMAT_VERSION
    for k, v in _meta().items():
        assert meta[k] == v


def test_round_trip_restores_model_and_optimizer(saved):
    """Loaded into a fresh model and optimizer, the next step is exactly the saved run's next step."""
    path, model, opt = saved
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


def test_save_without_optimizer(tmp_path):
    model, _ = _trained()
    save_checkpoint(tmp_path / "w.npz", model.state_dict(), _meta())
    ck = load_checkpoint(tmp_path / "w.npz")
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
    real_savez = np.savez

    def half_then_fail(file, **arrays):  # write part of a real archive, then die
        first = dict([next(iter(arrays.items()))])
        real_savez(file, **first)
        raise exc

    monkeypatch.setattr(np, "savez", half_then_fail)
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
        load_checkpoint(tmp_path)  # a folder without ckpt.npz
    assert str(tmp_path / CKPT_NAME) in str(e.value)


def _expect_corrupt(path, match=None):
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)
    return e.value


def test_truncated_checkpoint(saved):
    path, _, _ = saved
    raw = path.read_bytes()
    bad = path.with_name("bad.npz")
    for n in (0, 1, 30, len(raw) // 3, len(raw) // 2, len(raw) - 100, len(raw) - 1):
        bad.write_bytes(raw[:n])
        _expect_corrupt(bad)


def test_failed_load_closes_the_file(saved):
    path, _, _ = saved
    bad = path.with_name("bad.npz")
    bad.write_bytes(path.read_bytes()[:200])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError):
            load_checkpoint(bad)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_damaged_checkpoint_bytes(saved):
    """Random bytes, and single damaged bytes in the zip headers: always a CheckpointError (or an
    intact load when the byte did not matter), never another exception."""
    path, _, _ = saved
    raw = path.read_bytes()
    bad = path.with_name("bad.npz")
    rng = np.random.default_rng(0)
    bad.write_bytes(rng.integers(0, 256, size=5000, dtype=np.uint8).tobytes())
    _expect_corrupt(bad)
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


def _rewrite(src, dst, edit_meta=None, drop=(), extra=None):
    """Copy the arrays of a checkpoint to dst with its meta edited (raw npz, no save_checkpoint)."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    if edit_meta is not None:
        meta = json.loads(arrays["meta"].tobytes().decode())
        meta = edit_meta(meta)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays.update(extra or {})
    np.savez(dst, **arrays)
    return dst


def test_wrong_format_version(saved):
    path, _, _ = saved
    for v in (FORMAT_VERSION + 1, None, "1"):
        bad = _rewrite(path, path.with_name(f"v{v}.npz"), lambda m: {**m, "format_version": v})
        _expect_corrupt(bad, "format version")
    bad = _rewrite(path, path.with_name("nov.npz"), lambda m: {k: x for k, x in m.items() if k != "format_version"})
    _expect_corrupt(bad, "format version")


@pytest.mark.parametrize("key", ["model_config", "tokenizer", "step"])
def test_missing_meta_key(saved, key):
    path, _, _ = saved
    bad = _rewrite(path, path.with_name("bad.npz"), lambda m: {k: v for k, v in m.items() if k != key})
    _expect_corrupt(bad, key)


def test_meta_missing_unreadable_or_not_an_object(saved):
    path, _, _ = saved
    _expect_corrupt(_rewrite(path, path.with_name("nometa.npz"), drop=("meta",)))
    _expect_corrupt(_rewrite(path, path.with_name("badjson.npz"),
                             extra={"meta": np.frombuffer(b"{not json", dtype=np.uint8)}))
    _expect_corrupt(_rewrite(path, path.with_name("badutf8.npz"),
                             extra={"meta": np.frombuffer(b"\xff\xfe{}", dtype=np.uint8)}))
    _expect_corrupt(_rewrite(path, path.with_name("list.npz"), lambda m: [m]))


def test_damaged_optimizer_section(saved):
    path, _, _ = saved
    _expect_corrupt(_rewrite(path, path.with_name("a.npz"), lambda m: {**m, "optimizer": {"param_groups": []}}))
    _expect_corrupt(_rewrite(path, path.with_name("b.npz"), lambda m: {**m, "optimizer": [1]}))
    _expect_corrupt(_rewrite(path, path.with_name("c.npz"), extra={"optim/x/exp_avg": np.zeros(2)}))


def test_pickled_arrays_are_refused(saved):
    path, _, _ = saved
    bad = path.with_name("pickle.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(bad, **arrays, evil=np.array([object()], dtype=object))
    _expect_corrupt(bad)


def test_not_a_zip_but_a_plain_npy(saved):
    path, _, _ = saved
    bad = path.with_name("plain.npz")
    with open(bad, "wb") as f:
        np.save(f, np.zeros(3))
    _expect_corrupt(bad)
    assert not zipfile.is_zipfile(bad)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("kind", ["pickle", "object-array", "text"])
def test_a_foreign_file_is_named_and_unpickling_is_never_suggested(tmp_path, kind):
    """NumPy's own message for pickled data advises loading it "unsafely": a file from a
    stranger would then run code. The error says what the file is not, and what was expected."""
    import pickle
    bad = tmp_path / "ckpt.npz"
    if kind == "pickle":
        bad.write_bytes(pickle.dumps({"model": [1, 2]}))
    elif kind == "object-array":
        np.savez(bad, meta=np.array([{"a": 1}], dtype=object))
    else:
        bad.write_text("hello\n")
    msg = str(_expect_corrupt(bad, "is not a tinygrad_lm checkpoint"))
    assert "expected the ckpt.npz archive" in msg
    assert "allow_pickle" not in msg and "unsafe" not in msg and "pickle.load" not in msg
