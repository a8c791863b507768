#!/usr/bin/env python3
"""Prints the markdown table of docs/bench/kernels-h100.md from a `kernels --json` file (the
sm_80 comparison rows go to their own table in the doc, so they are left out here).

  scripts/kernels-report.py docs/bench/kernels-h100.json
"""
import json, sys

records = json.load(open(sys.argv[1]))["records"]
print("| kernel | shape | ms | floor ms | x floor | peer ms |")
print("| --- | --- | --- | --- | --- | --- |")
for r in records:
    if r["kernel"].startswith("sparse_gemm_sm80"):
        continue
    peer = r.get("peer_ms")
    peer = f"{peer:.4f}" if peer else "-"
    print(f"| {r['kernel']} | {r['shape']} | {r['ms']:.4f} | {r['floor_ms']:.4f} | {r['ms'] / r['floor_ms']:.2f} | {peer} |")
