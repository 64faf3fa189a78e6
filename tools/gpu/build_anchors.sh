#!/bin/bash
# device call F: build llama.cpp CUDA (sm_90; FlashAttention kernels off: RWKV has no attention, ~4.5 min on 16 cores)
# from the llama-cpp-python 0.3.36 sdist's source (.gpu/llama-src.tar.xz: its vendor/llama.cpp without models/docs) while generating the random models
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/whl/gguf*.whl .gpu/whl/rwkv*.whl 2>/dev/null
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /dev/null 2>&1
R=$PWD
for s in 0.1b 1.5b; do for t in f16 q8_0 pth; do
  o=/tmp/r-$s-$t.gguf; [ $t = pth ] && o=/tmp/r-$s.pth
  python3 tools/make_random_model.py --shape $s --type $t -o $o > /dev/null &
done; done
cd /tmp && { [ -d llama.cpp ] || tar xJf $R/.gpu/llama-src.tar.xz; }
cd /tmp/llama.cpp
( cmake -B build -DGGML_CUDA=ON -DGGML_CUDA_FA=OFF -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/cmake.log 2>&1 && cmake --build build -j16 --target llama-bench > /tmp/build.log 2>&1 ) || { tail -30 /tmp/cmake.log /tmp/build.log; exit 1; }
wait
ls -la /tmp/r-* build/bin/llama-bench
