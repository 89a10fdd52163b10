"""Fast kernels, installed as tinygrad_lm.kernels (the repo keeps them in the top-level kernels/).

cpu/   Numba @njit kernels on NumPy arrays
cuda/  Numba CUDA kernels on CuPy arrays

Each kernel replaces one reference op from tinygrad_lm/ops and is tested equal to it."""
