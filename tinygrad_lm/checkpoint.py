"""Checkpoints: one safetensors file holding everything needed to resume or sample.

Tensors (model weights as "model/NAME", optimizer state as "optim/INDEX/NAME") are host NumPy
arrays, so a checkpoint loads onto any device. Everything else (configs, tokenizer, step, RNG
states, optimizer options and scalars) is one JSON document, stored as one string in the file's
text metadata under "tinygrad_lm": weights and meta live in one file, so one atomic rename
(hub.safetensors_file.atomic_write) keeps them consistent and an interruption never leaves a
half-written checkpoint.

Format version 2 is that file, ckpt.safetensors. Version 1 was ckpt.npz (the same arrays and the
JSON meta as a uint8 array "meta" in an .npz archive); it still loads, to the same dict."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .hub.safetensors_file import SafetensorsError, read_safetensors, read_safetensors_header, write_safetensors

FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1    # ckpt.npz
CKPT_NAME = "ckpt.safetensors"
LEGACY_CKPT_NAME = "ckpt.npz"
META_KEY = "tinygrad_lm"     # the safetensors metadata entry holding the JSON meta


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


def checkpoint_path(path) -> Path:
    """Where a checkpoint is saved: a file path, or an output folder's folder/ckpt.safetensors."""
    p = Path(path)
    return p / CKPT_NAME if p.is_dir() or not p.suffix else p


def find_checkpoint(path) -> Path:
    """Which file a load reads: a file path as given; for a folder its ckpt.safetensors, or an older
    run's ckpt.npz when only that is there."""
    p = checkpoint_path(path)
    legacy = p.with_name(LEGACY_CKPT_NAME)
    if p.name == CKPT_NAME and p != Path(path) and not p.exists() and legacy.exists():
        return legacy
    return p


def save_checkpoint(path, model_state: dict, meta: dict, optim_state: dict | None = None) -> Path:
    """Atomically write model arrays, optimizer state and a JSON-able meta dict."""
    path = checkpoint_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    meta = dict(meta, format_version=FORMAT_VERSION)
    if optim_state is not None:
        scalars = {}
        for i, entry in optim_state["state"].items():
            for k, v in entry.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/{i}/{k}"] = v
                else:
                    scalars.setdefault(str(i), {})[k] = v
        meta["optimizer"] = {"param_groups": optim_state["param_groups"], "scalars": scalars}
    return write_safetensors(path, arrays, {META_KEY: json.dumps(meta)})


def _is_npz(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"PK"  # a zip archive: a format-1 checkpoint (or damaged beyond telling)


def checkpoint_step(path) -> int | None:
    """The step a checkpoint was saved at, reading only its JSON meta; None if it cannot be read."""
    try:
        path = find_checkpoint(path)
        if _is_npz(path):
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                step = json.loads(z["meta"].tobytes().decode()).get("step")
        else:
            step = json.loads(read_safetensors_header(path)[1][META_KEY]).get("step")
        return step if isinstance(step, int) else None
    except Exception:  # any damage at all: the caller only wants a number to show
        return None


def _why_unreadable(e: BaseException) -> str:
    """The reason for a user, in our words. NumPy's own message for pickled data advises loading
    the file "unsafely"; unpickling a file from a stranger runs its code, so that advice is never
    passed on (tinygrad_lm loads no pickles, see DESIGN.md)."""
    if isinstance(e, SafetensorsError):
        return e.problem
    if "pickle" in str(e).lower():
        return "it holds pickled Python objects, which tinygrad_lm never loads"
    if isinstance(e, zipfile.BadZipFile) or "not an .npz" in str(e):
        return "not an .npz archive"
    return " ".join(str(e).split()) or type(e).__name__


def _read_npz(path: Path) -> tuple[dict, object]:
    """(arrays, meta) of a format-1 .npz checkpoint."""
    with open(path, "rb") as f:  # ours to close: np.load leaks its own file when the zip is bad
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # else NumPy would try it as a pickle
            raise ValueError("not an .npz archive")
        f.seek(0)
        z = np.load(f, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a plain .npy array, not an archive
            raise ValueError("not an .npz archive")
        files = {k: z[k] for k in z.files}
    return files, json.loads(files.pop("meta").tobytes().decode())


def _read_safetensors(path: Path) -> tuple[dict, object]:
    """(arrays, meta) of a format-2 safetensors checkpoint."""
    _, metadata = read_safetensors_header(path)
    if META_KEY not in metadata:
        raise ValueError(f"a safetensors file without tinygrad_lm's '{META_KEY}' metadata (model weights "
                         f"from elsewhere?)")
    meta = json.loads(metadata[META_KEY])
    return read_safetensors(path), meta


def load_checkpoint(path) -> dict:
    """{"model": {name: array}, "optimizer": state_dict or None, "meta": dict, "path": Path} or
    CheckpointError. ``path``: a checkpoint file (ckpt.safetensors, or an old ckpt.npz) or a run folder."""
    path = find_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    # damaged zip headers can also raise NotImplementedError (unknown version) or RuntimeError ("encrypted")
    try:
        legacy = _is_npz(path)
        files, meta = _read_npz(path) if legacy else _read_safetensors(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, EOFError,
            NotImplementedError, RuntimeError, RecursionError) as e:  # SafetensorsError is a ValueError
        raise CheckpointError(f"{path} is not a tinygrad_lm checkpoint ({_why_unreadable(e)}); expected the "
                              f"{CKPT_NAME} file that `tinygrad-lm train` writes") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"corrupt checkpoint {path}: its meta is a JSON {type(meta).__name__}, not an object")
    version = LEGACY_FORMAT_VERSION if legacy else FORMAT_VERSION
    if meta.get("format_version") != version:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')!r} in "
                              f"{'an .npz archive' if legacy else 'a safetensors file'}; this tinygrad_lm reads "
                              f"version {FORMAT_VERSION} ({CKPT_NAME}) and version {LEGACY_FORMAT_VERSION} "
                              f"({LEGACY_CKPT_NAME})")
    for key in ("model_config", "tokenizer", "step"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path} lacks '{key}' (not written by tinygrad-lm train?)")
    model = {k[len("model/"):]: v for k, v in files.items() if k.startswith("model/")}
    optim = None
    if "optimizer" in meta:
        state: dict = {}
        try:
            for k, v in files.items():
                if k.startswith("optim/"):
                    _, i, name = k.split("/", 2)
                    state.setdefault(int(i), {})[name] = v
            for i, entry in meta["optimizer"]["scalars"].items():
                state.setdefault(int(i), {}).update(entry)
            groups = meta["optimizer"]["param_groups"]
            for g in groups:  # JSON turned tuples into lists
                if "betas" in g:
                    g["betas"] = tuple(g["betas"])
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"corrupt checkpoint {path}: bad optimizer state ({e!r})") from None
        optim = {"state": state, "param_groups": groups}
    return {"model": model, "optimizer": optim, "meta": meta, "path": path}
