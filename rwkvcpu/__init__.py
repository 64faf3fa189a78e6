"""rwkvcpu: RWKV-7 inference in NumPy + Numba."""
