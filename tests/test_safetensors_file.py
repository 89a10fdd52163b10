"""Our safetensors reader against the `safetensors` package (an independent reader and writer), the
atomic writer, sharded folders, and a SafetensorsError naming the problem for every kind of bad
header, found before anything large is allocated."""
import json
import os
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safetensors.numpy
from tinygrad_lm.hub.safetensors_file import (INDEX_NAME, MAX_HEADER_BYTES, SafetensorsError, TensorInfo,
                                              atomic_write, read_safetensors, read_safetensors_header,
                                              read_sharded, write_safetensors)

NUMPY_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]


def _tensors(seed=0):
    """One tensor per dtype, plus a scalar, an empty and a 3-D one."""
    rng = np.random.default_rng(seed)
    out = {}
    for dt in NUMPY_DTYPES:
        if dt is np.bool_:
            out["bool"] = rng.integers(0, 2, size=(3, 5)).astype(np.bool_)
        elif np.issubdtype(dt, np.floating):
            out[np.dtype(dt).name] = rng.standard_normal((3, 5)).astype(dt)
        else:
            info = np.iinfo(dt)
            out[np.dtype(dt).name] = rng.integers(info.min, info.max, size=(3, 5), dtype=dt, endpoint=True)
    out["scalar"] = np.array(2.5, np.float32)
    out["empty"] = np.zeros((0, 4), np.int16)
    out["block.0.weight"] = rng.standard_normal((2, 3, 4)).astype(np.float32)
    return out


def _assert_same(got: dict, want: dict):
    assert list(got) == list(want) or set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def _raw(header, data=b"", n=None, pad=b""):
    """A file's bytes from a header (dict, or raw bytes) and data; n overrides the header length."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    h += pad
    return (len(h) if n is None else n).to_bytes(8, "little") + h + data


def _bad(tmp_path, raw, *words, name="bad.safetensors"):
    """The file is refused with a SafetensorsError naming it and each of ``words``; reading the
    header alone is refused the same way, and nothing large is allocated on the way."""
    path = tmp_path / name
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        with pytest.raises(SafetensorsError) as e:
            read_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000 + 4 * len(raw), peak
    msg = str(e.value)
    assert str(path) in msg and e.value.path == str(path)
    for w in words:
        assert w in msg, (w, msg)
    with pytest.raises(SafetensorsError):
        read_safetensors_header(path)
    return msg


# ---- round trips ----------------------------------------------------------------------------------

def test_round_trip_every_dtype_and_the_reference_reader_agrees(tmp_path):
    want = _tensors()
    path = write_safetensors(tmp_path / "a.safetensors", want, {"format": "np", "note": "ünïcode ✓"})
    assert path == tmp_path / "a.safetensors"
    _assert_same(read_safetensors(path), want)
    _assert_same(safetensors.numpy.load_file(path), want)  # the package reads what we wrote
    infos, meta = read_safetensors_header(path)
    assert meta == {"format": "np", "note": "ünïcode ✓"}
    assert infos["float16"] == TensorInfo("F16", (3, 5), infos["float16"].data_offsets)
    assert infos["scalar"].shape == () and infos["empty"].shape == (0, 4)
    assert {i.dtype for i in infos.values()} >= {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"}


def test_files_written_by_the_package_read_back_equal(tmp_path):
    want = _tensors(1)
    safetensors.numpy.save_file(want, tmp_path / "b.safetensors", metadata={"k": "v"})
    _assert_same(read_safetensors(tmp_path / "b.safetensors"), want)
    assert read_safetensors_header(tmp_path / "b.safetensors")[1] == {"k": "v"}
    safetensors.numpy.save_file({}, tmp_path / "none.safetensors")  # no tensors, no metadata
    assert read_safetensors(tmp_path / "none.safetensors") == {}
    assert read_safetensors_header(tmp_path / "none.safetensors") == ({}, {})


def test_files_written_by_torch_including_bf16(tmp_path):
    torch = pytest.importorskip("torch", reason="torch writes the bf16 reference file")
    import safetensors.torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g) * 1e3
    ts = {"bf16": x.to(torch.bfloat16), "f16": x.to(torch.float16), "f32": x, "i64": torch.arange(-5, 5),
          "bool": x > 0, "u8": torch.arange(256, dtype=torch.uint8).reshape(16, 16),
          "special": torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 1e-40, 3e38]).to(torch.bfloat16)}
    safetensors.torch.save_file(ts, tmp_path / "t.safetensors")
    for copy in (True, False):
        got = read_safetensors(tmp_path / "t.safetensors", copy=copy)
        assert got["bf16"].dtype == np.float32 and got["bf16"].shape == (4, 7)
        np.testing.assert_array_equal(got["bf16"], ts["bf16"].float().numpy())  # exact: bf16 widens losslessly
        np.testing.assert_array_equal(got["special"], ts["special"].float().numpy())
        for k in ("f16", "f32", "i64", "bool", "u8"):
            np.testing.assert_array_equal(got[k], ts[k].numpy(), err_msg=k)
            assert got[k].dtype == ts[k].numpy().dtype


def test_writer_takes_any_layout_and_byte_order(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    ts = {"t": a.T, "strided": a[:, ::2], "big": a.astype(">f4"), "big_i": np.arange(5, dtype=">i8")}
    write_safetensors(tmp_path / "c.safetensors", ts)
    got = read_safetensors(tmp_path / "c.safetensors")
    for k, v in ts.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype.isnative
    assert safetensors.numpy.load_file(tmp_path / "c.safetensors")["big"].tolist() == a.tolist()


def test_writer_refuses_what_safetensors_cannot_hold(tmp_path):
    for bad in ({"x": np.zeros(2, np.complex64)}, {"x": np.array(["a"])}, {"x": np.array([object()])}):
        with pytest.raises(TypeError, match="'x'"):
            write_safetensors(tmp_path / "x.safetensors", bad)
    with pytest.raises(ValueError, match="__metadata__"):
        write_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.zeros(1)})
    with pytest.raises(TypeError, match="metadata"):
        write_safetensors(tmp_path / "x.safetensors", {}, {"a": 1})
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def test_copy_owns_memory_and_no_copy_is_read_only(tmp_path):
    path = write_safetensors(tmp_path / "d.safetensors", {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, bool)})
    owned = read_safetensors(path)
    assert owned["w"].flags.writeable and owned["w"].flags.owndata
    owned["w"][0, 0] = 5  # the file is not touched
    assert read_safetensors(path)["w"][0, 0] == 1
    mapped = read_safetensors(path, copy=False)
    assert not mapped["w"].flags.writeable
    with pytest.raises(ValueError):
        mapped["w"][0, 0] = 5
    np.testing.assert_array_equal(mapped["w"], np.ones((2, 3)))
    assert mapped["b"].dtype == np.bool_


def test_names_reads_only_those(tmp_path):
    path = write_safetensors(tmp_path / "e.safetensors", _tensors())
    got = read_safetensors(path, names=["int8", "scalar"])
    assert list(got) == ["int8", "scalar"]
    with pytest.raises(SafetensorsError, match="no tensor named 'nope'"):
        read_safetensors(path, names=["int8", "nope"])


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(SafetensorsError, match="no such file"):
        read_safetensors(tmp_path / "nothing.safetensors")
    with pytest.raises(SafetensorsError, match="a folder"):
        read_safetensors(tmp_path)


# ---- damaged and hostile headers -------------------------------------------------------------------

def _good_raw():
    return _raw({"__metadata__": {"a": "b"}, "x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                 "y": {"dtype": "I8", "shape": [3], "data_offsets": [16, 19]}}, bytes(range(19)))


def test_truncated_files(tmp_path):
    raw = _good_raw()
    n = int.from_bytes(raw[:8], "little")
    for cut, words in [(0, ["0 bytes", "too short"]), (5, ["too short"]), (8, ["too short"]),
                       (9, ["header length", "only 1 follow"]), (8 + n // 2, ["header length", "truncated"]),
                       (8 + n, ["'x'", "end past", "truncated"]), (8 + n + 10, ["'x'", "end past"]),
                       (len(raw) - 1, ["'y'", "end past"])]:
        _bad(tmp_path, raw[:cut], *words)


def test_header_length_larger_than_the_file_or_the_cap(tmp_path):
    _bad(tmp_path, _raw({"x": 1}, n=2**63), "header length", "9,223,372,036,854,775,808")
    _bad(tmp_path, _raw({}, n=10**9), "header length", "1,000,000,000")
    # a file that really is bigger than the cap (sparse: nothing is written) with a header that long
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as f:
        f.write((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{")
        f.truncate(MAX_HEADER_BYTES + 100)
    tracemalloc.start()
    try:
        with pytest.raises(SafetensorsError, match="over the 100,000,000-byte limit"):
            read_safetensors(path)
        assert tracemalloc.get_traced_memory()[1] < 1_000_000
    finally:
        tracemalloc.stop()


def test_offsets_past_the_end_and_huge_shapes(tmp_path):
    _bad(tmp_path, _raw({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
         "tensor 'x'", "end past the 8 bytes")
    huge = 10**12
    _bad(tmp_path, _raw({"x": {"dtype": "F64", "shape": [huge, huge], "data_offsets": [0, 8 * huge * huge]}}),
         "tensor 'x'", "end past")
    _bad(tmp_path, _raw({"x": {"dtype": "F64", "shape": [huge, huge], "data_offsets": [0, 8]}}, bytes(8)),
         "tensor 'x'", "hold 8 bytes", "needs 8,000,000,000,000,000,000,000,000")


def test_short_overlapping_and_leftover_data(tmp_path):
    _bad(tmp_path, _raw({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, bytes(12)),
         "tensor 'x'", "hold 12 bytes", "needs 16")
    overlap = {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "y": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    _bad(tmp_path, _raw(overlap, bytes(16)), "'y'", "overlaps")
    hole = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "y": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}
    _bad(tmp_path, _raw(hole, bytes(20)), "'y'", "hole")
    _bad(tmp_path, _raw({"x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, bytes(5)),
         "cover 2 bytes", "5 follow")
    _bad(tmp_path, _raw({"x": {"dtype": "U8", "shape": [2], "data_offsets": [2, 0]}}, bytes(2)), "not a range")
    _bad(tmp_path, _raw({"x": {"dtype": "U8", "shape": [2], "data_offsets": [-2, 0]}}, bytes(2)), "not a range")


@pytest.mark.parametrize("entry, words", [
    ({"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}, ["dtype 'F8_E4M3' is not supported", "BF16"]),
    ({"dtype": "float32", "shape": [1], "data_offsets": [0, 4]}, ["dtype 'float32'"]),
    ({"dtype": None, "shape": [1], "data_offsets": [0, 4]}, ["dtype None"]),
    ({"shape": [1], "data_offsets": [0, 4]}, ["dtype None"]),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, ["shape [-1]"]),
    ({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}, ["shape [1.0]"]),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, ["shape [True]"]),
    ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, ["shape '1'"]),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, ["data_offsets [0]"]),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}, ["data_offsets [0, '4']"]),
    ({"dtype": "F32", "shape": [1]}, ["data_offsets None"]),
    ([1, 2], ["a JSON list"]),
])
def test_bad_tensor_entries(tmp_path, entry, words):
    _bad(tmp_path, _raw({"ok": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "x": entry}, bytes(4)),
         "tensor 'x'", *words)


@pytest.mark.parametrize("meta, words", [
    ([["a", "b"]], ["__metadata__ is a JSON list"]),
    ("text", ["__metadata__ is a JSON str"]),
    ({"a": 1}, ["__metadata__['a']", "not a string"]),
    ({"a": {"b": "c"}}, ["__metadata__['a']"]),
])
def test_bad_metadata(tmp_path, meta, words):
    _bad(tmp_path, _raw({"__metadata__": meta}), *words)


def test_header_that_is_not_a_json_object(tmp_path):
    _bad(tmp_path, _raw(b"{not json"), "not valid JSON")
    _bad(tmp_path, _raw(b'{"a": NaN}'), "not valid JSON")
    _bad(tmp_path, _raw(b'{"\xff": 1}'), "not valid JSON")
    _bad(tmp_path, _raw(b"[1, 2]"), "not a safetensors file")  # the spec: the header starts with "{"
    _bad(tmp_path, _raw(b'{"x": 1, "x": 2}'), "names 'x' twice")
    _bad(tmp_path, _raw(b"{" + b'"a":' * 100_000 + b"1" + b"}" * 100_000), "not valid JSON")
    _bad(tmp_path, b"PK\x03\x04" + bytes(40), "not a safetensors file")  # a zip
    _bad(tmp_path, b"hello, world\n", "not a safetensors file")


def test_padding_after_the_header_is_allowed(tmp_path):
    raw = _raw({"x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02", pad=b"       ")
    (tmp_path / "p.safetensors").write_bytes(raw)
    assert read_safetensors(tmp_path / "p.safetensors")["x"].tolist() == [1, 2]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 10**6), val=st.integers(0, 255))
def test_any_damaged_byte_is_an_error_or_a_valid_read(tmp_path, pos, val):
    raw = bytearray(_good_raw())
    raw[pos % len(raw)] = val
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(bytes(raw))
    try:
        got = read_safetensors(path)
    except SafetensorsError as e:
        assert str(path) in str(e)
    else:
        assert sum(a.nbytes for a in got.values()) <= len(raw)


# ---- sharded folders -------------------------------------------------------------------------------

def _sharded(folder, weight_map=None, shards=None):
    folder.mkdir(exist_ok=True)
    ts = _tensors()
    names = list(ts)
    shards = shards or {"model-00001-of-00002.safetensors": names[:6], "model-00002-of-00002.safetensors": names[6:]}
    for file, keys in shards.items():
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        safetensors.numpy.save_file({k: ts[k] for k in keys}, folder / file)
    if weight_map is None:
        weight_map = {k: file for file, keys in shards.items() for k in keys}
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    return ts


def test_sharded_folder(tmp_path):
    want = _sharded(tmp_path / "m")
    _assert_same(read_sharded(tmp_path / "m"), want)
    # a shard in a subfolder is inside the folder too
    want = _sharded(tmp_path / "n", shards={"sub/a.safetensors": ["float32"], "b.safetensors": ["int8"]})
    assert set(read_sharded(tmp_path / "n")) == {"float32", "int8"}


FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"


@pytest.mark.skipif(not (FIXTURES / "llama-tiny-bf16-sharded").is_dir(), reason="no pretrained fixtures")
def test_files_saved_by_transformers_read_as_torch_reads_them():
    """transformers' own files (tests/fixtures/pretrained): a bf16 folder in 4 shards, and float32."""
    torch = pytest.importorskip("torch", reason="torch reads the bf16 reference")
    import safetensors.torch
    folder = FIXTURES / "llama-tiny-bf16-sharded"
    got = read_sharded(folder)
    want = {}
    for shard in sorted(folder.glob("*.safetensors")):
        want.update(safetensors.torch.load_file(shard))
    assert set(got) == set(want) == set(json.loads((folder / INDEX_NAME).read_text())["weight_map"])
    for k, v in want.items():
        assert v.dtype == torch.bfloat16 and got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v.float().numpy(), err_msg=k)
    for name in ("gpt2-tiny", "llama-tiny"):
        _assert_same(read_sharded(FIXTURES / name), safetensors.numpy.load_file(FIXTURES / name / "model.safetensors"))


def test_a_folder_with_one_model_safetensors(tmp_path):
    want = _tensors()
    write_safetensors(tmp_path / "model.safetensors", want)
    _assert_same(read_sharded(tmp_path), want)


def test_sharded_missing_shard_or_index_or_tensor(tmp_path):
    _sharded(tmp_path / "m")
    (tmp_path / "m" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SafetensorsError, match="shard 'model-00002-of-00002.safetensors'.*is missing"):
        read_sharded(tmp_path / "m")
    with pytest.raises(SafetensorsError, match=INDEX_NAME.replace(".", r"\.")):
        read_sharded(tmp_path / "empty")
    _sharded(tmp_path / "w", weight_map={"float32": "model-00001-of-00002.safetensors",
                                         "int8": "model-00001-of-00002.safetensors"},
             shards={"model-00001-of-00002.safetensors": ["float32"]})
    with pytest.raises(SafetensorsError, match="no tensor named 'int8'"):
        read_sharded(tmp_path / "w")


@pytest.mark.parametrize("shard", ["../evil.safetensors", "/etc/passwd", "sub/../../evil.safetensors",
                                   "..\\evil.safetensors", "C:\\evil.safetensors", "C:evil.safetensors",
                                   "\\\\server\\share\\x", "", "a\0b"])
def test_sharded_shard_names_must_stay_inside_the_folder(tmp_path, shard):
    write_safetensors(tmp_path / "evil.safetensors", {"x": np.zeros(2)})  # there, outside the folder
    _sharded(tmp_path / "m", weight_map={"x": shard}, shards={"model.safetensors": ["int8"]})
    with pytest.raises(SafetensorsError, match="not a plain file name inside the folder"):
        read_sharded(tmp_path / "m")


@pytest.mark.parametrize("index, words", [
    ("{not json", ["not valid JSON"]), ("[]", ["weight_map"]), ('{"weight_map": [1]}', ["weight_map"]),
    ('{"weight_map": {"x": 1}}', ["weight_map['x']"]), ('{"weight_map": {"x": "a", "x": "b"}}', ["'x' twice"]),
])
def test_bad_index(tmp_path, index, words):
    (tmp_path / INDEX_NAME).write_text(index)
    with pytest.raises(SafetensorsError) as e:
        read_sharded(tmp_path)
    assert str(tmp_path / INDEX_NAME) in str(e.value)
    for w in words:
        assert w in str(e.value)


# ---- atomic writes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_keeps_the_old_file(tmp_path, exc):
    path = write_safetensors(tmp_path / "f.safetensors", {"x": np.ones(3)})
    before = path.read_bytes()

    def half_then_fail(tmp):
        tmp.write_bytes(before[:20])
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]  # no temp file left


def test_written_files_have_an_ordinary_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_safetensors(tmp_path / "g.safetensors", {"x": np.ones(3)})
    finally:
        os.umask(umask)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_safetensors(path, {"x": np.zeros(3)})  # replaces it
    assert read_safetensors(path)["x"].tolist() == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]
