"""rwkvcpu: RWKV-7 inference in NumPy + Numba."""
import os as _os

from rwkvcpu.kernels._openblas import find_openblas as _find_openblas

# Numba's OpenMP workers (libgomp) and OpenBLAS's threads both spin while idle; on a 2-core
# laptop the spinning of one pool starves the other (a 768-wide layer norm once took 4 ms).
# When NumPy's OpenBLAS can be called from inside Numba threads (rwkvcpu/kernels/blas.py), every
# matrix product of the forward pass runs on the OpenMP threads and OpenBLAS's own pool stays
# asleep: the OpenMP workers may then spin for a while after each parallel region, which saves
# waking them (~20 us) ~200 times per decoded token (0.1B Q8_0 decode ~59 -> ~80 tok/s).
# GOMP_SPINCOUNT=300000 is libgomp's own default spin (it throttles it to 1000 when it sees more
# threads than cores).  Otherwise: passive waiting.  Users may override either variable.
if _find_openblas() is not None:
    _os.environ.setdefault("GOMP_SPINCOUNT", "300000")
else:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
