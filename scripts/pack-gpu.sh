#!/usr/bin/env bash
# Builds the release test and bench executables here (the GPU machine has no Rust) and packs them,
# the runner and the ptxas report into gpu-pack/ (git-ignored). Then, on the GPU machine:
#   device run, carry ["gpu-pack"], command: bash gpu-pack/run-gpu.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup-nvcc.sh >/dev/null
pack="$root/gpu-pack"
rm -rf "$pack.tmp"
mkdir -p "$pack.tmp/tests" "$pack.tmp/benches" "$pack.tmp/bin"
# Test and bench executables, found from cargo's JSON messages (one per tests/*.rs, benches/*.rs
# and the library's unit tests).
TWOFOUR_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
  cargo build --release --workspace --tests --benches --bins --message-format=json-render-diagnostics >"$pack.tmp/build.json"
python3 - "$pack.tmp" <<'PY'
import json, shutil, sys, os
pack = sys.argv[1]
for line in open(os.path.join(pack, "build.json")):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind = m["target"]["kind"][0]
    name = m["target"]["name"]
    test = m["profile"]["test"]
    if kind == "bench":
        dest = "benches"
    elif test:
        dest = "tests"
        name = name if kind == "test" else f"unit-{name}"
    elif kind == "bin":
        dest = "bin"
    else:
        continue
    shutil.copy2(m["executable"], os.path.join(pack, dest, name))
PY
rm "$pack.tmp/build.json"
# Debug info is for here; the machine gets stripped executables (the carry limit is 64 MiB).
strip "$pack.tmp"/tests/* "$pack.tmp"/benches/* "$pack.tmp"/bin/*
cp target/release/ptxas-report.txt target/release/twofour.fatbin "$pack.tmp/"
cp scripts/run-gpu.sh "$pack.tmp/"
mkdir -p "$pack.tmp/peers" && cp scripts/peers/*.py "$pack.tmp/peers/"
git rev-parse --short HEAD >"$pack.tmp/COMMIT" 2>/dev/null || echo unknown >"$pack.tmp/COMMIT"
git status --porcelain --untracked-files=no | grep -q . && echo "(dirty)" >>"$pack.tmp/COMMIT" || true
# Every executable embeds the same kernels and corpus: xz with a 64 MiB window stores them once
# (95 MiB of files -> well under the carry limit of 64 MiB). run-gpu.sh unpacks and runs.
rm -rf "$pack"
mkdir -p "$pack"
XZ_OPT="-9 -T2" tar -C "$pack.tmp" -cJf "$pack/bundle.tar.xz" .
cat >"$pack/run-gpu.sh" <<'SH'
#!/usr/bin/env bash
# Unpacks the bundle next to this script and runs the real runner (scripts/run-gpu.sh).
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/twofour-pack.XXXXXX)
tar -C "$dir" -xJf "$here/bundle.tar.xz" || exit 1
exec bash "$dir/run-gpu.sh" "$@"
SH
ls "$pack.tmp"/tests "$pack.tmp"/benches "$pack.tmp"/bin
rm -rf "$pack.tmp"
du -sh "$pack"
