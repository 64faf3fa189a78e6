#!/bin/bash
# device call G: GPU tests, then the side-by-side table (rwkvcpu cuda, llama.cpp CUDA, rwkv pip CUDA fp16)
bash tools/gpu/check.sh -q -rA 2>&1 | grep -E "passed|failed|PASSED|FAILED|SKIPPED" | tail -80 > $OUT/tests.txt; tail -3 $OUT/tests.txt
export PYTHONPATH=/tmp/site
for s in 0.1b 1.5b; do for t in f16 q8_0; do
  P=""; [ $t = f16 ] && P="--pth /tmp/r-$s.pth"
  N="exact"; [ $t = f16 ] && N="exact,llama"
  timeout 280 python3 tools/bench.py -m /tmp/r-$s-$t.gguf $P --device cuda --batch 64 --rounds 1 --no-cold-start -t 16 --numerics $N --llama-bench /tmp/llama.cpp/build/bin/llama-bench 2>&1 | tail -10 | tee -a $OUT/bench.txt
done; done
