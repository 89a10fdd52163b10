"""Checkpoints: one .npz file holding everything needed to resume or sample.

Arrays (model weights under "model/NAME", optimizer state under "optim/INDEX/NAME") are
stored as host NumPy arrays, so a checkpoint loads onto any device. Everything else (configs,
tokenizer, step, RNG states, optimizer options) is one JSON document under "meta".
Writes are atomic: a temporary file in the same folder is written, flushed to disk and
renamed over the old checkpoint, so an interruption never leaves a half-written file."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
CKPT_NAME = "ckpt.npz"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


def checkpoint_path(path) -> Path:
    """A checkpoint file from a file path or an output folder (folder/ckpt.npz)."""
    p = Path(path)
    return p / CKPT_NAME if p.is_dir() or not p.suffix else p


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
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def checkpoint_step(path) -> int | None:
    """The step a checkpoint was saved at, reading only its JSON meta; None if it cannot be read."""
    try:
        with open(checkpoint_path(path), "rb") as f, np.load(f, allow_pickle=False) as z:
            step = json.loads(z["meta"].tobytes().decode()).get("step")
        return step if isinstance(step, int) else None
    except Exception:  # any damage at all: the caller only wants a number to show
        return None


def _why_unreadable(e: BaseException) -> str:
    """The reason for a user, in our words. NumPy's own message for pickled data advises loading
    the file "unsafely"; unpickling a file from a stranger runs its code, so that advice is never
    passed on (tinygrad_lm loads no pickles, see DESIGN.md)."""
    if "pickle" in str(e).lower():
        return "it holds pickled Python objects, which tinygrad_lm never loads"
    if isinstance(e, zipfile.BadZipFile) or "not an .npz" in str(e):
        return "not an .npz archive"
    return " ".join(str(e).split()) or type(e).__name__


def load_checkpoint(path) -> dict:
    """{"model": {name: array}, "optimizer": state_dict or None, "meta": dict} or CheckpointError."""
    path = checkpoint_path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    # damaged zip headers can also raise NotImplementedError (unknown version) or RuntimeError ("encrypted")
    try:
        with open(path, "rb") as f:  # ours to close: np.load leaks its own file when the zip is bad
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # else NumPy would try it as a pickle
                raise ValueError("not an .npz archive")
            f.seek(0)
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):  # a plain .npy array, not an archive
                raise ValueError("not an .npz archive")
            files = {k: z[k] for k in z.files}
        meta = json.loads(files.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, EOFError,
            NotImplementedError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a tinygrad_lm checkpoint ({_why_unreadable(e)}); expected the "
                              f"{CKPT_NAME} archive that `tinygrad-lm train` writes") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"corrupt checkpoint {path}: its meta is a JSON {type(meta).__name__}, not an object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')!r}; "
                              f"this tinygrad_lm reads version {FORMAT_VERSION}")
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
