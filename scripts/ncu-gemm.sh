#!/usr/bin/env bash
# On the GPU machine (after scripts/pack-gpu.sh here, carry ["gpu-pack"]): profiles single sparse
# GEMM launches with ncu and prints the numbers the notes compare (duration, DRAM bytes and
# throughput, L2 hit rate, SM throughput); full reports go to $OUT/ncu-TAG.txt.
#   bash scripts/ncu-gemm.sh TAG:SHAPE:PASS:CONFIG ...
# SHAPE is the GEMM bench's name:tokens:d_in:d_out (dW is d_out x d_in x tokens), PASS fwd|dx|dw,
# CONFIG a substring of the bench's instance names (bn256_s4_DataParallel, bn192_s5_StreamK, ...).
# With no arguments: the GPT-2 XL fc1 dW questions of docs/bench/notes.md (what slows its main
# loop: M, N, or the waves). CONFIG `peer:REGEX` profiles the peer's kernel instead (the bench
# with cuSPARSELt, our instances narrowed to bn256_s4_DataParallel): the launch after the first
# PEER_SKIP (20) whose name matches REGEX (past its algorithm search); `peer-list` prints the
# names and counts of every kernel the bench launches for that shape and pass (to find
# cuSPARSELt's kernel name for `peer:`), e.g.
#   bash scripts/ncu-gemm.sh list:gpt2-medium.fc1@16k:16384:1024:4096:dw:peer-list
# `peer-chosen` profiles the kernel of the algorithm cuSPARSELt's search keeps (the bench prints it;
# then `--cslt-alg` runs it without the search): one search name runs at several grids, so
# `peer:REGEX` may catch a search candidate (docs/bench/notes.md), e.g.
#   bash scripts/ncu-gemm.sh cslt:gpt2-medium.fc1@16k:16384:1024:4096:dw:peer-chosen
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
  one-wave-m2304-n1600:c:16384:1600:2304:dw:bn256_s4_DataParallel \
  medium-fc1-dw:m:16384:1024:4096:dw:bn256_s4_DataParallel
# Metrics beyond the SpeedOfLight section, kept only where this ncu knows them (a name it does
# not know would abort every profile): SMs active, tensor (gmma) pipe, shared-memory wavefronts
# and bank reads/writes (the main loop's suspected ceiling, docs/bench/notes.md), SM clock.
want="dram__bytes_read.sum lts__t_sector_hit_rate.pct sm__throughput.avg.pct_of_peak_sustained_elapsed
sm__cycles_active.avg.pct_of_peak_sustained_elapsed sm__cycles_active.max sm__cycles_active.min sm__cycles_active.avg sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed
l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed l1tex__data_bank_reads.avg.pct_of_peak_sustained_elapsed
l1tex__data_bank_writes.avg.pct_of_peak_sustained_elapsed smsp__cycles_active.avg.per_second"
known=$("$ncu" --query-metrics 2>/dev/null | awk '{print $1}')
metrics=$(for m in $want; do grep -qx "${m%%.*}" <<<"$known" && printf '%s,' "$m"; done)
metrics=${metrics%,}
echo "metrics: $metrics"
for spec in "$@"; do
  IFS=: read -r tag name tokens din dout pass config rest <<<"$spec"
  bench=("$d/benches/gemm" --config bn256_s4_DataParallel --no-stream-k --pass "$pass" --shapes "$name:$tokens:$din:$dout" --reps 3)
  if [ "$config" = peer-list ]; then
    "$ncu" --clock-control none --section LaunchStats --print-summary per-kernel -c 400 "${bench[@]}" >"$out/ncu-$tag.txt" 2>&1
    printf '%-24s kernels launched:\n' "$tag"
    grep -E "^  [A-Za-z_].*\(|^    Section" "$out/ncu-$tag.txt" | grep -v Section | sed 's/^ *//' | sort | uniq -c | sort -rn | head -40
    continue
  fi
  if [ "$config" = peer-chosen ]; then
    # cuSPARSELt at the algorithm its search keeps (the bench prints it), without the search: the
    # first sm90_xmma launch after the warm-up is the kernel the timed calls run.
    alg=$("${bench[@]}" 2>&1 | sed -n 's/.*cuSPARSELt .*: algorithm \([0-9-]*\),.*/\1/p' | head -1)
    [ -n "$alg" ] || { printf '%-24s no algorithm printed (cuSPARSELt unavailable?)\n' "$tag"; continue; }
    "$ncu" --clock-control none -k regex:sm90_xmma -s 2 -c 1 --section SpeedOfLight --section LaunchStats --metrics "$metrics" "${bench[@]}" --cslt-alg "$alg" >"$out/ncu-$tag.txt" 2>&1
    printf '%-24s algorithm %s: %s\n' "$tag" "$alg" "$(grep -E "sm90_xmma.*\(|Duration|Grid Size|Dynamic Shared|DRAM Throughput|Compute \(SM\)|dram__|lts__|sm__|l1tex__" "$out/ncu-$tag.txt" | sed 's/^ *//; s/  */ /g' | tr '\n' ';')"
    continue
  fi
  if [ "$config" = peer ]; then
    "$ncu" --clock-control none -k "regex:$rest" -s "${PEER_SKIP:-20}" -c 1 --section SpeedOfLight --metrics "$metrics" "${bench[@]}" >"$out/ncu-$tag.txt" 2>&1
    printf '%-24s %s\n' "$tag" "$(grep -E "Duration|DRAM Throughput|Compute \(SM\)|dram__|lts__|sm__|l1tex__|smsp__|==PROF==|No kernels" "$out/ncu-$tag.txt" | sed 's/^ *//; s/  */ /g' | tr '\n' ';')"
    continue
  fi
  "$ncu" --clock-control none -k regex:sparse_gemm_sm90 -s 2 -c 1 --section SpeedOfLight \
    --metrics "$metrics" \
    "$d/benches/gemm" --no-cusparselt --stream-k --config "$config" --pass "$pass" --shapes "$name:$tokens:$din:$dout" --reps 3 \
    >"$out/ncu-$tag.txt" 2>&1
  printf '%-24s %s\n' "$tag" "$(grep -E "Duration|DRAM Throughput|Compute \(SM\)|dram__|lts__|sm__|l1tex__|smsp__" "$out/ncu-$tag.txt" | sed 's/^ *//; s/  */ /g' | tr '\n' ';')"
done
