"""Numba kernels (cpu), their NumPy references, and quantized block formats."""
