#!/usr/bin/env bash
# The main job: train the GPT model on the embedded Shakespeare corpus. Today that is the CPU
# reference path (the GPU path of issue 7 is not built yet; the trainer says so on a GPU machine):
# the tiny model, 100 steps, a loss plot and a checkpoint under runs/tiny/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-nvcc.sh
exec cargo run --release -p twofour-trainer --bin twofour-train -- "$@"
