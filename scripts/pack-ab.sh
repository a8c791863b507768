#!/usr/bin/env bash
# Builds another revision's bench executables for a same-call A/B against the packed build on the
# GPU machine (one device call measures both, so the comparison is free of call-to-call noise:
# docs/bench/notes.md). Run after scripts/pack-gpu.sh, which replaces gpu-pack/:
#   scripts/pack-gpu.sh && scripts/pack-ab.sh main gemm     -> gpu-pack/ab/gemm-<rev>
# There (carry ["gpu-pack"]), the packed build's benches are in gpu-pack/bundle.tar.xz and
# the other revision's next to it:
#   d=$(mktemp -d); tar -C $d -xJf gpu-pack/bundle.tar.xz
#   $d/benches/gemm --shapes S --all-configs; gpu-pack/ab/gemm-<rev> --shapes S --all-configs
# The revision builds in its own worktree and target folder (target-ab/, git-ignored; seeded from
# target/release on first use): the same package in two folders gets the same artifact names.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:?usage: scripts/pack-ab.sh REVISION [BENCH...]}
shift
benches=${*:-gemm}
short=$(git -C "$root" rev-parse --short "$rev")
wt="${TMPDIR:-/tmp}/twofour-ab-$short"
target="$root/target-ab/target"
if [ ! -d "$target/release" ] && [ -d "$root/target/release" ]; then
  mkdir -p "$target"
  cp -r "$root/target/release" "$target/"
fi
[ -d "$wt" ] || git -C "$root" worktree add --detach "$wt" "$short" >/dev/null
ln -sfn "$root/.toolchain" "$wt/.toolchain"
mkdir -p "$root/gpu-pack/ab"
for b in $benches; do
  exe=$(cd "$wt" && TWOFOUR_COMMIT=$short CARGO_TARGET_DIR="$target" cargo build --release --bench "$b" --message-format=json-render-diagnostics \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["executable"])')
  cp "$exe" "$root/gpu-pack/ab/$b-$short"
  strip "$root/gpu-pack/ab/$b-$short"
  echo "gpu-pack/ab/$b-$short"
done
git -C "$root" worktree remove --force "$wt"
