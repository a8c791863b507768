#!/usr/bin/env bash
# Checks without a GPU that cuda/mvue24.cuh's per-group MVUE arithmetic (the `host-check` region:
# weights, picks, kept values, group_kept) gives the same bits as at REV (default HEAD, the last
# version the GPU tests passed at, if committed after a GPU run), on N random and hand-picked
# groups, compiled for the host with g++ (IEEE float, no contraction).
#   scripts/mvue-equiv.sh [REV] [N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:-HEAD}
n=${2:-20000000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The `host-check` region (or, before those lines existed, from the weights' comment to the
# staging code's).
region() {
  local src
  src=$(cat)
  if grep -q '^// host-check begin' <<<"$src"; then
    sed -n '/^\/\/ host-check begin/,/^\/\/ host-check end/p' <<<"$src"
  else
    sed -n '/^\/\/ reference::mvue::group_weights/,/^\/\/ Per-warp staging/p' <<<"$src" | sed '$d'
  fi
}
git -C "$root" show "$rev:cuda/mvue24.cuh" | region >"$tmp/old.inc"
region <"$root/cuda/mvue24.cuh" >"$tmp/new.inc"
[ -s "$tmp/old.inc" ] || { echo "no host-check region in cuda/mvue24.cuh at $rev" >&2; exit 2; }
g++ -std=c++17 -O2 -ffp-contract=off -fno-fast-math -Wno-unknown-pragmas -I "$tmp" -I "$root/scripts/host" -o "$tmp/equiv" "$root/scripts/host/mvue_equiv.cpp"
"$tmp/equiv" "$n"
