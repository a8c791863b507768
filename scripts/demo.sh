#!/usr/bin/env bash
# The main job until the trainer lands: prune, compress and multiply a random matrix on the GPU and
# check each step against the CPU reference (or say clearly that there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-nvcc.sh
exec cargo run --release --bin twofour -- demo "$@"
