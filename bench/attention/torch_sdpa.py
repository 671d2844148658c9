"""PyTorch's scaled_dot_product_attention, causal, bf16, at issue 5's shapes, per backend (FlashAttention-2
and cuDNN): forward, and forward + backward, median of triton.testing.do_bench (which clears the L2
between runs). One JSON line per (shape, backend). Shapes as (B, H, T, D) on the command line,
e.g. 1,16,16384,64 32,16,256,32; the default is the four of the issue."""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

shapes = [tuple(int(x) for x in a.split(",")) for a in sys.argv[1:]] or [
    (1, 16, 16384, 64), (32, 16, 256, 32), (32, 12, 1024, 64), (8, 16, 4096, 128)]
for B, H, T, D in shapes:
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        row = dict(peer="torch-sdpa", backend=backend.name.lower(), B=B, H=H, T=T, D=D)
        try:
            q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            do = torch.randn_like(q)
            with sdpa_kernel(backend):
                def fwd():
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)

                def fwd_bwd():
                    fwd().backward(do)

                row["fwd_ms"] = do_bench(fwd, warmup=100, rep=500, return_mode="median")
                row["fwd_bwd_ms"] = do_bench(fwd_bwd, warmup=100, rep=500, return_mode="median")
        except Exception as e:  # a backend that does not take the shape is reported, not fatal
            row["error"] = repr(e)[:200]
        print(json.dumps(row), flush=True)
