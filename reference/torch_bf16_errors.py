"""PyTorch's own bf16 error, the yardstick of scratchlm's GPU tests (issue: our bf16 error against an
fp64 reference may be at most about twice PyTorch's for the same op). Run on the GPU machine:
    python3 reference/torch_bf16_errors.py tests/data/reference/lm-small
Reads the fp64-computed reference (reference.safetensors) and writes, beside it:
  torch_bf16_errors.json      ‖torch_bf16 − ref‖ / ‖ref‖ for each per-op output and gradient, and for
                              the whole model under autocast (logits, loss, every parameter gradient);
  attention_cases.safetensors random causal-attention cases at head dims 32, 64, 128 and ragged T,
                              inputs rounded to bf16 (both sides read the same values), with torch's
                              SDPA bf16 errors against its own fp64 result in the JSON.
Conventions as ../shared/reference/make_reference.py (CS336 names, interleaved RoPE, eps 1e-5)."""
import json, math, os, sys, torch, torch.nn.functional as F
from safetensors.torch import load_file, save_file

dev = "cuda"
bf = torch.bfloat16

def rel(a, ref):
    a, ref = a.double().cpu(), ref.double().cpu()
    return ((a - ref).norm() / ref.norm()).item()

def rmsnorm(x, g, eps=1e-5):   # as the PyTorch peer (torch_lm.py): statistics in fp32
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * g

def rope(x, pos, theta):
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = pos.float()[:, None] * inv[None, :]
    c, s = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(-2)

def main(ref_dir):
    R = load_file(os.path.join(ref_dir, "reference.safetensors"))
    js = json.load(open(os.path.join(ref_dir, "reference.json")))
    c = js["config"]
    out = {}
    g = lambda k: R[k].to(dev)
    # per-op, bf16 inputs and outputs as autocast runs them
    x = g("rmsnorm.x").to(bf).requires_grad_(True); gain = g("rmsnorm.gain").to(bf).requires_grad_(True)
    o = rmsnorm(x, gain); o.backward(g("rmsnorm.dout").to(bf))
    out.update({"rmsnorm.out": rel(o, R["rmsnorm.out"]), "rmsnorm.dx": rel(x.grad, R["rmsnorm.dx"]),
                "rmsnorm.dgain": rel(gain.grad, R["rmsnorm.dgain"])})
    x = g("rope.x").to(bf).requires_grad_(True)
    o = rope(x, g("rope.positions"), c["rope_theta"]); o.backward(g("rope.dout").to(bf))
    out.update({"rope.out": rel(o, R["rope.out"]), "rope.dx": rel(x.grad, R["rope.dx"])})
    q, k, v = (g(f"attn.{n}").to(bf).requires_grad_(True) for n in "qkv")
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True); o.backward(g("attn.dout").to(bf))
    out.update({"attn.out": rel(o, R["attn.out"]), "attn.dq": rel(q.grad, R["attn.dq"]),
                "attn.dk": rel(k.grad, R["attn.dk"]), "attn.dv": rel(v.grad, R["attn.dv"])})
    lg = g("xent.logits").to(bf).requires_grad_(True)
    ce = F.cross_entropy(lg.float(), g("xent.targets").long()); ce.backward()
    out.update({"xent.loss": abs(ce.item() - js["xent.loss"]) / abs(js["xent.loss"]),
                "xent.dlogits": rel(lg.grad, R["xent.dlogits"])})
    # the whole model under autocast, fp32 master weights (as torch_lm.py trains)
    P = {k[6:]: v.to(dev).clone().requires_grad_(True) for k, v in R.items() if k.startswith("param.")}
    ids, tg = g("input.ids").long(), g("input.targets").long()
    with torch.autocast("cuda", dtype=bf):
        B, T = ids.shape; D = c["d_model"]; H = c["num_heads"]; pos = torch.arange(T, device=dev)
        xx = P["token_embeddings.weight"][ids]
        for i in range(c["num_layers"]):
            p = f"layers.{i}."
            y = rmsnorm(xx, P[p + "ln1.weight"])
            def proj(n): return F.linear(y, P[p + f"attn.{n}_proj.weight"]).view(B, T, H, -1).transpose(1, 2)
            qq, kk, vv = proj("q"), proj("k"), proj("v")
            qq, kk = rope(qq, pos, c["rope_theta"]), rope(kk, pos, c["rope_theta"])
            a = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True).transpose(1, 2).reshape(B, T, D)
            xx = xx + F.linear(a, P[p + "attn.output_proj.weight"])
            y = rmsnorm(xx, P[p + "ln2.weight"])
            xx = xx + F.linear(F.silu(F.linear(y, P[p + "ffn.w1.weight"])) * F.linear(y, P[p + "ffn.w3.weight"]),
                               P[p + "ffn.w2.weight"])
        logits = F.linear(rmsnorm(xx, P["ln_final.weight"]), P["lm_head.weight"])
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tg.reshape(-1))
    loss.backward()
    out["model.logits"] = rel(logits, R["out.logits"])
    out["model.loss"] = abs(loss.item() - js["loss"]) / abs(js["loss"])
    for k, v in P.items(): out["model.grad." + k] = rel(v.grad, R["grad." + k])
    # attention cases at the tensor-core head dims, ragged T (B, H, T, D)
    gen = torch.Generator().manual_seed(1234)
    cases = {}
    for n, (B_, H_, T_, D_) in enumerate([(2, 3, 77, 32), (1, 3, 130, 64), (3, 1, 65, 128), (1, 2, 200, 64)]):
        t = {nm: torch.randn(B_, H_, T_, D_, generator=gen).to(bf).float() for nm in ("q", "k", "v", "dout")}
        for nm, val in t.items(): cases[f"case{n}.{nm}"] = val.to(bf)   # exact: the values are bf16
        q64, k64, v64 = (t[nm].double().requires_grad_(True) for nm in "qkv")
        s = q64 @ k64.transpose(-1, -2) / math.sqrt(D_)
        s = s.masked_fill(~torch.tril(torch.ones(T_, T_, dtype=torch.bool)), float("-inf"))
        o64 = torch.softmax(s, -1) @ v64; o64.backward(t["dout"].double())
        qb, kb, vb = (t[nm].to(dev, bf).requires_grad_(True) for nm in "qkv")
        ob = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True); ob.backward(t["dout"].to(dev, bf))
        out.update({f"case{n}.out": rel(ob, o64), f"case{n}.dq": rel(qb.grad, q64.grad),
                    f"case{n}.dk": rel(kb.grad, k64.grad), f"case{n}.dv": rel(vb.grad, v64.grad)})
    save_file({k: v.contiguous() for k, v in cases.items()}, os.path.join(ref_dir, "attention_cases.safetensors"))
    out["torch"] = torch.__version__; out["gpu"] = torch.cuda.get_device_name()
    json.dump(out, open(os.path.join(ref_dir, "torch_bf16_errors.json"), "w"), indent=1)
    print(json.dumps(out, indent=1))

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/reference/lm-small")
