"""Reference data for the architecture variants (issue 6), computed with PyTorch in float64 on the CPU
and stored as float32 safetensors + a JSON of scalars, one directory per combination:
    python3 reference/make_variant_reference.py tests/data/reference/variants
(Needs torch and safetensors. fp64 on the CPU gives the same numbers on any machine, so this runs
wherever torch is installed; the GPU machine has it too.)

The model is written here from the variant fields' definitions (docs/training.md), independently of
the C++ code: the same conventions as ../shared/reference/make_reference.py (CS336 names, Linear
weights [d_out, d_in], RoPE on interleaved pairs, norm eps 1e-5, mean cross-entropy) plus:
  norm          rmsnorm | layernorm (biased variance; bias unless norm_bias false) | none
  norm_placement pre | post (x = norm(x + f(x))) | double (x = x + post_norm(f(norm(x))))
  block         serial | parallel (x + attn(ln1 x) + ffn(ln1 x))
  ffn           swiglu | geglu | reglu | mlp + activation (gelu exact, relu, silu, relu2)
  bias          biases on every block Linear (not the router, not the LM head)
  position      rope | none | sinusoidal (PE[p,2i] = sin(p·10000^(−2i/C)), PE[p,2i+1] = cos) | learned
  num_kv_heads  query head h reads kv head h // (H / Hkv);  head_dim may differ from C / H
  attention_window W: key j visible from query i iff i − W < j ≤ i;  full_attention_every k: layers
                with (l + 1) % k == 0 see every earlier key; full_attention_position none: no RoPE there
  attn_softcap  c: scores s → c·tanh(s / c) before the mask;  qk_norm: RMSNorm per head on q and k
                before RoPE;  logit_softcap on the final logits;  z_loss: objective + z·mean(lse²)
  moe           softmax router (no bias), top-k by probability (ties: lower index), weights renormalised
                over the selected, + shared experts; capacity ceil(c·N·k/E) per expert, assignments
                taken in token order then slot order, the rest dropped; aux = E·Σ f_e·P_e per layer,
                objective + aux_loss·Σ_layers aux, f_e a count (no gradient).
Each directory holds param.<name>, input.ids, input.targets (int32), out.logits, grad.<name> (of the
objective: cross-entropy + z-loss + MoE aux) and reference.json with the model config (exactly as
scratchlm reads it), the batch shape, "loss" (the cross-entropy), "objective", and for MoE "moe_aux"
(per layer) and "expert_tokens" (assignments per expert per layer, after capacity)."""
import json, math, os, sys, torch
import torch.nn.functional as Fn
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
EPS = 1e-5


def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * g


def norm(x, P, name, c):
    kind = c.get("norm", "rmsnorm")
    if kind == "none":
        return x
    if kind == "rmsnorm":
        return rmsnorm(x, P[name + ".weight"])
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    y = (x - mu) * torch.rsqrt(var + EPS) * P[name + ".weight"]
    return y + P[name + ".bias"] if c.get("norm_bias", True) else y


def linear(x, P, name):
    y = x @ P[name + ".weight"].T
    return y + P[name + ".bias"] if name + ".bias" in P else y


def rope(x, theta):   # x (B, heads, T, d), positions 0 .. T−1
    T, d = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cs, sn = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cs - x2 * sn, x1 * sn + x2 * cs), -1).flatten(-2)


def layer_is_full(c, l):
    if not c.get("attention_window"):
        return True
    k = c.get("full_attention_every", 0)
    return k > 0 and (l + 1) % k == 0


def attention(x, P, pre, c, l):
    B, T, C = x.shape
    H = c["num_heads"]
    Hkv = c.get("num_kv_heads", H)
    Dh = c.get("head_dim", C // H)
    q = linear(x, P, pre + "attn.q_proj").view(B, T, H, Dh).transpose(1, 2)
    k = linear(x, P, pre + "attn.k_proj").view(B, T, Hkv, Dh).transpose(1, 2)
    v = linear(x, P, pre + "attn.v_proj").view(B, T, Hkv, Dh).transpose(1, 2)
    if c.get("qk_norm"):
        q, k = rmsnorm(q, P[pre + "attn.q_norm.weight"]), rmsnorm(k, P[pre + "attn.k_norm.weight"])
    full = layer_is_full(c, l)
    use_rope = c.get("position", "rope") == "rope" and not (full and c.get("full_attention_every") and
                                                             c.get("full_attention_position") == "none")
    if use_rope:
        q, k = rope(q, c.get("rope_theta", 10000.0)), rope(k, c.get("rope_theta", 10000.0))
    k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(Dh)
    if c.get("attn_softcap"):
        s = c["attn_softcap"] * torch.tanh(s / c["attn_softcap"])
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = j <= i
    if not full:
        mask = mask & (i - j < c["attention_window"])
    s = s.masked_fill(~mask, float("-inf"))
    a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H * Dh)
    return linear(a, P, pre + "attn.output_proj")


def act(z, name):
    if name == "gelu":
        return Fn.gelu(z)   # exact (erf)
    if name == "relu":
        return torch.relu(z)
    if name == "silu":
        return Fn.silu(z)
    if name == "relu2":
        return torch.relu(z).pow(2)
    raise ValueError(name)


def ffn_kind(c):
    kind = c.get("ffn", "swiglu")
    a = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}.get(kind, c.get("activation", "gelu"))
    return kind, a


def dense_ffn(x, P, pre, c):
    kind, a = ffn_kind(c)
    h = act(linear(x, P, pre + "w1"), a)
    if kind != "mlp":
        h = h * linear(x, P, pre + "w3")
    return linear(h, P, pre + "w2")


def moe_ffn(x, P, pre, c, stats):
    m = c["moe"]
    E, k, S = m["num_experts"], m["top_k"], m.get("num_shared", 0)
    B, T, C = x.shape
    xf = x.reshape(-1, C)
    N = xf.shape[0]
    probs = torch.softmax(xf @ P[pre + "ffn.router.weight"].T, -1)   # (N, E)
    # top-k with ties to the lower index: stable sort of −p
    order = torch.sort(-probs.detach(), dim=-1, stable=True).indices[:, :k]   # (N, k)
    top = probs.detach().gather(1, order)
    gaps = top[:, -1] - probs.detach().scatter(1, order, -1.0).max(-1).values
    assert gaps.min() > 1e-4, "routing too close to a tie for a reference"
    sel = probs.gather(1, order)
    w = sel / sel.sum(-1, keepdim=True)
    cap = math.ceil(m.get("capacity_factor", 0) * N * k / E) if m.get("capacity_factor", 0) > 0 else N * k
    taken = [0] * E
    keep = torch.zeros(N, k, dtype=torch.bool)
    for n in range(N):              # token order, then slot order
        for j in range(k):
            e = int(order[n, j])
            if taken[e] < cap:
                taken[e] += 1
                keep[n, j] = True
    out = torch.zeros_like(xf)
    for e in range(E):
        rows, slots = torch.nonzero((order == e) & keep, as_tuple=True)
        if len(rows):
            y = dense_ffn(xf[rows], P, f"{pre}ffn.experts.{e}.", c)
            out = out.index_add(0, rows, w[rows, slots][:, None] * y)
    for s in range(S):
        out = out + dense_ffn(xf, P, f"{pre}ffn.shared_experts.{s}.", c)
    assigned = torch.zeros(E)
    for e in range(E):
        assigned[e] = float((order == e).sum())   # f_e counts router choices, before capacity
    aux = E * ((assigned / (N * k)) * probs.mean(0)).sum()
    stats["aux"].append(aux)
    stats["tokens"].append(taken)
    return out.view(B, T, C)


def ffn(x, P, pre, c, stats):
    return moe_ffn(x, P, pre, c, stats) if "moe" in c else dense_ffn(x, P, pre + "ffn.", c)


def block(x, P, l, c, stats):
    pre = f"layers.{l}."
    placement = c.get("norm_placement", "pre")
    if c.get("block") == "parallel":
        h = norm(x, P, pre + "ln1", c)
        return x + attention(h, P, pre, c, l) + ffn(h, P, pre, c, stats)
    if placement == "post":
        x = norm(x + attention(x, P, pre, c, l), P, pre + "ln1", c)
        return norm(x + ffn(x, P, pre, c, stats), P, pre + "ln2", c)
    a = attention(norm(x, P, pre + "ln1", c), P, pre, c, l)
    if placement == "double":
        a = norm(a, P, pre + "post_attn_norm", c)
    x = x + a
    f = ffn(norm(x, P, pre + "ln2", c), P, pre, c, stats)
    if placement == "double":
        f = norm(f, P, pre + "post_ffn_norm", c)
    return x + f


def sinusoidal(T, C):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv = 10000.0 ** (-torch.arange(0, C, 2, dtype=torch.float64) / C)
    pe = torch.zeros(T, C)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * inv), torch.cos(pos * inv)
    return pe


def lm(ids, P, c, stats):
    T = ids.shape[1]
    x = P["token_embeddings.weight"][ids]
    if c.get("position") == "sinusoidal":
        x = x + sinusoidal(T, c["d_model"])
    elif c.get("position") == "learned":
        x = x + P["position_embeddings.weight"][:T]
    for l in range(c["num_layers"]):
        x = block(x, P, l, c, stats)
    x = norm(x, P, "ln_final", c)
    head = P["token_embeddings.weight"] if c.get("tie_embeddings") else P["lm_head.weight"]
    z = x @ head.T
    if c.get("logit_softcap"):
        z = c["logit_softcap"] * torch.tanh(z / c["logit_softcap"])
    return z


def trunc(shape, std, g):
    return torch.nn.init.trunc_normal_(torch.empty(shape), 0.0, std, -3 * std, 3 * std, generator=g)


def init_params(c, g):
    """Every parameter the variant has, named as scratchlm names them, random (norm gains 1 + 0.1·N(0,1)
    and biases 0.1·N(0,1), so that gradients through them are not trivial)."""
    V, C, L, H = c["vocab_size"], c["d_model"], c["num_layers"], c["num_heads"]
    Hkv, Dh = c.get("num_kv_heads", H), c.get("head_dim", C // H)
    bias = c.get("bias", False)
    P = {"token_embeddings.weight": trunc((V, C), 1.0, g)}
    if c.get("position") == "learned":
        P["position_embeddings.weight"] = trunc((c["context_length"], C), 1.0, g)

    def lin(name, o, i, with_bias=bias):
        P[name + ".weight"] = trunc((o, i), math.sqrt(2 / (i + o)), g)
        if with_bias:
            P[name + ".bias"] = 0.1 * torch.randn(o, generator=g)

    def nrm(name, d):
        if c.get("norm", "rmsnorm") == "none":
            return
        P[name + ".weight"] = 1 + 0.1 * torch.randn(d, generator=g)
        if c.get("norm", "rmsnorm") == "layernorm" and c.get("norm_bias", True):
            P[name + ".bias"] = 0.1 * torch.randn(d, generator=g)

    def ffn_params(pre, F):
        lin(pre + "w1", F, C)
        lin(pre + "w2", C, F)
        if c.get("ffn", "swiglu") != "mlp":
            lin(pre + "w3", F, C)

    double = c.get("norm_placement") == "double"
    for l in range(L):
        p = f"layers.{l}."
        nrm(p + "ln1", C)
        lin(p + "attn.q_proj", H * Dh, C)
        lin(p + "attn.k_proj", Hkv * Dh, C)
        lin(p + "attn.v_proj", Hkv * Dh, C)
        lin(p + "attn.output_proj", C, H * Dh)
        if c.get("qk_norm"):
            P[p + "attn.q_norm.weight"] = 1 + 0.1 * torch.randn(Dh, generator=g)
            P[p + "attn.k_norm.weight"] = 1 + 0.1 * torch.randn(Dh, generator=g)
        if double:
            nrm(p + "post_attn_norm", C)
        if c.get("block") != "parallel":
            nrm(p + "ln2", C)
        if "moe" in c:
            m = c["moe"]
            Fe = m.get("d_ff_expert", c["d_ff"])
            lin(p + "ffn.router", m["num_experts"], C, with_bias=False)
            for e in range(m["num_experts"]):
                ffn_params(f"{p}ffn.experts.{e}.", Fe)
            for s in range(m.get("num_shared", 0)):
                ffn_params(f"{p}ffn.shared_experts.{s}.", Fe)
        else:
            ffn_params(p + "ffn.", c["d_ff"])
        if double:
            nrm(p + "post_ffn_norm", C)
    nrm("ln_final", C)
    if not c.get("tie_embeddings"):
        lin("lm_head", V, C, with_bias=False)
    return P


def make(name, model, B, T, seed, out_base):
    g = torch.Generator().manual_seed(seed)
    P = init_params(model, g)
    idx = torch.randint(0, model["vocab_size"], (B, T + 1), generator=g)
    x, y = idx[:, :-1], idx[:, 1:]
    Pg = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    stats = {"aux": [], "tokens": []}
    logits = lm(x, Pg, model, stats)
    flat = logits.reshape(-1, logits.shape[-1])
    ce = Fn.cross_entropy(flat, y.reshape(-1))
    objective = ce
    if model.get("z_loss"):
        objective = objective + model["z_loss"] * torch.logsumexp(flat, -1).pow(2).mean()
    if "moe" in model:
        objective = objective + model["moe"].get("aux_loss", 0.01) * sum(stats["aux"])
    objective.backward()
    T_ = {"param." + k: v for k, v in P.items()}
    T_["input.ids"], T_["input.targets"] = x.to(torch.int32), y.to(torch.int32)
    T_["out.logits"] = logits.detach()
    for k, v in Pg.items():
        T_["grad." + k] = v.grad.detach()
    scalars = {"config": model, "batch": B, "seq": T, "seed": seed, "loss": ce.item(), "objective": objective.item()}
    if "moe" in model:
        scalars["moe_aux"] = [a.item() for a in stats["aux"]]
        scalars["expert_tokens"] = stats["tokens"]
    out = os.path.join(out_base, name)
    os.makedirs(out, exist_ok=True)
    save_file({k: (v.to(torch.float32) if v.dtype == torch.float64 else v).contiguous() for k, v in T_.items()},
              os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(scalars, f, indent=1)
    print(f"{name}: loss {ce.item():.6f} objective {objective.item():.6f}, {len(P)} tensors")


BASE = dict(vocab_size=61, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48, rope_theta=10000.0)
COMBOS = {
    # the four the issue names
    "gqa_window_qknorm_tied": dict(BASE, num_kv_heads=2, attention_window=5, qk_norm=True, tie_embeddings=True),
    "postnorm_layernorm_gelu_mlp": dict(BASE, norm="layernorm", norm_placement="post", ffn="mlp", activation="gelu", d_ff=64),
    "nope_parallel": dict(BASE, position="none", block="parallel"),
    "moe_top2_shared": dict(BASE, d_ff=24, moe=dict(num_experts=4, top_k=2, num_shared=1, d_ff_expert=24, aux_loss=0.01)),
    # and more fields in combination
    "interleaved_mqa_softcaps": dict(BASE, num_layers=3, num_kv_heads=1, head_dim=12, attention_window=4,
                                     full_attention_every=2, full_attention_position="none", attn_softcap=5.0,
                                     logit_softcap=8.0, z_loss=1e-3),
    "learned_double_bias_geglu": dict(BASE, position="learned", norm="layernorm", norm_bias=False,
                                      norm_placement="double", bias=True, ffn="geglu"),
    "sinusoidal_nonorm_relu2": dict(BASE, position="sinusoidal", norm="none", ffn="mlp", activation="relu2"),
    "moe_fine_capacity": dict(BASE, d_ff=16, bias=True, moe=dict(num_experts=8, top_k=2, d_ff_expert=16, aux_loss=0.02,
                                                                capacity_factor=1.0)),
}

if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else "tests/data/reference/variants"
    for i, (name, model) in enumerate(COMBOS.items()):
        make(name, model, B=2, T=12, seed=100 + i, out_base=base)
