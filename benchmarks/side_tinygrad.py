"""tinygrad_lm's side of every peer comparison, one process per round (see benchmarks/peers.py).

    python -m benchmarks.side_tinygrad TASK 'JSON ARGS'      (run by the benchmarks, not by hand)

It runs as the README tells users to: ``import tinygrad_lm`` first, the default environment,
default kernels (``TINYGRAD_LM_KERNELS`` when the user set it). tinygrad_lm's own settings
(OpenBLAS's idle timeout before NumPy loads, passive OpenMP waiting when the kernels load,
glibc allocator tuning) therefore apply here and nowhere else. The tasks are
benchmarks.workload.worker_tasks; the parent also imports this module for the lockstep
correctness check (not a timing)."""
import time

_T0 = time.perf_counter()
import tinygrad_lm as tg  # noqa: E402  (first, as users do: its thread settings precede NumPy)

import numpy as np  # noqa: E402

from tinygrad_lm import backend  # noqa: E402
from tinygrad_lm.models import GPT, GPTConfig  # noqa: E402
from tinygrad_lm.optim import clip_grad_norm  # noqa: E402

from .peers import worker_main  # noqa: E402
from .workload import CLIP, OPT, load_weights, worker_tasks  # noqa: E402

IMPORT_S = time.perf_counter() - _T0


def build(fields: dict, weights: str | None = None, seed: int = 0) -> GPT:
    """A GPT in train mode: the shared initial weights when given (an .npz path), else seeded."""
    tg.manual_seed(seed)
    model = GPT(GPTConfig(**fields)).train()
    if weights:
        model.load_state_dict(load_weights(weights))
    return model


def make_train_step(model: GPT):
    """step(x, y) -> loss: forward, cross-entropy, backward, clip_grad_norm, AdamW, zero_grad."""
    opt = model.configure_optimizers(**OPT)

    def step(x, y):
        _, loss = model(x, y)
        loss.backward()
        clip_grad_norm(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
        return float(loss.data)
    return step


def greedy(model: GPT, n: int, use_cache: bool) -> list:
    return model.generate(np.zeros((1, 1), np.int64), n, temperature=0.0, use_cache=use_cache).data[0, 1:].tolist()


def sgemm(n: int):
    """np.matmul of two float32 (n, n), with the kernels loaded as in a training step (loading
    them may change OpenBLAS's threads: the peak is what a step's matmuls can get)."""
    backend.fast_table("cpu")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    return lambda: np.matmul(a, b)


def runtime() -> dict:
    """What tinygrad_lm chose for itself in this process."""
    import numba
    return {"library": "tinygrad_lm", "import_s": IMPORT_S, "kernels": backend.kernel_mode(),
            "openblas_threads": backend.blas_threads(), "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": _numba_layer(numba),
            "allocator_tuning": getattr(backend, "ALLOCATOR_TUNING", None), "numpy": np.__version__}


def _numba_layer(numba) -> str | None:
    try:
        return numba.threading_layer()
    except ValueError:   # no parallel kernel has run in this process
        return None


if __name__ == "__main__":
    worker_main(worker_tasks(build, make_train_step, greedy, sgemm), runtime)
