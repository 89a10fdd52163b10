"""safetensors files: our own reader, which checks a stranger's header before it allocates anything,
and a writer (the `safetensors` package) that replaces a file atomically.

The format (github.com/huggingface/safetensors): 8 bytes, a little-endian u64 N; N bytes of a JSON
object that starts with "{"
    {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...,
     "__metadata__": {"KEY": "VALUE"}}                  (optional; strings only)
then the data: each tensor row-major and little-endian at bytes [BEGIN, END) after the header.
As the spec asks, the tensors must cover the data exactly, with no overlap and no holes (so one
tensor cannot alias another and a file cannot carry a second file inside it).

Reading maps the file (mmap) and views each tensor with np.frombuffer; nothing is allocated before
every size and offset in the header has been checked against the file's length."""
from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import secrets
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, NamedTuple

import numpy as np

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit on N
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors dtype -> how its bytes are stored (little-endian). BF16 is read as its raw 16 bits
# (NumPy has no bfloat16) and widened to float32; BOOL is read as bytes and compared with 0.
_STORED = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
           "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1"}
# NumPy dtypes the writer stores as they are (the `safetensors` package's own set)
_WRITABLE = {np.dtype(t) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                                   np.uint64, np.uint32, np.uint16, np.uint8, np.bool_)}


class SafetensorsError(ValueError):
    """A safetensors file (or a sharded folder's index) is damaged, is not one, or lacks a tensor.
    ``path`` is the file and ``problem`` the reason without it."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


class TensorInfo(NamedTuple):
    """One header entry, checked: ``data_offsets`` count from the first byte after the header."""
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]


# ---- reading ---------------------------------------------------------------------------------------

def read_safetensors_header(path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensor infos by name, the "__metadata__" strings) of a safetensors file, checked; reads only
    the header. Raises SafetensorsError."""
    path = Path(path)
    with _open(path) as f:
        infos, metadata, _ = _read_header(f, path)
    return infos, metadata


def read_safetensors(path, names=None, *, copy: bool = True) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file ({name: array}, in file order), or only ``names``.

    copy=True (default): every array owns its memory (writeable, native byte order) and the file is
    closed on return. copy=False: F16/F32/F64 and integer tensors are read-only views into one
    read-only memory map of the file (no copy; the map lives as long as any array uses it). BF16
    (as float32) and BOOL are always new arrays. Raises SafetensorsError."""
    path = Path(path)
    with _open(path) as f:
        infos, _, start = _read_header(f, path)
        wanted = list(infos) if names is None else list(names)
        for name in wanted:
            if name not in infos:
                raise SafetensorsError(path, f"no tensor named {name!r}")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # the header check made sure size >= 8
    arrays = {name: _tensor(mm, infos[name], start, copy) for name in wanted}
    if copy:
        mm.close()  # nothing refers to it any more: every array is a copy
    return arrays


def _tensor(mm: mmap.mmap, info: TensorInfo, start: int, copy: bool) -> np.ndarray:
    stored = np.dtype(_STORED[info.dtype])
    begin, end = info.data_offsets
    raw = np.frombuffer(mm, dtype=stored, count=(end - begin) // stored.itemsize, offset=start + begin)
    raw = raw.reshape(info.shape)
    if info.dtype == "BF16":  # bfloat16 is the top half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if info.dtype == "BOOL":
        return raw != 0
    return raw.astype(stored.newbyteorder("=")) if copy else raw


def _open(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise SafetensorsError(path, "no such file") from None
    except IsADirectoryError:
        raise SafetensorsError(path, "a folder, not a safetensors file") from None


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise _DuplicateKey(k)
        obj[k] = v
    return obj


def _no_constant(name):  # NaN, Infinity: not JSON
    raise ValueError(f"{name} is not JSON")


def _read_header(f, path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """(infos, metadata, offset of the data in the file), every field checked against the file size."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(9)
    if len(head) < 9:
        raise SafetensorsError(path, f"the file is {size} bytes, too short for a safetensors file "
                                     f"(an 8-byte header length, then the header)")
    if head[8:9] != b"{":
        raise SafetensorsError(path, "not a safetensors file (no JSON header after the first 8 bytes)")
    n = int.from_bytes(head[:8], "little")
    if n > size - 8:
        raise SafetensorsError(path, f"the header length is {n:,} bytes but only {size - 8:,} follow it "
                                     f"(a truncated or damaged file)")
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(path, f"the header length is {n:,} bytes, over the {MAX_HEADER_BYTES:,}-byte limit")
    f.seek(8)
    raw = f.read(n)
    if len(raw) != n:
        raise SafetensorsError(path, "the file became shorter while it was read")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKey as e:
        raise SafetensorsError(path, f"the header names {e.args[0]!r} twice") from None
    except RecursionError:
        raise SafetensorsError(path, "the header is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise SafetensorsError(path, f"the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(path, f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(path, f"__metadata__ is a JSON {type(metadata).__name__}, not an object of strings")
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise SafetensorsError(path, f"__metadata__[{k!r}] is a JSON {type(v).__name__}, not a string")
    data_size = size - 8 - n
    infos = {name: _check_entry(path, name, entry, data_size) for name, entry in header.items()}
    end = 0  # the tensors in order of their offsets must tile the data exactly
    for name, info in sorted(infos.items(), key=lambda kv: kv[1].data_offsets):
        begin = info.data_offsets[0]
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else "leaves a hole after the tensor before it"
            raise SafetensorsError(path, f"tensor {name!r} starts at data byte {begin:,} but the tensors before "
                                         f"it end at byte {end:,}: it {what}")
        end = info.data_offsets[1]
    if end != data_size:
        raise SafetensorsError(path, f"the tensors cover {end:,} bytes of data but {data_size:,} follow the "
                                     f"header (extra bytes at the end)")
    return infos, metadata, 8 + n


def _check_entry(path: Path, name: str, entry, data_size: int) -> TensorInfo:
    def bad(problem):
        return SafetensorsError(path, f"tensor {name!r}: {problem}")

    if not isinstance(entry, dict):
        raise bad(f"a JSON {type(entry).__name__}, not an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _STORED:
        raise bad(f"dtype {dtype!r} is not supported (supported: {', '.join(_STORED)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise bad(f"data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad(f"data_offsets [{begin}, {end}] is not a range (0 <= begin <= end)")
    if end > data_size:
        raise bad(f"data_offsets [{begin:,}, {end:,}] end past the {data_size:,} bytes of data in the file "
                  f"(a truncated file?)")
    need = math.prod(shape) * np.dtype(_STORED[dtype]).itemsize  # Python ints: no overflow
    if end - begin != need:
        raise bad(f"data_offsets [{begin:,}, {end:,}] hold {end - begin:,} bytes but shape {shape} of {dtype} "
                  f"needs {need:,}")
    return TensorInfo(dtype, tuple(shape), (begin, end))


def read_sharded(folder, *, copy: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of a sharded checkpoint folder: ``model.safetensors.index.json`` maps each name
    to its shard file ("weight_map"); a folder with only ``model.safetensors`` is read as is.

    Shard names must be plain relative paths inside the folder (no "..", no absolute path or
    drive). That check is on the names only: symbolic links are followed, as the Hugging Face cache
    links a snapshot's files to blobs elsewhere. Raises SafetensorsError (naming a missing shard)."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if not index.exists() and (folder / SINGLE_NAME).exists():
        return read_safetensors(folder / SINGLE_NAME, copy=copy)
    weight_map = _read_index(index)
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    arrays: dict[str, np.ndarray] = {}
    for shard, names in by_shard.items():
        file = folder / shard
        if not file.is_file():
            raise SafetensorsError(index, f"shard {shard!r} (holding {names[0]!r}) is missing from {folder}")
        infos, _ = read_safetensors_header(file)
        for name in names:
            if name not in infos:
                raise SafetensorsError(file, f"no tensor named {name!r}, though {INDEX_NAME} puts it here")
        arrays.update(read_safetensors(file, names, copy=copy))
    return arrays


def _read_index(index: Path) -> dict[str, str]:
    try:
        size = index.stat().st_size
    except FileNotFoundError:
        raise SafetensorsError(index, f"no such file (a sharded checkpoint folder holds {INDEX_NAME})") from None
    if size > MAX_HEADER_BYTES:
        raise SafetensorsError(index, f"{size:,} bytes, over the {MAX_HEADER_BYTES:,}-byte limit for an index")
    try:
        doc = json.loads(index.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except _DuplicateKey as e:
        raise SafetensorsError(index, f"names {e.args[0]!r} twice") from None
    except (ValueError, RecursionError) as e:
        raise SafetensorsError(index, f"not valid JSON ({e})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise SafetensorsError(index, "no \"weight_map\" object (tensor name -> shard file)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise SafetensorsError(index, f"weight_map[{name!r}] is a JSON {type(shard).__name__}, not a file name")
        if not _inside(shard):
            raise SafetensorsError(index, f"weight_map[{name!r}] names the shard {shard!r}, which is not a plain "
                                          f"file name inside the folder")
    return weight_map


def _inside(name: str) -> bool:
    """A relative path that stays in its folder, read the POSIX and the Windows way."""
    if not name or "\0" in name:
        return False
    for p in (PurePosixPath(name), PureWindowsPath(name)):
        if p.is_absolute() or p.anchor or ".." in p.parts:
            return False
    return True


# ---- writing ---------------------------------------------------------------------------------------

def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Make ``path`` by ``write(tmp)`` into a new file next to it, flushed to disk, then renamed over
    ``path``: readers, and a crash at any moment, see the old file or the whole new one, never part of
    it. On any error (Ctrl-C included) the temp file is removed and ``path`` is untouched. The file
    has an ordinary file's mode, 0o666 less the umask: the temp file is made with os.open (mkstemp
    makes 0600 files) and given that mode back after ``write``, which may recreate it (the
    safetensors package writes 0600 files)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        write(tmp)
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDWR)  # fsync through any descriptor flushes the file's data
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # and the rename itself (POSIX); some file systems refuse: no matter
        with contextlib.suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return path


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write host arrays (float16/32/64, signed/unsigned ints, bool) and optional string
    metadata as a safetensors file; returns the path."""
    from safetensors.numpy import save_file  # the reference writer (only needed to write)
    path = Path(path)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map strings to strings")
    arrays = {}
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"{name!r} cannot name a tensor in a safetensors file")
        a = np.asarray(a)
        if a.dtype.newbyteorder("=") not in _WRITABLE:
            raise TypeError(f"tensor {name!r}: dtype {a.dtype} cannot be stored in a safetensors file")
        # the file's layout, row-major little-endian, as safetensors writes straight from the array's
        # memory (np.asarray, not ascontiguousarray, which makes a 0-d array 1-d)
        arrays[name] = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")
    return atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
