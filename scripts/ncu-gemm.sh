#!/usr/bin/env bash
# On the GPU machine (after scripts/pack-gpu.sh here, carry ["gpu-pack"]): profiles single sparse
# GEMM launches with ncu and prints the numbers the notes compare (duration, DRAM bytes and
# throughput, L2 hit rate, SM throughput); full reports go to $OUT/ncu-TAG.txt.
#   bash scripts/ncu-gemm.sh TAG:SHAPE:PASS:CONFIG ...
# SHAPE is the GEMM bench's name:tokens:d_in:d_out (dW is d_out x d_in x tokens), PASS fwd|dx|dw,
# CONFIG a substring of the bench's instance names (bn256_s4_DataParallel, bn192_s5_StreamK, ...).
# With no arguments: the GPT-2 XL fc1 dW questions of docs/bench/notes.md (what slows its main
# loop: M, N, or the waves).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/gpu-logs}
mkdir -p "$out"
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cusparselt/lib:${LD_LIBRARY_PATH:-}
ncu=${NCU:-/usr/local/cuda/bin/ncu}
d=$(mktemp -d)
tar -C "$d" -xJf "$root/gpu-pack/bundle.tar.xz" || exit 1
echo "commit $(cat "$d/COMMIT")"
[ $# -gt 0 ] || set -- \
  xl-fc1-dw:x:16384:1600:6400:dw:bn256_s4_DataParallel \
  m4096-n1600:a:16384:1600:4096:dw:bn256_s4_DataParallel \
  m6400-n1024:b:16384:1024:6400:dw:bn256_s4_DataParallel \
  one-wave-m2432-n1600:c:16384:1600:2432:dw:bn256_s4_DataParallel \
  medium-fc1-dw:m:16384:1024:4096:dw:bn256_s4_DataParallel
for spec in "$@"; do
  IFS=: read -r tag name tokens din dout pass config <<<"$spec"
  "$ncu" --clock-control none -k regex:sparse_gemm_sm90 -s 2 -c 1 --section SpeedOfLight \
    --metrics dram__bytes_read.sum,lts__t_sector_hit_rate.pct,sm__throughput.avg.pct_of_peak_sustained_elapsed \
    "$d/benches/gemm" --no-cusparselt --stream-k --config "$config" --pass "$pass" --shapes "$name:$tokens:$din:$dout" --reps 3 \
    >"$out/ncu-$tag.txt" 2>&1
  printf '%-24s %s\n' "$tag" "$(grep -E "Duration|dram__bytes_read.sum|lts__t_sector_hit_rate|DRAM Throughput|Compute \(SM\)" "$out/ncu-$tag.txt" | sed 's/^ *//; s/  */ /g' | tr '\n' ';')"
done
