# The Hugging Face generate part of ../shared/peers/torch_attention_generate.py, unchanged in what it
# measures (the shared folder does not travel to the GPU machine), with --configs and --batches:
# LlamaForCausalLM of the same shape (random weights, untied head, RMSNorm, RoPE, SwiGLU), bf16,
# greedy, KV cache, 16-token prompts, 256 new tokens; the whole generate call timed (prefill included).
# Prints one JSON line per (config, batch).
import argparse, json, time, torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {"ts-17M": dict(vocab_size=10000, hidden_size=512, intermediate_size=1344, num_hidden_layers=4, num_attention_heads=16),
          "gpt2s-124M": dict(vocab_size=50304, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12)}

ap = argparse.ArgumentParser(); ap.add_argument("--configs", default="ts-17M,gpt2s-124M")
ap.add_argument("--batches", default="1,32"); ap.add_argument("--new-tokens", type=int, default=256)
a = ap.parse_args()
for name in a.configs.split(","):
    cfg = SHAPES[name]
    m = LlamaForCausalLM(LlamaConfig(**cfg, max_position_embeddings=1024, tie_word_embeddings=False)).cuda().to(torch.bfloat16).eval()
    for B in (int(b) for b in a.batches.split(",")):
        ids = torch.randint(0, cfg["vocab_size"], (B, 16), device="cuda")
        with torch.no_grad():
            m.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
            torch.cuda.synchronize(); t0 = time.perf_counter()
            out = m.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
            torch.cuda.synchronize(); dt = time.perf_counter() - t0
        n = (out.shape[1] - 16) * B
        print(json.dumps(dict(peer="hf-generate", config=name, batch=B, new_tokens=n, seconds=round(dt, 3),
                              tokens_per_s=round(n / dt, 1))), flush=True)
