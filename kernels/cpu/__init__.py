"""Numba @njit CPU kernels (NumPy arrays in, NumPy arrays out)."""
