#!/bin/bash
# GPU tests on a machine with a CUDA GPU (the device machine): needs .gpu/whl (gguf + rwkv wheels) and .gpu/fx
# (fixture GGUFs; f16/bf16/_0/_1/q6_k are regenerated from f32 with rwkvcpu quantize). Extra args go to pytest.
# A cold device compiles every kernel first: 300 s was not enough there (63 tests done; the same run on the
# warm machine then took 119 s; H100, 2026-11-24). TEST_TIMEOUT (s) caps the test run.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/gguf*.whl .gpu/whl/rwkv*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /dev/null 2>&1 || echo "editable install failed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import numba, numpy; from numba import cuda; print('numba', numba.__version__, 'numpy', numpy.__version__, 'cuda ok', cuda.is_available())"
python3 -m pip show numba-cuda 2>/dev/null | grep -i version
export RWKVCPU_FIXTURES=$PWD/.gpu/fx
for t in f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q6_k; do python3 -m rwkvcpu.cli quantize .gpu/fx/tiny-rwkv7-f32.gguf .gpu/fx/tiny-rwkv7-$t.gguf $t > /dev/null || echo "quantize $t failed"; done
ls .gpu/fx | wc -l
timeout ${TEST_TIMEOUT:-540} python3 -m pytest -x -q -p no:cacheprovider tests/test_cuda.py "$@" 2>&1 | tee $OUT/test.log | tail -40
