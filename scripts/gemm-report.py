#!/usr/bin/env python3
"""Merges `gemm --json` files (one per device call) into one docs/bench JSON in ffn_shapes order
and prints the markdown table and the summary numbers for docs/bench/gemm-h100.md.

  scripts/gemm-report.py OUT.json COMMAND DATE DRIVER IN1.json [IN2.json ...]
"""
import json, math, sys

out, command, date, driver, *ins = sys.argv[1:]
recs, meta = [], None
for p in ins:
    j = json.load(open(p))
    meta = meta or j
    recs += j["records"]
order = ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama7b", "square"]
def key(r):
    n = r["name"]
    fam = next(i for i, o in enumerate(order) if n.startswith(o))
    return (fam, "@64k" in n, ".fc2" in n or ".down" in n, r["m"] * r["n"] * r["k"] if fam == 5 else 0,
            ["fwd", "dx", "dw"].index(r["layout"]))
recs.sort(key=key)
json.dump({"device": meta["device"], "driver": driver, "date": date, "commit": meta["commit"], "command": command,
           "records": recs}, open(out, "w"), indent=1)
geo = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))
dense = [r["twofour_tflops"] / r["cublas_tflops"] for r in recs]
sp = [(r, r["twofour_tflops"] / r["cusparselt_tflops"]) for r in recs if r.get("cusparselt_tflops")]
print(f"pairs {len(recs)}: geomean {geo(dense):.3f}x dense; vs cuSPARSELt {geo([s for _, s in sp]):.3f}x over {len(sp)}, "
      f"faster on {sum(s > 1 for _, s in sp)}")
big = [r for r in recs if not r["name"].startswith("gpt2-small")]
print("below 1.3x dense (medium+):", [(r["name"], r["layout"], round(r["twofour_tflops"] / r["cublas_tflops"], 2))
                                       for r in big if r["twofour_tflops"] / r["cublas_tflops"] < 1.3])
print("behind cuSPARSELt:", [(r["name"], r["layout"], round(s, 2)) for r, s in sp if s < 1])
# With the bench's ms_range (each contender's fastest and slowest head-to-head call): the pairs
# behind cuSPARSELt whose two ranges overlap, i.e. within one pair's call-to-call spread.
def overlaps(r):
    g = r.get("ms_range", {})
    if "twofour" not in g or "cusparselt" not in g:
        return None
    (a0, a1), (b0, b1) = g["twofour"], g["cusparselt"]
    return a0 <= b1 and b0 <= a1
flags = [(r["name"], r["layout"], overlaps(r)) for r, s in sp if s < 1]
if any(f is not None for _, _, f in flags):
    print("  of those, head-to-head ranges overlapping (within the spread):", [(n, l) for n, l, f in flags if f])
print()
print("| shape | pass | M | N | K | twofour | cuBLAS | cuSPARSELt | x dense | x cuSPARSELt | config |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in recs:
    c = r.get("cusparselt_tflops")
    cs = f"{c:.0f}" if c else "error"
    xs = f"{r['twofour_tflops'] / c:.2f}" if c else "-"
    print(f"| {r['name']} | {r['layout']} | {r['m']} | {r['n']} | {r['k']} | {r['twofour_tflops']:.0f} | {r['cublas_tflops']:.0f} | "
          f"{cs} | {r['twofour_tflops'] / r['cublas_tflops']:.2f} | {xs} | "
          f"{r.get('twofour_config', '')} |")
