#!/usr/bin/env bash
# The test command: installs nvcc 13.0 into .toolchain/ if needed, compiles every kernel, runs all
# CPU tests. GPU tests are #[ignore = "needs a CUDA GPU"]: they show as ignored here and run on a
# GPU machine through scripts/pack-gpu.sh + gpu-pack/run-gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-nvcc.sh
cargo test --workspace --release "$@"
