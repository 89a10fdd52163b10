"""Pretrained models in and out: safetensors and GGUF files, Hugging Face configs and names.

Models and tokenizers know nothing of file formats; this package translates names and layouts
once, at load and save time (DESIGN.md, "Formats at the edge")."""
from .pretrained import load_model, load_pretrained_tokenizer, save_gguf, save_pretrained
from .resolve import ModelNotFoundError, resolve

__all__ = ["load_model", "load_pretrained_tokenizer", "save_pretrained", "save_gguf", "resolve",
           "ModelNotFoundError"]
