"""tinygrad_lm: a from-scratch GPT on NumPy/CuPy with its own reverse-mode autograd."""
from . import _threads  # noqa: F401  (first: sets OpenBLAS options before NumPy loads it)
from . import functional
from .backend import cuda_available, kernel_mode, use_kernels
from .gradcheck import GradcheckError, gradcheck
from .profiler import profile
from .tensor import (Function, Tensor, arange, cat, concatenate, enable_grad, full, get_rng, is_grad_enabled,
                     manual_seed, no_grad, ones, ones_like, rand, randn, split, stack, tensor, where, zeros,
                     zeros_like)

__version__ = "0.1.0"

__all__ = ["Tensor", "Function", "tensor", "zeros", "ones", "full", "randn", "rand", "arange", "zeros_like",
           "ones_like", "manual_seed", "get_rng", "no_grad", "enable_grad", "is_grad_enabled", "where",
           "concatenate", "cat", "stack", "split", "gradcheck", "GradcheckError", "functional",
           "cuda_available", "use_kernels", "kernel_mode", "profile"]
