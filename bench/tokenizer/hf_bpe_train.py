"""HF tokenizers BpeTrainer timing (byte-level, vocab N, <|endoftext|> special) on a text file.

shared/peers/hf_bpe_train.py as it is, plus an optional third argument: a path where the trained
tokenizer.json is saved after the timed part (for the compression comparison)."""
import json, os, sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
path, vocab = sys.argv[1], int(sys.argv[2])
tok = Tokenizer(models.BPE()); tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
t0 = time.perf_counter(); tok.train([path], tr); dt = time.perf_counter() - t0
import resource
print(json.dumps({"peer": "hf-tokenizers", "file": os.path.basename(path), "bytes": os.path.getsize(path), "vocab": vocab,
                  "threads": os.environ.get("RAYON_NUM_THREADS", str(os.cpu_count())), "seconds": round(dt, 2),
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}), flush=True)
if len(sys.argv) > 3:
    tok.save(sys.argv[3])
