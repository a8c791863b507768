#!/usr/bin/env bash
# The main job: train GPT-2 on the embedded Shakespeare corpus: 124M on the GPU path when a GPU is
# present, else the tiny model on the CPU reference (it says which). Outputs under runs/default/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-nvcc.sh
exec cargo run --release -p twofour-trainer --bin twofour-train -- "$@"
