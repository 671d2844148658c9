# Copied unchanged from ../shared/peers/torch_lm.py (the shared folder does not travel to the GPU machine).
"""PyTorch peer for the CS336 Transformer LM (pre-norm RMSNorm, RoPE, SwiGLU, causal MHA,
untied LM head, no biases), trained with AdamW + grad clipping.  Measures training tokens/s and MFU
for eager fp32, eager bf16 autocast and torch.compile bf16, on the same GPU, for several configs.
Prints one JSON line per (config, mode).
Usage: python3 torch_lm.py [--configs ts-17M,gpt2s-124M] [--modes compile-bf16]  (synthetic throughput)
       python3 torch_lm.py --configs ts-17M --modes compile-bf16 --train-bin T.bin --val-bin V.bin --steps N  (time to loss)"""
import json, math, sys, time, torch, torch.nn as nn, torch.nn.functional as F

class RMSNorm(nn.Module):
    def __init__(s, d, eps=1e-5):
        super().__init__(); s.w = nn.Parameter(torch.ones(d)); s.eps = eps
    def forward(s, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + s.eps)).to(x.dtype) * s.w

def rope_cache(T, dh, theta, dev):
    inv = 1.0 / theta ** (torch.arange(0, dh, 2, device=dev).float() / dh)
    ang = torch.outer(torch.arange(T, device=dev).float(), inv)
    return ang.cos(), ang.sin()

def apply_rope(x, cos, sin):  # x: B H T dh, interleaved pairs as in CS336
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[: x.shape[-2]], sin[: x.shape[-2]]
    o1 = x1 * c - x2 * s; o2 = x1 * s + x2 * c
    return torch.stack((o1, o2), -1).flatten(-2)

class Block(nn.Module):
    def __init__(s, d, h, dff):
        super().__init__(); s.h = h
        s.n1 = RMSNorm(d); s.n2 = RMSNorm(d)
        s.q = nn.Linear(d, d, bias=False); s.k = nn.Linear(d, d, bias=False); s.v = nn.Linear(d, d, bias=False)
        s.o = nn.Linear(d, d, bias=False)
        s.w1 = nn.Linear(d, dff, bias=False); s.w3 = nn.Linear(d, dff, bias=False); s.w2 = nn.Linear(dff, d, bias=False)
    def forward(s, x, cos, sin):
        B, T, D = x.shape; h = s.h
        y = s.n1(x)
        q = s.q(y).view(B, T, h, -1).transpose(1, 2); k = s.k(y).view(B, T, h, -1).transpose(1, 2)
        v = s.v(y).view(B, T, h, -1).transpose(1, 2)
        q = apply_rope(q, cos, sin); k = apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + s.o(a)
        y = s.n2(x)
        return x + s.w2(F.silu(s.w1(y)) * s.w3(y))

class LM(nn.Module):
    def __init__(s, V, T, d, L, h, dff, theta=10000.0):
        super().__init__()
        s.emb = nn.Embedding(V, d); s.blocks = nn.ModuleList([Block(d, h, dff) for _ in range(L)])
        s.nf = RMSNorm(d); s.head = nn.Linear(d, V, bias=False); s.T = T; s.dh = d // h; s.theta = theta
    def forward(s, idx):
        cos, sin = rope_cache(idx.shape[1], s.dh, s.theta, idx.device)
        x = s.emb(idx)
        for b in s.blocks: x = b(x, cos, sin)
        return s.head(s.nf(x))

CONFIGS = {
    # CS336 assignment-1 TinyStories model
    "ts-17M": dict(V=10000, T=256, d=512, L=4, h=16, dff=1344, B=128),
    # GPT-2-small sized Llama-style model
    "gpt2s-124M": dict(V=50304, T=1024, d=768, L=12, h=12, dff=2048, B=32),
    # GPT-2-medium sized
    "gpt2m-350M": dict(V=50304, T=1024, d=1024, L=24, h=16, dff=2816, B=16),
}

def flops_per_token(c):
    n = sum(p for p in [c["V"] * c["d"]] + [c["L"] * (4 * c["d"] ** 2 + 3 * c["d"] * c["dff"])])  # matmul params (head + blocks)
    attn = c["L"] * 2 * 2 * c["T"] * c["d"] / 2  # causal QK^T and PV, fwd, per token (half of full)
    return 6 * n + 3 * attn

def run(name, mode, steps=30, warm=8):
    c = CONFIGS[name]; dev = "cuda"
    torch.manual_seed(0)
    m = LM(c["V"], c["T"], c["d"], c["L"], c["h"], c["dff"]).to(dev)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    f = torch.compile(m) if mode == "compile-bf16" else m
    data = torch.randint(0, c["V"], (steps + warm, c["B"], c["T"] + 1), device=dev)
    def step(i):
        x, y = data[i, :, :-1], data[i, :, 1:]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "eager-fp32"):
            logits = f(x)
            loss = F.cross_entropy(logits.float().view(-1, c["V"]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    torch.backends.cuda.matmul.allow_tf32 = mode != "eager-fp32-strict"
    for i in range(warm): step(i)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for i in range(steps): loss = step(warm + i)
    torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / steps
    tok = c["B"] * c["T"] / dt
    nparams = sum(p.numel() for p in m.parameters())
    peak = 989e12
    out = dict(config=name, mode=mode, params=nparams, ms_per_step=round(dt * 1e3, 2), tokens_per_s=round(tok),
               mfu_vs_989=round(flops_per_token(c) * tok / peak, 4), loss=round(loss.item(), 3),
               max_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2), gpu=torch.cuda.get_device_name())
    print(json.dumps(out), flush=True)
    del m, opt, f; torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()

def train_on_tokens(name, mode, train_bin, val_bin, steps, lr_max, lr_min, warmup, eval_every, eval_batches, seed=0):
    """Time-to-loss peer: train on a uint16 token file, cosine schedule with warmup, AdamW (0.9, 0.95),
    weight decay 0.1, clip 1.0; prints a JSON line per evaluation with wall time since the first step."""
    import numpy as np
    c = CONFIGS[name]; dev = "cuda"; torch.manual_seed(seed)
    tr = np.memmap(train_bin, dtype=np.uint16, mode="r"); va = np.memmap(val_bin, dtype=np.uint16, mode="r")
    m = LM(c["V"], c["T"], c["d"], c["L"], c["h"], c["dff"]).to(dev)
    opt = torch.optim.AdamW(m.parameters(), lr=lr_max, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    f = torch.compile(m) if mode == "compile-bf16" else m
    g = np.random.default_rng(seed)
    def batch(arr, B):
        ix = g.integers(0, len(arr) - c["T"] - 1, B)
        x = torch.from_numpy(np.stack([arr[i:i + c["T"] + 1].astype(np.int64) for i in ix])).to(dev, non_blocking=True)
        return x[:, :-1], x[:, 1:]
    def lr_at(t):
        if t < warmup: return t / warmup * lr_max
        return lr_min + 0.5 * (1 + math.cos(min(1.0, (t - warmup) / max(1, steps - warmup)) * math.pi)) * (lr_max - lr_min)
    def evaluate():
        m.eval(); tot = 0.0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "eager-fp32"):
            for _ in range(eval_batches):
                x, y = batch(va, c["B"]); tot += F.cross_entropy(f(x).float().view(-1, c["V"]), y.reshape(-1)).item()
        m.train(); return tot / eval_batches
    train_s, tp = 0.0, None
    for t in range(steps + 1):
        if t % eval_every == 0 or t == steps:
            torch.cuda.synchronize()
            if tp is not None: train_s += time.perf_counter() - tp
            print(json.dumps(dict(config=name, mode=mode, step=t, val_loss=round(evaluate(), 4),
                                  train_seconds=round(train_s, 2))), flush=True)   # evaluation time excluded
            if t == steps: break
            torch.cuda.synchronize(); tp = time.perf_counter()
        for gr in opt.param_groups: gr["lr"] = lr_at(t)
        x, y = batch(tr, c["B"])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "eager-fp32"):
            loss = F.cross_entropy(f(x).float().view(-1, c["V"]), y.reshape(-1))
        loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)

if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="PyTorch peer for scratchlm benchmarks")
    ap.add_argument("--configs", default=",".join(CONFIGS)); ap.add_argument("--modes", default="eager-fp32,eager-bf16,compile-bf16")
    ap.add_argument("--train-bin"); ap.add_argument("--val-bin"); ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr-max", type=float, default=1e-3); ap.add_argument("--lr-min", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100); ap.add_argument("--eval-every", type=int, default=100); ap.add_argument("--eval-batches", type=int, default=10)
    a = ap.parse_args()
    for n in a.configs.split(","):
        for md in a.modes.split(","):
            try:
                if a.train_bin: train_on_tokens(n, md, a.train_bin, a.val_bin, a.steps, a.lr_max, a.lr_min, a.warmup, a.eval_every, a.eval_batches)
                else: run(n, md)
            except Exception as e: print(json.dumps(dict(config=n, mode=md, error=repr(e)[:300])), flush=True)
