# The PyTorch peers of twofour's sparse-training kernels, measured in the same device call as
# `benches/kernels` (gpu-pack/run-gpu.sh runs this first and hands the JSON to the bench through
# KERNELS_PEER_JSON): torch._sparse_semi_structured_tile (PyTorch's greedy 4x4 transposable 2:4
# mask + compression) on the bench's weights, and SwiGLU forward and backward (eager and
# torch.compile) on 16384 x 2*11008. Random bf16 data, CUDA events, warm-up, median.
import json, os, statistics, sys
import torch
import torch.nn.functional as F

dev = torch.device("cuda")
torch.manual_seed(0)

def bench(fn, reps=20, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)

out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "tile_prune_ms": {}}
# The weights of benches/kernels.rs: (rows, cols).
for r, c in [(3072, 768), (4096, 1024), (1024, 4096), (6400, 1600), (11008, 4096), (4096, 11008)]:
    w = torch.randn(r, c, device=dev, dtype=torch.bfloat16)
    try:
        out["tile_prune_ms"][f"{r}x{c}"] = bench(lambda: torch._sparse_semi_structured_tile(w))
    except Exception as e:
        out.setdefault("errors", []).append(f"tile {r}x{c}: {e!r}"[:200])
    del w

# SwiGLU, token-major, H = [up | gate] as in twofour's gated kernels: y = silu(gate) * up.
M, H = 16384, 11008
h = torch.randn(M, 2 * H, device=dev, dtype=torch.bfloat16, requires_grad=True)
dy = torch.randn(M, H, device=dev, dtype=torch.bfloat16)
def swiglu(h):
    up, gate = h.chunk(2, dim=-1)
    return F.silu(gate) * up
def fwd_bwd(f):
    y = f(h)
    (g,) = torch.autograd.grad(y, h, dy)
    return g
with torch.no_grad():
    out["swiglu_fwd_eager_ms"] = bench(lambda: swiglu(h))
try:
    cs = torch.compile(swiglu)
    with torch.no_grad():
        out["swiglu_fwd_compile_ms"] = bench(lambda: cs(h))
    # Backward alone is not separable in autograd: time forward + backward and subtract forward.
    out["swiglu_fwd_bwd_compile_ms"] = bench(lambda: fwd_bwd(cs))
    out["swiglu_bwd_compile_ms"] = out["swiglu_fwd_bwd_compile_ms"] - out["swiglu_fwd_compile_ms"]
except Exception as e:
    out.setdefault("errors", []).append(f"compile: {e!r}"[:200])
print(json.dumps(out), flush=True)
path = os.path.join(os.environ.get("OUT", "/tmp"), "kernels-torch.json")
with open(path + ".tmp", "w") as f:
    json.dump(out, f, indent=1)
os.replace(path + ".tmp", path)
