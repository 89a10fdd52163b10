"""PyTorch's side of every peer comparison, one process per round (see benchmarks/peers.py).

    python -m benchmarks.side_torch TASK 'JSON ARGS'      (run by the benchmarks, not by hand)

It runs PyTorch as its users do: ``import torch`` first, its default threads, the environment
the user started the benchmark with, eager mode. tinygrad_lm is never imported in this process
(its thread and allocator settings would apply to torch too): the shared initial weights come
from an .npz file and the model is benchmarks/torch_gpt.py (nanoGPT's GPT-2, same state_dict
names). The tasks are benchmarks.workload.worker_tasks; the parent also imports this module for
the lockstep correctness check (not a timing)."""
import time

_T0 = time.perf_counter()
import torch  # noqa: E402  (first, as its users do)

IMPORT_S = time.perf_counter() - _T0

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

from .peers import worker_main  # noqa: E402
from .torch_gpt import GPT, from_state_dict  # noqa: E402
from .workload import CLIP, OPT, load_weights, worker_tasks  # noqa: E402


def build(fields: dict, weights: str | None = None, seed: int = 0):
    """torch_gpt.GPT in train mode: the shared initial weights when given (an .npz path), else torch's own init."""
    torch.manual_seed(seed)
    config = SimpleNamespace(**fields)
    model = from_state_dict(config, load_weights(weights)) if weights else GPT(config)
    return model.train()


def make_train_step(model):
    """step(x, y) -> loss (NumPy int64 batches): forward, cross-entropy, backward,
    clip_grad_norm_, torch.optim.AdamW (nanoGPT's parameter groups), zero_grad."""
    opt = model.configure_optimizers(**OPT)

    def step(x, y):
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def greedy(model, n: int, use_cache: bool) -> list:
    return model.generate(torch.zeros((1, 1), dtype=torch.long), n, use_cache=use_cache).numpy()[0, 1:].tolist()


def sgemm(n: int):
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen, dtype=torch.float32) for _ in range(2))
    return lambda: torch.matmul(a, b)


def runtime() -> dict:
    """PyTorch's own choices in this process."""
    return {"library": "torch", "version": torch.__version__, "import_s": IMPORT_S,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "parallel_info": torch.__config__.parallel_info().strip().splitlines(), "numpy": np.__version__}


if __name__ == "__main__":
    worker_main(worker_tasks(build, make_train_step, greedy, sgemm), runtime)
