"""Tokenizer benchmarks: scratchlm against Hugging Face tokenizers (BPE training) and tiktoken (GPT-2 encoding).

Run through bench/tokenizer/run.sh, which prepares the venv, the program and the corpus. Every figure is
printed and also appended as a JSON line to OUT/tokenizer-results.jsonl (the file is rewritten each run).

Timing conventions
- Training: wall time and peak RSS of each whole process (os.wait4), the HF side being hf_bpe_train.py
  here (shared/peers/hf_bpe_train.py, saving its tokenizer after the timed part); the HF ratio uses HF's
  in-process train() time (without interpreter start-up), so it is conservative for scratchlm.
- Encoding: tiktoken timed in-process around encode_ordinary / encode_ordinary_batch (text already in
  memory, chunk splitting excluded); scratchlm timed as the wall time of the `tokenize` process, which
  includes reading the slice and writing the token file, and also by its own "encoded ... MB/s" line.
  MB = 10^6 bytes.
"""
import argparse
import array
import contextlib
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

import tiktoken
from tokenizers import Tokenizer

# tiktoken_ext.openai_public's GPT-2 pattern (its loader downloads the files; we build the same ranks locally).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MB = 1e6


class Results:
    """Records each result as a JSON line."""

    def __init__(self, path):
        self.file = open(path, "w")

    def add(self, kind, **fields):
        record = {"kind": kind, **fields}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        return record


def log(msg):
    print(msg, flush=True)


def busy_cpu_s():
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class Noise:
    """CPU seconds used by other processes (other engineers' compilers) while something is measured."""

    def __init__(self):
        self.samples = []
        self.max_wait_s = 0.0

    def wait_quiet(self, window_s=1.0, max_busy=0.1):
        """Waits (up to max_wait_s) for a second in which other processes use under 10% of a core."""
        deadline = time.monotonic() + self.max_wait_s
        while time.monotonic() < deadline:
            busy0, self0 = busy_cpu_s(), sum(os.times()[:2])
            time.sleep(window_s)
            if busy_cpu_s() - busy0 - (sum(os.times()[:2]) - self0) < max_busy * window_s:
                return

    def __enter__(self):
        self.wait_quiet()
        self.busy0, self.self0 = busy_cpu_s(), sum(os.times()[:2])
        return self

    def stop(self, child_cpu_s=0.0):
        own = sum(os.times()[:2]) - self.self0 + child_cpu_s
        self.other = max(0.0, busy_cpu_s() - self.busy0 - own)
        self.samples.append(self.other)
        return round(self.other, 2)

    def __exit__(self, *exc):
        return False


NOISE = Noise()


def run_measured(cmd, stdout_path, stderr_path, env=None, measure=True):
    """Runs cmd; returns (wall seconds, peak RSS in MB, CPU seconds of other processes meanwhile) of that process alone."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err, NOISE if measure else contextlib.nullcontext():
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        other = NOISE.stop(usage.ru_utime + usage.ru_stime) if measure else None
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n" + open(stderr_path, errors="replace").read()[-3000:])
    return wall, usage.ru_maxrss / 1024, other  # ru_maxrss is in KiB on Linux


def bytes_to_unicode():
    """GPT-2's byte -> printable character mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiktoken_gpt2(vocab_json):
    """tiktoken's gpt2 encoding, built from GPT-2's vocab.json (ids = ranks, as in tiktoken_ext.openai_public)."""
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.load(open(vocab_json, encoding="utf-8"))
    ranks = {bytes(decoder[c] for c in tok): i for tok, i in vocab.items() if tok != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": vocab["<|endoftext|>"]}, explicit_n_vocab=50257)


def check_tiktoken_reference(enc, shared):
    """Our locally built encoding must reproduce the stored tiktoken gpt2 ids (shared/reference/tiktoken-gpt2)."""
    checked = 0
    for ref in sorted(glob.glob(os.path.join(shared, "reference/tiktoken-gpt2/*.json"))):
        data = json.load(open(ref))
        text_path = next((p for p in (os.path.join(shared, "cs336", data["file"]), os.path.join(shared, "reference/texts", data["file"]))
                          if os.path.exists(p)), None)
        if text_path is None:
            continue
        text = open(text_path, "rb").read().decode("utf-8")
        if enc.encode_ordinary(text) != data["ordinary"]:
            sys.exit(f"local tiktoken gpt2 encoding differs from the stored tiktoken ids for {data['file']}")
        checked += 1
    return checked


def read_text(path):
    return open(path, "rb").read().decode("utf-8")  # bytes as they are: no newline translation


def write_slice(corpus, path, limit):
    """The first `limit` bytes of corpus at most, cut after the last newline followed by a printable ASCII character
    (a GPT-2 pre-token boundary, so the slice is also tokenized as in the whole corpus)."""
    with open(corpus, "rb") as f:
        data = f.read(limit + 4096)
    if len(data) > limit:
        cut = limit
        while not (data[cut - 1] == 0x0A and 0x21 <= data[cut] <= 0x7E):
            cut -= 1
        data = data[:cut]
    if not (os.path.exists(path) and os.path.getsize(path) == len(data) and open(path, "rb").read() == data):
        with open(path, "wb") as f:
            f.write(data)
    return len(data)


def split_chunks(text, target_chars):
    """Chunks of about target_chars, split after a newline followed by a non-space (a GPT-2 pre-token boundary),
    so the concatenated ids equal those of the whole text."""
    chunks, start = [], 0
    boundary = re.compile(r"\n(?=\S)")
    while start < len(text):
        m = boundary.search(text, start + target_chars) if start + target_chars < len(text) else None
        end = m.end() if m else len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


def read_token_file(path):
    meta = json.load(open(path + ".json"))
    ids = array.array({"uint16": "H", "uint32": "I"}[meta["dtype"]])
    with open(path, "rb") as f:
        ids.frombytes(f.read())
    if sys.byteorder != "little":
        ids.byteswap()
    return ids, meta


def token_bytes(vocab_json):
    """id -> bytes of each token of a GPT-2-format vocab.json (special tokens as their own text)."""
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.load(open(vocab_json, encoding="utf-8"))
    return {i: bytes(decoder[c] for c in tok) if all(c in decoder for c in tok) else tok.encode() for tok, i in vocab.items()}


def first_difference(ours, peer):
    for i, (a, b) in enumerate(zip(ours, peer)):
        if a != b:
            return i
    return min(len(ours), len(peer)) if len(ours) != len(peer) else None


def compare_ids(ours, peer, pieces, peer_name, context=4):
    """IDENTICAL, or a description of the first difference (index, byte offset, ids and token bytes around it)."""
    ours, peer = array.array("q", ours), array.array("q", peer)
    if ours == peer:
        return "IDENTICAL", None
    i = first_difference(ours, peer)
    lo, hi = max(0, i - context), i + context + 1
    show = lambda ids: " ".join(f"{t}:{pieces.get(t)!r}" for t in ids[lo:hi])
    byte_offset = sum(len(pieces.get(t, b"")) for t in ours[:i])
    detail = {"index": i, "byte_offset": byte_offset, "ours_len": len(ours), "peer_len": len(peer),
              "ours": list(ours[lo:hi]), "peer": list(peer[lo:hi])}
    text = (f"DIFFERENT at token {i}, byte {byte_offset} of the text (ours {len(ours)} tokens, {peer_name} {len(peer)})\n"
            f"      ours:   {show(ours)}\n      {peer_name}: {show(peer)}")
    return text, detail


def machine_info():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), platform.processor())
    mem_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(mem_kb / 2**20, 1)}


def git_state(repo):
    head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "src", "CMakeLists.txt"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty-src" if dirty else "")


def med(values):
    return statistics.median(values)


def bench_training(a, res):
    log(f"\n== BPE training: vocab {a.vocab_size}, <|endoftext|>, {a.threads} threads, {a.reps} repetitions ==")
    hf_env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="true")
    ours_dir = os.path.join(a.out, "tok-ours")
    rows = {"scratchlm": [], "hf": []}
    for rep in range(a.reps):
        wall, rss, other = run_measured([a.scratchlm, "tokenizer", "train", "--input", a.corpus, "--vocab-size", str(a.vocab_size),
                                  "--special-token", "<|endoftext|>", "--threads", str(a.threads), "--out", ours_dir],
                                 os.path.join(a.out, "train-ours.out"), os.path.join(a.out, "train-ours.err"))
        rows["scratchlm"].append(res.add("train", impl="scratchlm", rep=rep, wall_s=round(wall, 3), max_rss_mb=round(rss, 1),
                                         other_cpu_s=other))
        log(f"  rep {rep}: scratchlm   {wall:8.2f} s  {rss:8.1f} MB")
        wall, rss, other = run_measured([sys.executable, a.hf_script, a.corpus, str(a.vocab_size), os.path.join(a.out, "tok-hf.json")],
                                 os.path.join(a.out, "train-hf.out"), os.path.join(a.out, "train-hf.err"), env=hf_env)
        inner = json.loads(open(os.path.join(a.out, "train-hf.out")).read().strip().splitlines()[-1])["seconds"]
        rows["hf"].append(res.add("train", impl="hf-tokenizers", rep=rep, wall_s=round(wall, 3), train_s=inner,
                                  max_rss_mb=round(rss, 1), other_cpu_s=other))
        log(f"  rep {rep}: HF tokenizers {wall:6.2f} s  {rss:8.1f} MB  (train() alone {inner:.2f} s)")
    ours_t, ours_m = med([r["wall_s"] for r in rows["scratchlm"]]), med([r["max_rss_mb"] for r in rows["scratchlm"]])
    hf_t, hf_w, hf_m = (med([r["train_s"] for r in rows["hf"]]), med([r["wall_s"] for r in rows["hf"]]),
                        med([r["max_rss_mb"] for r in rows["hf"]]))
    return res.add("train_summary", threads=a.threads, reps=a.reps, corpus_bytes=os.path.getsize(a.corpus),
                   ours_wall_s=ours_t, ours_max_rss_mb=ours_m, hf_train_s=hf_t, hf_wall_s=hf_w, hf_max_rss_mb=hf_m,
                   time_ratio_hf_over_ours=round(hf_t / ours_t, 2), rss_ratio_hf_over_ours=round(hf_m / ours_m, 2))


def bench_encoding(a, res, enc, slice_path, text):
    """Each repetition runs the four contenders back to back (tiktoken 1 and N threads, scratchlm 1 and N threads),
    so that slow phases of this shared machine hit all of them alike."""
    n_bytes = len(text.encode("utf-8"))
    log(f"\n== GPT-2 encoding of {n_bytes / MB:.1f} MB, {a.reps} repetitions, interleaved (MB = 10^6 bytes) ==")
    gpt2_dir = os.path.join(a.out, "gpt2")
    os.makedirs(gpt2_dir, exist_ok=True)
    for src, dst in (("gpt2_vocab.json", "vocab.json"), ("gpt2_merges.txt", "merges.txt")):
        data = open(os.path.join(a.shared, "cs336", src), "rb").read()
        if not os.path.exists(os.path.join(gpt2_dir, dst)) or open(os.path.join(gpt2_dir, dst), "rb").read() != data:
            open(os.path.join(gpt2_dir, dst), "wb").write(data)
    chunks = split_chunks(text, 1 << 20)
    counts = sorted({1, a.threads})
    runs = {(impl, t): [] for impl in ("tiktoken", "scratchlm") for t in counts}  # MB/s
    selfs = {t: [] for t in counts}  # scratchlm's own "encoded ... MB/s"
    ids = None

    def tiktoken_run(rep, threads):
        with NOISE:
            t0 = time.perf_counter()
            out = enc.encode_ordinary(text) if threads == 1 else enc.encode_ordinary_batch(chunks, num_threads=threads)
            mb_s = n_bytes / MB / (time.perf_counter() - t0)
            other = NOISE.stop()
        runs["tiktoken", threads].append(mb_s)
        res.add("encode", impl="tiktoken", threads=threads, rep=rep, mb_s=round(mb_s, 2), other_cpu_s=other,
                mode="encode_ordinary" if threads == 1 else f"encode_ordinary_batch ({len(chunks)} chunks)")
        log(f"  rep {rep}: tiktoken  {threads} thread(s) {mb_s:7.2f} MB/s" + (f"  ({len(chunks)} chunks)" if threads > 1 else ""))
        return out

    def scratchlm_run(rep, threads):
        err = os.path.join(a.out, f"tokenize-t{threads}.err")
        wall, _, other = run_measured([a.scratchlm, "tokenize", "--tokenizer", gpt2_dir, "--input", slice_path,
                                       "--out", os.path.join(a.out, f"slice-gpt2-t{threads}.bin"), "--threads", str(threads)],
                                      os.path.join(a.out, f"tokenize-t{threads}.out"), err)
        m = re.search(r"encoded .* ([\d.]+) MB/s", open(err, errors="replace").read())
        runs["scratchlm", threads].append(n_bytes / MB / wall)
        selfs[threads].append(float(m.group(1)) if m else float("nan"))
        res.add("encode", impl="scratchlm", threads=threads, rep=rep, mb_s_process=round(runs["scratchlm", threads][-1], 2),
                mb_s_self=selfs[threads][-1], other_cpu_s=other)
        log(f"  rep {rep}: scratchlm {threads} thread(s) {runs['scratchlm', threads][-1]:7.2f} MB/s process wall"
            f"  ({selfs[threads][-1]} MB/s own line)")

    empty = os.path.join(a.out, "empty.txt")
    open(empty, "wb").close()
    startup = med([run_measured([a.scratchlm, "tokenize", "--tokenizer", gpt2_dir, "--input", empty, "--out", empty + ".bin"],
                                empty + ".out", empty + ".err")[0] for _ in range(3)])
    log(f"  fixed costs: scratchlm tokenize of an empty file {startup:.2f} s (process start, loading GPT-2's vocab.json and "
        f"merges.txt); tiktoken Encoding built in {a.tiktoken_load_s:.2f} s (not in its MB/s)")
    for rep in range(a.reps):
        for threads in counts:
            out = tiktoken_run(rep, threads)
            if threads > 1:
                out = [t for chunk in out for t in chunk]
            if ids is None:
                ids = out
            elif rep == 0 and out != ids:
                sys.exit("tiktoken: encode_ordinary_batch over the chunks differs from encode_ordinary of the whole text")
            del out
        for threads in counts:
            scratchlm_run(rep, threads)

    identity = {}
    gpt2_pieces = token_bytes(os.path.join(gpt2_dir, "vocab.json"))
    for threads in counts:
        got, _ = read_token_file(os.path.join(a.out, f"slice-gpt2-t{threads}.bin"))
        identity[threads], detail = compare_ids(got, ids, gpt2_pieces, "tiktoken")
        res.add("encode_identity", threads=threads, tokens=len(got), result=identity[threads].splitlines()[0], detail=detail)
        log(f"  ids scratchlm ({threads} thread(s)) vs tiktoken: {identity[threads]}")
    m = {k: med(v) for k, v in runs.items()}
    ms = {t: med(v) for t, v in selfs.items()}
    n = a.threads
    return res.add(
        "encode_summary", slice_bytes=n_bytes, reps=a.reps, threads=n, gpt2_tokens=len(ids),
        ours_startup_s=round(startup, 3), tiktoken_load_s=round(a.tiktoken_load_s, 3),
        ours_1_mb_s=round(m["scratchlm", 1], 2), ours_1_self_mb_s=round(ms[1], 1), ours_n_mb_s=round(m["scratchlm", n], 2),
        ours_n_self_mb_s=round(ms[n], 1), tiktoken_1_mb_s=round(m["tiktoken", 1], 2), tiktoken_n_mb_s=round(m["tiktoken", n], 2),
        ratio_1=round(m["scratchlm", 1] / m["tiktoken", 1], 2), ratio_n=round(m["scratchlm", n] / m["tiktoken", n], 2),
        ratio_1_self=round(ms[1] / m["tiktoken", 1], 2), ratio_n_self=round(ms[n] / m["tiktoken", n], 2),
        scaling_ours=round(m["scratchlm", n] / m["scratchlm", 1], 2), scaling_tiktoken=round(m["tiktoken", n] / m["tiktoken", 1], 2),
        identical={str(k): v.startswith("IDENTICAL") for k, v in identity.items()}), len(ids)


def bench_compression(a, res, slice_path, n_bytes, gpt2_tokens):
    bin_path = os.path.join(a.out, "slice-ours32k.bin")
    run_measured([a.scratchlm, "tokenize", "--tokenizer", os.path.join(a.out, "tok-ours"), "--input", slice_path,
                  "--out", bin_path, "--threads", str(a.threads)],
                 os.path.join(a.out, "tokenize-ours32k.out"), os.path.join(a.out, "tokenize-ours32k.err"), measure=False)
    meta = json.load(open(bin_path + ".json"))
    return res.add("compression", slice_bytes=n_bytes, ours32k_tokens=meta["token_count"],
                   ours32k_bytes_per_token=round(n_bytes / meta["token_count"], 3), gpt2_tokens=gpt2_tokens,
                   gpt2_bytes_per_token=round(n_bytes / gpt2_tokens, 3), ours32k_special_tokens=meta["tokenizer"]["special_tokens"])


def bench_interop(a, res, enc):
    log("\n== Hugging Face interop: tokenizers.Tokenizer.from_file(tok-ours/tokenizer.json) vs `scratchlm tokenizer encode` ==")
    tok_dir = os.path.join(a.out, "tok-ours")
    hf = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    pieces = token_bytes(os.path.join(tok_dir, "vocab.json"))
    head = os.path.join(a.out, f"interop-{a.interop_mb}MB.txt")
    write_slice(a.corpus, head, int(a.interop_mb * MB))
    texts = ([head] + sorted(glob.glob(os.path.join(a.shared, "reference/texts/*.txt")))
             + [p for p in sorted(glob.glob(os.path.join(a.shared, "cs336/*.txt"))) if "merges" not in p])  # <|endoftext|> edge cases
    all_ok = True
    for path in texts:
        out = os.path.join(a.out, "interop.ids")
        run_measured([a.scratchlm, "tokenizer", "encode", "--tokenizer", tok_dir, "--input", path, "--threads", str(a.threads)],
                     out, os.path.join(a.out, "interop.err"), measure=False)
        ours = [int(x) for x in open(out).read().split()]
        peer = hf.encode(read_text(path)).ids
        verdict, detail = compare_ids(ours, peer, pieces, "HF")
        all_ok &= detail is None
        res.add("interop", text=os.path.basename(path), bytes=os.path.getsize(path), tokens=len(ours),
                result=verdict.splitlines()[0], detail=detail)
        log(f"  {os.path.basename(path)} ({os.path.getsize(path) / MB:.1f} MB, {len(ours)} tokens): {verdict}")
        if path == head:
            head_tokens = len(ours)
    hf_json = os.path.join(a.out, "tok-hf.json")
    if os.path.exists(hf_json):  # the quality of the two trainers' vocabularies, on the same text
        text = read_text(head)
        n = len(text.encode("utf-8"))
        comp = res.add("compression_head", text=os.path.basename(head), bytes=n,
                       ours32k_bytes_per_token=round(n / head_tokens, 3),
                       hf32k_bytes_per_token=round(n / len(Tokenizer.from_file(hf_json).encode(text).ids), 3),
                       gpt2_bytes_per_token=round(n / len(enc.encode_ordinary(text)), 3))
        log(f"  compression on {comp['text']}: scratchlm-trained 32k {comp['ours32k_bytes_per_token']}, HF-trained 32k "
            f"{comp['hf32k_bytes_per_token']}, GPT-2 {comp['gpt2_bytes_per_token']} bytes/token")
    return all_ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--slice-mb", type=float, default=100, help="encoding slice: the corpus's first MB (10^6 bytes)")
    p.add_argument("--interop-mb", type=float, default=5)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--scratchlm", required=True)
    p.add_argument("--shared", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--command", default="", help="the command line to record")
    p.add_argument("--quiet-wait", type=float, default=120,
                   help="before each measurement, wait up to this many seconds for other processes to go idle")
    p.add_argument("--skip-train", action="store_true", help="reuse OUT/tok-ours from an earlier run")
    a = p.parse_args()
    a.hf_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_bpe_train.py")  # shared/peers' + saving
    os.makedirs(a.out, exist_ok=True)
    NOISE.max_wait_s = a.quiet_wait
    res = Results(os.path.join(a.out, "tokenizer-results.jsonl"))

    versions = {n: importlib.metadata.version(n) for n in ("tiktoken", "tokenizers")}
    meta = res.add("meta", date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   command=a.command, scratchlm_commit=git_state(a.repo), corpus=a.corpus,
                   corpus_bytes=os.path.getsize(a.corpus), threads=a.threads, reps=a.reps, python=platform.python_version(),
                   **versions, **machine_info())
    log(json.dumps(meta))

    t0 = time.perf_counter()
    enc = tiktoken_gpt2(os.path.join(a.shared, "cs336", "gpt2_vocab.json"))
    a.tiktoken_load_s = time.perf_counter() - t0
    log(f"tiktoken gpt2 built locally from shared/cs336/gpt2_vocab.json: equals the stored tiktoken ids on "
        f"{check_tiktoken_reference(enc, a.shared)} reference texts")

    train = bench_training(a, res) if not a.skip_train else None
    slice_path = os.path.join(a.out, f"slice-{a.slice_mb:g}MB.txt")
    n_bytes = write_slice(a.corpus, slice_path, int(a.slice_mb * MB))
    text = read_text(slice_path)
    encode, gpt2_tokens = bench_encoding(a, res, enc, slice_path, text)
    del text
    comp = bench_compression(a, res, slice_path, n_bytes, gpt2_tokens)
    interop_ok = bench_interop(a, res, enc)

    n = a.threads
    log(f"\n== Summary: medians of {a.reps} ({meta['cpu']}, {meta['cores']} cores; tiktoken {versions['tiktoken']}, "
        f"tokenizers {versions['tokenizers']}) ==")
    if train:
        log(f"training {train['corpus_bytes'] / MB:.0f} MB, vocab {a.vocab_size}, {n} threads:")
        log(f"  wall     scratchlm {train['ours_wall_s']:.2f} s   HF {train['hf_train_s']:.2f} s (process {train['hf_wall_s']:.2f} s)"
            f"   HF/ours = {train['time_ratio_hf_over_ours']}x")
        log(f"  peak RSS scratchlm {train['ours_max_rss_mb']:.0f} MB   HF {train['hf_max_rss_mb']:.0f} MB"
            f"   HF/ours = {train['rss_ratio_hf_over_ours']}x")
    log(f"encoding GPT-2, {encode['slice_bytes'] / MB:.0f} MB slice (scratchlm: process wall incl. file I/O | own line):")
    log(f"  1 thread   scratchlm {encode['ours_1_mb_s']:.2f} | {encode['ours_1_self_mb_s']} MB/s   tiktoken {encode['tiktoken_1_mb_s']:.2f} MB/s"
        f"   ours/tiktoken = {encode['ratio_1']}x | {encode['ratio_1_self']}x")
    log(f"  {n} threads  scratchlm {encode['ours_n_mb_s']:.2f} | {encode['ours_n_self_mb_s']} MB/s   tiktoken {encode['tiktoken_n_mb_s']:.2f} MB/s"
        f"   ours/tiktoken = {encode['ratio_n']}x | {encode['ratio_n_self']}x")
    log(f"  scaling 1 -> {n} threads: scratchlm {encode['scaling_ours']}x, tiktoken {encode['scaling_tiktoken']}x")
    log("  ids vs tiktoken: " + ", ".join(f"{k} thread(s) {'IDENTICAL' if v else 'DIFFERENT'}" for k, v in encode["identical"].items()))
    log(f"compression on the slice: scratchlm 32k {comp['ours32k_bytes_per_token']} bytes/token, GPT-2 {comp['gpt2_bytes_per_token']} bytes/token")
    log(f"HF tokenizer.json interop: {'IDENTICAL on every text' if interop_ok else 'DIFFERENT (see above)'}")
    noise = res.add("noise", other_cpu_s_total=round(sum(NOISE.samples), 1), other_cpu_s_max=round(max(NOISE.samples), 2))
    log(f"other processes' CPU time during the measurements: {noise['other_cpu_s_total']} s in all, at most "
        f"{noise['other_cpu_s_max']} s in one (near 0 = a quiet machine; re-run if large)")
    log(f"results: {res.file.name}")
    return 0 if interop_ok and all(encode["identical"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
