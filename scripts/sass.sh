#!/usr/bin/env bash
# SASS of one kernel without a GPU, in ~10 s: compiles one cuda/*.cu for sm_90a with build.rs's
# flags, dumps the kernel's SASS to target/sass/KERNEL.sass and prints its ptxas line and, for the
# sparse GEMM, how its mbarrier waits address shared memory (uniform registers in a healthy main
# loop; vector registers meant a 5-13% slower GEMM, docs/bench/notes.md). cuobjdump comes from a
# PyPI wheel installed into .toolchain/sass/ on first use (13.2 reads 13.0 cubins).
#   scripts/sass.sh sparse_gemm_sm90_bn256_s4_k            (file: cuda/sparse_gemm_sm90.cu)
#   scripts/sass.sh mvue24_compress_w2 cuda/mvue24.cu
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kernel=${1:?usage: scripts/sass.sh KERNEL [FILE.cu]}
src=${2:-$root/cuda/sparse_gemm_sm90.cu}
"$root/scripts/setup-nvcc.sh" >/dev/null
nvcc="$root/.toolchain/nvidia/cu13/bin/nvcc"
tools="$root/.toolchain/sass"
if [ ! -x "$tools/nvidia/cu13/bin/nvdisasm" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-cache-dir --target "$tools" nvidia-cuda-cuobjdump==13.2.51 nvidia-cuda-nvdisasm==13.2.51
  chmod +x "$tools"/nvidia/cu13/bin/* 2>/dev/null || true
fi
out="$root/target/sass"
mkdir -p "$out"
"$nvcc" -std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -I"$root/cuda" -cubin \
  -gencode=arch=compute_90a,code=sm_90a -Xptxas=-v -o "$out/unit.cubin" "$src" 2>"$out/ptxas.txt"
PATH="$tools/nvidia/cu13/bin:$PATH" "$tools/nvidia/cu13/bin/cuobjdump" -sass -fun "$kernel" "$out/unit.cubin" >"$out/$kernel.sass"
awk -v k="$kernel" '/Compiling entry function/ {f = ($0 ~ "'"'"'" k "'"'"'")} f && /Used|spill/' "$out/ptxas.txt"
echo "SASS: $out/$kernel.sass ($(grep -c '^ */\*[0-9a-f]*\*/' "$out/$kernel.sass") instructions)"
echo "mbarrier waits: $(grep -c 'TRYWAIT.*\[UR' "$out/$kernel.sass") through uniform registers, $(grep 'TRYWAIT' "$out/$kernel.sass" | grep -vc '\[UR') through vector registers"
