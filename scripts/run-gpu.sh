#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there): every packed test executable with --include-ignored,
# then the GPU tests again under compute-sanitizer memcheck and racecheck, then the benches, then
# the SASS check. Logs go to $OUT (or ./gpu-logs); a pass/fail table is printed last. At the end
# $OUT holds summary.txt and results.tar.gz (everything else: at most 8 files come back).
set -u
pack=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$pack/../gpu-logs}
mkdir -p "$out/logs"
export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cusparselt/lib:${LD_LIBRARY_PATH:-}
export TWOFOUR_BIN="$pack/bin/twofour"  # for tests/cli.rs
export TWOFOUR_TRAIN_BIN="$pack/bin/twofour-train"  # for trainer/tests/train.rs
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
declare -a rows
record() { rows+=("$(printf '%-44s %-6s %s' "$1" "$2" "$3")"); }

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv; echo "commit: $(cat "$pack/COMMIT")"; date -u; } >"$out/device.txt" 2>&1
cat "$out/device.txt"

summary() { grep -E "^test result:" "$1" | tail -1 | sed 's/test result: //; s/; finished.*//'; }

# RUN_TESTS=0 or RUN_BENCHES=0 skip a part (for a bench-only or test-only device call);
# SKIP_BENCHES="gemm ..." skips named benches (the full gemm sweep, stream-K candidates included, takes ~15
# minutes: more than one device call allows; run it in two calls with --shapes, as docs/bench/gemm-h100.md says).
# TESTS="gpu train" runs only the named test executables.
want() { [ -z "${TESTS:-}" ] && return 0; case " $TESTS " in *" $1 "*) return 0 ;; esac; return 1; }
[ "${RUN_TESTS:-1}" = 1 ] && for t in "$pack"/tests/*; do
  n=$(basename "$t")
  want "$n" || continue
  log="$out/logs/$n.log"
  # A hang (say, a deadlocked pipeline) must not eat the whole device call.
  timeout "${TEST_TIMEOUT:-300}" "$t" --include-ignored --test-threads=1 >"$log" 2>&1
  rc=$?
  record "test $n" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$(summary "$log")"
done

# Only the GPU tests (the ignored ones) under the sanitizers: the CPU tests gain nothing there.
[ "${RUN_TESTS:-1}" = 1 ] && for tool in memcheck racecheck; do
  for t in "$pack"/tests/*; do
    n=$(basename "$t")
    want "$n" || continue
    "$t" --list --ignored 2>/dev/null | grep -q ': test' || continue
    log="$out/logs/$n.$tool.log"
    # The trainer's tests also run cuBLASLt's kernels, which racecheck cannot instrument (the
    # process dies inside them, reporting no hazard): racecheck only twofour's own gpt_* kernels there.
    filt=()
    [ "$n" = gpu ] && [ "$tool" = racecheck ] && filt=(--kernel-name kns=gpt_)
    # Each GPU test in its own process: racecheck's host memory grows with a process's launches
    # (the sparse GEMM's suite in one process was killed at 130 GB on the 128 GB machine).
    rc=0
    : >"$log"
    for name in $("$t" --list --ignored 2>/dev/null | sed -n 's/: test$//p'); do
      timeout "${SAN_TIMEOUT:-400}" "$san" --tool "$tool" "${filt[@]}" --error-exitcode 99 --print-limit 20 "$t" --ignored --exact "$name" --test-threads=1 >>"$log" 2>&1 || rc=1
    done
    errs=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')
    passed=$(grep -c '^test .* ok$' "$log")
    record "$tool $n" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "${errs:-rc=$rc} $passed tests ok, one process each"
  done
done

# RUN_TUNE=1: re-tune the embedded shape table (the command of docs/bench/tuning-h100.md) into
# $OUT/h100.json (+ tuning.png, tune.log); copy it to tables/h100.json here after a kernel change.
if [ "${RUN_TUNE:-0}" = 1 ] && [ -x "$pack/bin/twofour-tune" ]; then
  "$pack/bin/twofour-tune" --model gpt2 --shapes llama7b.up:16384:4096:11008,llama7b.down:16384:11008:4096 \
    --out "$out/h100.json" --holdout gpt2-medium.fc1@32k:32768:1024:4096,gpt2-large.fc2@8k:8192:5120:1280,llama7b.up@8k:8192:4096:11008 \
    --report "$out/tuning.png" >"$out/tune.log" 2>&1
  rc=$?
  record "twofour-tune (shape table)" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$(grep '^tuned' "$out/tune.log")"
  # The benches below then run with the table just tuned (the embedded one no longer matches
  # the kernels after a kernel change, and the library would fall back to its heuristic).
  [ $rc = 0 ] && export TWOFOUR_SHAPE_TABLE="$out/h100.json"
fi

# The kernels bench's PyTorch peers, measured first in the same call (read through KERNELS_PEER_JSON).
if [ "${RUN_BENCHES:-1}" = 1 ] && [ "${RUN_PEER:-1}" = 1 ] && [ -x /opt/torch/.venv/bin/python ]; then
  case " ${SKIP_BENCHES:-} " in *" kernels "*) ;; *)
    OUT="$out" /opt/torch/.venv/bin/python "$pack/peers/kernels_torch_bench.py" >"$out/logs/kernels-torch.log" 2>&1
    rc=$?
    record "pytorch kernel peers" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$(tail -c 120 "$out/logs/kernels-torch.log" | tr '\n' ' ')"
    [ -f "$out/kernels-torch.json" ] && export KERNELS_PEER_JSON="$out/kernels-torch.json" ;;
  esac
fi
[ "${RUN_BENCHES:-1}" = 1 ] && for b in "$pack"/benches/*; do
  n=$(basename "$b")
  log="$out/logs/bench-$n.log"
  case " ${SKIP_BENCHES:-} " in *" $n "*) record "bench $n" "SKIP" "SKIP_BENCHES"; continue ;; esac
  extra=()
  [ "$n" = gemm ] && extra=(--json "$out/gemm-h100.json")
  [ "$n" = kernels ] && extra=(--json "$out/kernels-h100.json")
  BENCH_DATE=$(date -u +%F) "$b" --bench "${extra[@]}" >"$log" 2>&1
  rc=$?
  record "bench $n" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$(grep -c 'time:\|^[a-z0-9.@-]* *fwd\|dx\|dw \| floor ' "$log") results"
  if [ "$n" = gemm ] || [ "$n" = kernels ]; then cat "$log"; else grep -E "time:|thrpt:|^[a-z].*/" "$log" | head -40; fi
done

# The trainer (issue 7): throughput vs PyTorch in the same call, then the main job on the H100.
if [ "${RUN_TRAINER:-1}" = 1 ] && [ -x "$pack/bin/twofour-train" ]; then
  tb="$out/trainer-bench.jsonl"
  : >"$tb"
  [ "${TRAINER_BENCH:-1}" = 1 ] && for spec in "124m 32" "350m 16"; do
    set -- $spec
    "$pack/bin/twofour-train" --bench --model "$1" --batch "$2" --seq 1024 --steps ${TRAIN_BENCH_STEPS:-10} >>"$tb" 2>"$out/logs/trainer-bench-$1.log"
    rc=$?
    record "trainer bench $1" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$(tail -1 "$tb")"
  done
  # TRAINER_VARIANTS="label:VAR=1 VAR2=0;label2:..." also runs the 124M bench once per variant (the
  # trainer's TWOFOUR_* switches), each line tagged with its label: A/B tests in one call.
  if [ -n "${TRAINER_VARIANTS:-}" ]; then
    IFS=';' read -ra variants <<<"$TRAINER_VARIANTS"
    for v in "${variants[@]}"; do
      label=${v%%:*}
      envs=${v#*:}
      line=$(env $envs "$pack/bin/twofour-train" --bench --model 124m --batch 32 --seq 1024 --steps ${TRAIN_BENCH_STEPS:-10} 2>>"$out/logs/trainer-variants.log")
      rc=$?
      echo "{\"variant\":\"$label\",\"env\":\"$envs\",\"result\":${line:-null}}" >>"$out/trainer-variants.jsonl"
      record "trainer variant $label" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$line"
    done
  fi
  if [ "${TRAINER_BENCH:-1}" = 1 ] && [ "${RUN_PEER:-1}" = 1 ] && [ -x /opt/torch/.venv/bin/python ]; then
    OUT="$out" PEER_MODELS=gpt2-124M,gpt2-350M /opt/torch/.venv/bin/python "$pack/peers/gpt2_torch_bench.py" >"$out/logs/torch-peer.log" 2>&1
    rc=$?
    record "pytorch peer (torch.compile)" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$(grep -c tok_s "$out/logs/torch-peer.log") models"
  fi
  if [ "${RUN_MAIN:-1}" = 1 ]; then
    # The README's main job on the H100: GPT-2 124M on the embedded corpus, a few minutes.
    "$pack/bin/twofour-train" --out "$out/run-124m" ${MAIN_ARGS:---steps 3000} >"$out/logs/train-124m.log" 2>&1
    rc=$?
    record "main job (twofour-train)" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$(grep 'val loss' "$out/logs/train-124m.log" | tail -1)"
    cp "$out/run-124m/loss.png" "$out/loss-124m.png" 2>/dev/null
    cp "$out/run-124m/losses.tsv" "$out/losses-124m.tsv" 2>/dev/null
    grep -E "^(step|GPU|model|data|sample|checkpoint)" "$out/logs/train-124m.log" >"$out/train-124m.txt"
    rm -rf "$out/run-124m"
  fi
fi

if [ -x "$pack/bin/twofour" ]; then
  "$pack/bin/twofour" demo >"$out/logs/demo.log" 2>&1
  rc=$?
  record "demo (twofour demo)" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$(tail -1 "$out/logs/demo.log")"
fi

# The sparse tensor-core instructions must be in the SASS of the sm_90a cubin.
if command -v cuobjdump >/dev/null; then
  cuobjdump -sass -arch sm_90a "$pack/twofour.fatbin" >"$out/logs/sass-sm90a.txt" 2>&1
  cuobjdump -sass -arch sm_80 "$pack/twofour.fatbin" >"$out/logs/sass-sm80.txt" 2>&1
  hmma_sp=$(grep -cE "HMMA\.SP|HMMA.*\.SP" "$out/logs/sass-sm90a.txt")
  hgmma_sp=$(grep -cE "HGMMA.*SP|HGMMA\.SP" "$out/logs/sass-sm90a.txt")
  record "sass sm_90a" "INFO" "sparse HMMA: $hmma_sp, sparse HGMMA: $hgmma_sp"
  # The cooperative single-CTA instances keep their main loops on the uniform datapath: every
  # mbarrier wait addresses shared memory through a uniform register. When a schedule change made
  # ptxas treat the loop as divergent, the waits moved to vector registers and the GEMM lost 5-13%
  # on long-K shapes with no other sign (docs/bench/notes.md).
  vec_waits=$(awk '/Function :/ {f=$3} /TRYWAIT/ && f ~ /^sparse_gemm_sm90_bn[0-9]+_s[0-9]+_[kn]$/ && $0 !~ /\[UR/ {n++} END {print n+0}' "$out/logs/sass-sm90a.txt")
  record "sass main loops uniform" "$([ "$vec_waits" = 0 ] && echo PASS || echo FAIL)" "mbarrier waits on vector registers in cooperative instances: $vec_waits"
fi

cp "$pack/ptxas-report.txt" "$out/" 2>/dev/null
echo
echo "== ptxas (registers / spills per kernel, sm_90a)"
awk "/Compiling entry function/ {f=\$7; a=\$9} /bytes stack frame/ {s=\$0} /Used/ {print a, f, \$5, \$6, s}" "$pack/ptxas-report.txt" | sed "s/ bytes stack frame,/ stack,/; s/ bytes spill stores,/ spill-st,/; s/ bytes spill loads/ spill-ld/" | sort -u | head -60
echo
echo "== results"
printf '%s\n' "${rows[@]}" | tee "$out/summary.txt"
fails=$(printf '%s\n' "${rows[@]}" | grep -c " FAIL ")
echo "$((${#rows[@]} - fails)) passed, $fails failed"
# At most 8 files come back from the device: everything but the summary travels as one archive
# (results.tar.gz: logs/, the bench JSONs, the trainer's loss plot, ...).
# (A caller's own runner.log in $OUT stays as it is.)
(cd "$out" && { tar -czf results.tar.gz --exclude=./results.tar.gz --exclude=./summary.txt --exclude=./runner.log . ; [ $? -le 1 ]; } \
  && find . -mindepth 1 -maxdepth 1 ! -name results.tar.gz ! -name summary.txt ! -name runner.log -exec rm -rf {} +)
[ "$fails" = 0 ]
