# Copied unchanged from ../shared/peers/torch_decode.py (the shared folder does not travel to the GPU machine);
# it imports torch_lm from bench/train_gpu/ (run.sh puts that folder on PYTHONPATH).
"""The strongest plain-PyTorch decoding peer we know how to write: the CS336 model (torch_lm.py) with a
static KV cache, one token per step, the step compiled with torch.compile(mode="reduce-overhead") so it
replays as a CUDA graph (the gpt-fast recipe). Greedy decoding, bf16 weights, random weights.
Usage: python3 torch_decode.py [--configs ts-17M,gpt2s-124M] [--batches 1,32] [--new-tokens 256]
Prints one JSON line per (config, batch): decode tokens/s (excluding prefill and compilation)."""
import argparse, json, math, time, torch, torch.nn.functional as F
from torch_lm import CONFIGS, LM, rope_cache

class Decoder(torch.nn.Module):
    """One decoding step over a static KV cache held as module buffers (so CUDA graphs can replay it)."""
    def __init__(s, m, B, Tmax):
        super().__init__()
        s.m, s.B, s.Tmax = m, B, Tmax
        L, h, dh = len(m.blocks), m.blocks[0].h, m.dh
        s.register_buffer("kc", torch.zeros(L, B, h, Tmax, dh, device="cuda", dtype=torch.bfloat16))
        s.register_buffer("vc", torch.zeros(L, B, h, Tmax, dh, device="cuda", dtype=torch.bfloat16))
        cos, sin = rope_cache(Tmax, dh, m.theta, "cuda")
        s.register_buffer("cos", cos.to(torch.bfloat16)); s.register_buffer("sin", sin.to(torch.bfloat16))
        s.register_buffer("ar", torch.arange(Tmax, device="cuda"))
    @staticmethod
    def rot(x, c, s_):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * c - x2 * s_, x1 * s_ + x2 * c), -1).flatten(-2)
    def forward(s, tok, pos):  # tok (B,1) int64, pos (1,) int64
        m, B = s.m, s.B; h, dh = m.blocks[0].h, m.dh
        x = m.emb(tok)
        c = s.cos.index_select(0, pos).view(1, 1, 1, -1); sn = s.sin.index_select(0, pos).view(1, 1, 1, -1)
        mask = (s.ar <= pos).view(1, 1, 1, s.Tmax)
        for i, b in enumerate(m.blocks):
            y = b.n1(x)
            q = s.rot(b.q(y).view(B, 1, h, dh).transpose(1, 2), c, sn)
            k = s.rot(b.k(y).view(B, 1, h, dh).transpose(1, 2), c, sn)
            v = b.v(y).view(B, 1, h, dh).transpose(1, 2)
            s.kc[i].index_copy_(2, pos, k); s.vc[i].index_copy_(2, pos, v)
            a = F.scaled_dot_product_attention(q, s.kc[i], s.vc[i], attn_mask=mask).transpose(1, 2).reshape(B, 1, -1)
            x = x + b.o(a)
            y = b.n2(x); x = x + b.w2(F.silu(b.w1(y)) * b.w3(y))
        return m.head(m.nf(x)).argmax(-1)

def run(name, B, new, prompt=16):
    c = CONFIGS[name]; torch.manual_seed(0)
    m = LM(c["V"], c["T"], c["d"], c["L"], c["h"], c["dff"]).cuda().to(torch.bfloat16).eval()
    Tmax = prompt + new + 8
    step = torch.compile(Decoder(m, B, Tmax), mode="reduce-overhead", fullgraph=True)
    toks = torch.randint(0, c["V"], (B, prompt), device="cuda")
    def generate():
        t = toks[:, :1]
        for p in range(prompt):  # prefill token by token (not timed separately; small)
            t = step(toks[:, p:p + 1].clone(), torch.tensor([p], device="cuda")).clone()
        out = [t]
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for p in range(prompt, prompt + new):
            t = step(t, torch.tensor([p], device="cuda")).clone(); out.append(t)
        torch.cuda.synchronize(); return time.perf_counter() - t0, torch.cat(out, 1)
    generate(); generate()  # compile and warm the graphs
    dt, out = generate()
    print(json.dumps(dict(peer="torch-compiled-static-cache", config=name, batch=B, new_tokens=new * B,
                          seconds=round(dt, 4), tokens_per_s=round(new * B / dt, 1))), flush=True)

if __name__ == "__main__":
    ap = argparse.ArgumentParser(); ap.add_argument("--configs", default="ts-17M,gpt2s-124M")
    ap.add_argument("--batches", default="1,32"); ap.add_argument("--new-tokens", type=int, default=256)
    a = ap.parse_args()
    with torch.inference_mode():
        for n in a.configs.split(","):
            for B in a.batches.split(","): run(n, int(B), a.new_tokens)
