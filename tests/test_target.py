"""Numba's compile target: AVX2 width on AVX-512 machines (``rwkvcpu._avx2_width_target``).

Why it matters is pinned down numerically by tests/test_numerics.py: on a Zen 5 machine, with
Numba left to use AVX-512, the Q4_1 fixture's llama-numerics logits moved 0.08 from llama.cpp's
at 3 of 24 positions (``test_llama_mode_decode_path_reproduces_llama_cpp[q4_1]`` failed); at AVX2
width they stay within 2.1e-6 at every position, as on the AVX2 machines the fixtures came from.
"""
import os
import subprocess
import sys

import llvmlite.binding as ll
import pytest

import rwkvcpu

_ENV = ("RWKVCPU_AVX512", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")


class _Features(dict):
    """What llvmlite's get_host_cpu_features returns: a mapping of feature name to bool."""


def _host(monkeypatch, feats, name="znver5"):
    for k in _ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(ll, "get_host_cpu_features", lambda: _Features(feats))
    monkeypatch.setattr(ll, "get_host_cpu_name", lambda: name)


def test_an_avx512_host_gets_its_own_cpu_without_avx512(monkeypatch):
    _host(monkeypatch, {"avx2": True, "fma": True, "f16c": True, "avx512f": True, "avx512bw": True,
                        "avx512vl": True, "evex512": True, "avx10.1-512": False, "avxvnni": True, "sse4.2": True})
    name, feats = rwkvcpu._avx2_width_target()
    got = set(feats.split(","))
    assert name == "znver5"
    assert {"-avx512f", "-avx512bw", "-avx512vl", "-evex512", "-avx10.1-512"} <= got
    # what the kernels need stays on (kernels/simd.py looks for "+avx2" and "+f16c" in it)
    assert {"+avx2", "+fma", "+f16c", "+avxvnni", "+sse4.2"} <= got


def test_no_pin_on_avx2_hosts_or_when_the_user_chose(monkeypatch):
    _host(monkeypatch, {"avx2": True, "fma": True, "avx512f": False}, name="znver3")
    assert rwkvcpu._avx2_width_target() is None
    _host(monkeypatch, {"avx2": True, "avx512f": True})
    monkeypatch.setenv("RWKVCPU_AVX512", "1")
    assert rwkvcpu._avx2_width_target() is None
    _host(monkeypatch, {"avx2": True, "avx512f": True})
    monkeypatch.setenv("NUMBA_CPU_NAME", "skylake-avx512")
    assert rwkvcpu._avx2_width_target() is None


@pytest.mark.parametrize("first", ["", "import numba\n"])
def test_numba_compiles_for_the_pinned_target_in_a_fresh_process(first):
    """Importing rwkvcpu before anything is compiled with Numba (Numba itself may be imported
    first: pytest plugins, apps) sets Numba's target: on this machine, AVX-512 off where it has it,
    the host's own target where it has not."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV}
    code = (first + "import rwkvcpu, llvmlite.binding as ll\n"
            "from numba.core.registry import cpu_target\n"
            "from numba.core import config\n"
            "print(bool(ll.get_host_cpu_features().get('avx512f')), config.CPU_NAME,\n"
            "      '+avx512f' in cpu_target.target_context.codegen()._tm_features)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    avx512_host, cpu_name, compiles_avx512 = out.stdout.split()
    assert compiles_avx512 == "False"
    assert (cpu_name != "None") == (avx512_host == "True")
