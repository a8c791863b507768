# Copied from the workspace's shared/peers/ (the script that measured the brief's anchors); only
# change: PEER_MODELS selects models (default all three).
# Peer anchor: PyTorch GPT-2 training throughput on the lent GPU (nanoGPT-style model, bf16 autocast,
# SDPA flash attention, fused AdamW, torch.compile). Random tokens; tokens/s after warm-up; MFU by
# llm.c's formula (6N + 6*L*C*T flops per token) against 989 TFLOP/s.
import math, os, sys, time, json
import torch, torch.nn as nn, torch.nn.functional as F
torch.backends.cuda.matmul.allow_tf32 = True

class Block(nn.Module):
    def __init__(s, C, H):
        super().__init__(); s.H = H
        s.ln1 = nn.LayerNorm(C); s.attn = nn.Linear(C, 3 * C); s.proj = nn.Linear(C, C)
        s.ln2 = nn.LayerNorm(C); s.fc = nn.Linear(C, 4 * C); s.fc2 = nn.Linear(4 * C, C)
    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.attn(s.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, s.H, C // s.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + s.proj(y)
        return x + s.fc2(F.gelu(s.fc(s.ln2(x)), approximate="tanh"))

class GPT(nn.Module):
    def __init__(s, L, C, H, V=50304, T=1024):
        super().__init__()
        s.wte = nn.Embedding(V, C); s.wpe = nn.Embedding(T, C)
        s.blocks = nn.ModuleList(Block(C, H) for _ in range(L)); s.lnf = nn.LayerNorm(C)
        s.head = nn.Linear(C, V, bias=False); s.head.weight = s.wte.weight
    def forward(s, idx, tgt):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in s.blocks: x = b(x)
        logits = s.head(s.lnf(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), tgt.view(-1))

res = []
want = os.environ.get("PEER_MODELS", "gpt2-124M,gpt2-350M,gpt2-774M").split(",")
for name, L, C, H, B in [("gpt2-124M", 12, 768, 12, 32), ("gpt2-350M", 24, 1024, 16, 16), ("gpt2-774M", 36, 1280, 20, 8)]:
    if name not in want: continue
    T = 1024
    torch.manual_seed(0)
    m = GPT(L, C, H).cuda()
    N = sum(p.numel() for p in m.parameters())
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, fused=True)
    cm = torch.compile(m)
    x = torch.randint(0, 50257, (B, T), device="cuda"); y = torch.randint(0, 50257, (B, T), device="cuda")
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = cm(x, y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    t0 = time.time()
    for _ in range(5): step()
    torch.cuda.synchronize(); warm = time.time() - t0
    n = 20; t0 = time.time()
    for _ in range(n): step()
    torch.cuda.synchronize(); dt = (time.time() - t0) / n
    tok = B * T / dt
    flops_tok = 6 * N + 6 * L * C * T
    r = {"model": name, "params": N, "tokens_per_step": B * T, "step_ms": dt * 1e3, "tok_s": tok,
         "mfu": tok * flops_tok / 989e12, "compile_warmup_s": warm}
    res.append(r); print(json.dumps(r), flush=True)
    del m, opt, cm; torch.cuda.empty_cache()
with open(os.path.join(os.environ.get("OUT", "/tmp"), "gpt2_torch_bench.json"), "w") as f: json.dump(res, f, indent=1)
