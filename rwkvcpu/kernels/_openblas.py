"""Locate NumPy's bundled OpenBLAS (ctypes only: imported before Numba starts its threads)."""
from __future__ import annotations

import ctypes
import glob
import os

_SGEMM_NAMES = ("scipy_cblas_sgemm64_", "cblas_sgemm64_")     # ILP64 builds (NumPy >= 1.22 wheels)


def find_openblas():
    """(address of cblas_sgemm, address of openblas_set_num_threads_local) in the OpenBLAS that
    NumPy's wheel bundles, or None (another BLAS, an LP64 build, or RWKVCPU_NO_INLINE_BLAS set)."""
    if os.environ.get("RWKVCPU_NO_INLINE_BLAS"):
        return None
    import numpy as np
    base = os.path.dirname(np.__file__)
    cands = []
    for pat in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        cands += sorted(glob.glob(os.path.join(base, pat)))
    for path in cands:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        loc = getattr(lib, "openblas_set_num_threads_local", None)
        if loc is None:
            continue
        for name in _SGEMM_NAMES:
            fn = getattr(lib, name, None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value, ctypes.cast(loc, ctypes.c_void_p).value
    return None
