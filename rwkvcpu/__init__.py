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


def _avx2_width_target():
    """Numba's target where the CPU has AVX-512 (and the user set none): the host CPU with the
    AVX-512 features turned off, as (name, features), else None.

    Our kernels are written 8 float32 lanes wide (``kernels/simd.py``); where LLVM may reassociate
    a sum (``fastmath`` reductions), it vectorizes for the widest registers the target has.  With
    AVX-512 those sums run 16 lanes wide, so the last bits differ from an AVX2 machine's, and on
    the llama-numerics path an activation can round to the other 8-bit value: on a Zen 5 machine
    the Q4_1 fixture's logits moved 0.08 from llama.cpp's at 3 of 24 positions (0 at AVX2 width).
    AVX2 width keeps every x86-64 machine with AVX2 on the same arithmetic; the speed cost measured
    on that Zen 5 was within the noise (decode 0.95-1.0x).  RWKVCPU_AVX512=1 keeps AVX-512 (or set
    NUMBA_CPU_NAME/NUMBA_CPU_FEATURES yourself).  It takes effect when rwkvcpu is imported before
    any function is decorated with Numba's @njit in the process (Numba fixes its target then)."""
    env = _os.environ
    if env.get("RWKVCPU_AVX512") == "1" or "NUMBA_CPU_NAME" in env or "NUMBA_CPU_FEATURES" in env:
        return None
    try:
        import llvmlite.binding as ll
        feats = ll.get_host_cpu_features()
        name = ll.get_host_cpu_name()
    except Exception:                   # no llvmlite host query: leave Numba's default
        return None
    if not feats.get("avx512f"):
        return None
    off = lambda k: k.startswith(("avx512", "avx10")) or k in ("evex512", "amx-avx512")   # noqa: E731
    return name, ",".join(("-" if off(k) or not v else "+") + k for k, v in sorted(feats.items()))


_target = _avx2_width_target()
if _target is not None:
    _os.environ["NUMBA_CPU_NAME"], _os.environ["NUMBA_CPU_FEATURES"] = _target
    import sys as _sys
    if "numba.core.config" in _sys.modules:
        # Numba was imported first: it read its settings then, and re-reads them only when it
        # compiles, after it has made its code generator (at the first @njit).  Re-read them now.
        _sys.modules["numba.core.config"].reload_config()

