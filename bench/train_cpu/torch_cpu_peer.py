"""PyTorch peer for bench/train_cpu: the same CS336 Transformer LM (pre-norm RMSNorm, interleaved
RoPE, SwiGLU, causal attention through scaled_dot_product_attention, untied head, no biases), eager
fp32 on the CPU, one training step = forward + cross-entropy + backward + clip_grad_norm_ + AdamW.
Prints one JSON line per config with the median step time.
Usage: python3 torch_cpu_peer.py CONFIG_JSON BATCH STEPS THREADS"""
import json, math, statistics, sys, time
import torch, torch.nn as nn, torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(s, d):
        super().__init__(); s.weight = nn.Parameter(torch.ones(d))
    def forward(s, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * s.weight


def rope(x, cos, sin):  # x (B, H, T, D), interleaved pairs
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


class Block(nn.Module):
    def __init__(s, d, h, dff):
        super().__init__(); s.h = h
        s.ln1, s.ln2 = RMSNorm(d), RMSNorm(d)
        s.q, s.k, s.v, s.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        s.w1, s.w3, s.w2 = nn.Linear(d, dff, bias=False), nn.Linear(d, dff, bias=False), nn.Linear(dff, d, bias=False)
    def forward(s, x, cos, sin):
        B, T, D = x.shape
        y = s.ln1(x)
        q, k, v = (p(y).view(B, T, s.h, -1).transpose(1, 2) for p in (s.q, s.k, s.v))
        a = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v, is_causal=True)
        x = x + s.o(a.transpose(1, 2).reshape(B, T, D))
        y = s.ln2(x)
        return x + s.w2(F.silu(s.w1(y)) * s.w3(y))


class LM(nn.Module):
    def __init__(s, c):
        super().__init__()
        d, h = c["d_model"], c["num_heads"]
        s.emb = nn.Embedding(c["vocab_size"], d)
        s.blocks = nn.ModuleList(Block(d, h, c["d_ff"]) for _ in range(c["num_layers"]))
        s.ln_final, s.head = RMSNorm(d), nn.Linear(d, c["vocab_size"], bias=False)
        dh = d // h
        inv = c["rope_theta"] ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
        ang = torch.arange(c["context_length"], dtype=torch.float64)[:, None] * inv[None, :]
        s.register_buffer("cos", ang.cos().float()); s.register_buffer("sin", ang.sin().float())
    def forward(s, idx):
        T = idx.shape[1]
        x = s.emb(idx)
        for b in s.blocks: x = b(x, s.cos[:T], s.sin[:T])
        return s.head(s.ln_final(x))


def main():
    cfg = json.load(open(sys.argv[1])); B, steps, threads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads); torch.manual_seed(0)
    T, V = cfg["context_length"], cfg["vocab_size"]
    model = LM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    x = torch.randint(0, V, (B, T)); y = torch.randint(0, V, (B, T))
    def step():
        loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"peer": "pytorch-eager-fp32-cpu", "torch": torch.__version__, "threads": threads, "batch": B,
                      "seq": T, "step_ms": 1e3 * med, "tokens_per_s": B * T / med}))


if __name__ == "__main__":
    main()
