"""Fast kernels, installed as tinygrad_lm.kernels (the repo keeps them in the top-level kernels/).

cpu/   Numba @njit kernels on NumPy arrays       (cpu/ops.py: the FAST table)
cuda/  Numba CUDA kernels on CuPy arrays         (cuda/ops.py: the FAST table)

Each kernel replaces the reference (forward, backward) pair of one hot op in tinygrad_lm/ops
with the same signature, and is tested equal to it. tinygrad_lm.use_kernels("reference"|"fast")
or TINYGRAD_LM_KERNELS chooses between them for the whole process."""


def available() -> dict[str, list[str]]:
    """Ops with a fast kernel, per device: {"cpu": [...], "cuda": [...]} (empty if it cannot load)."""
    from tinygrad_lm.backend import DEVICES, fast_table
    return {device: sorted(fast_table(device)) for device in DEVICES}
