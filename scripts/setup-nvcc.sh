#!/usr/bin/env bash
# Installs CUDA 13.0's compiler (nvcc, ptxas, fatbinary, the CUDA headers) from PyPI wheels into
# .toolchain/ (git-ignored). Idempotent: returns at once when the pinned versions are already there.
# Stay on 13.0: the lent GPUs' 580 driver cannot JIT PTX from a newer compiler.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.toolchain"
stamp="$dest/.installed-13.0"
pins="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && [ -x "$dest/nvidia/cu13/bin/nvcc" ]; then
  echo "nvcc 13.0 already installed: $dest/nvidia/cu13/bin/nvcc"
  exit 0
fi
py=${PYTHON:-python3}
command -v "$py" >/dev/null || { echo "setup-nvcc: python3 with pip is needed to install nvcc from PyPI" >&2; exit 1; }
rm -rf "$dest.tmp"
# shellcheck disable=SC2086
"$py" -m pip install --quiet --disable-pip-version-check --no-cache-dir --target "$dest.tmp" $pins
rm -rf "$dest"
mv "$dest.tmp" "$dest"
cu="$dest/nvidia/cu13"
# The wheels split one toolkit over several packages; nvcc expects the CUDA layout (bin, include,
# lib64, nvvm) under one root, which the cu13 folder becomes once the pieces are merged.
[ -d "$cu/lib64" ] || { [ -d "$cu/lib" ] && ln -s lib "$cu/lib64"; }
chmod +x "$cu"/bin/* "$cu"/nvvm/bin/* 2>/dev/null || true
echo "$pins" > "$stamp"
"$cu/bin/nvcc" --version | tail -2
echo "nvcc installed: $cu/bin/nvcc"
