"""Numba CUDA kernels (CuPy arrays in, via __cuda_array_interface__)."""
