#!/usr/bin/env python3
"""Reads the SASS of the wgmma lab and checks what the notes (WGMMA_NOTES.md) rely on:

  per kernel: the HGMMA instructions present; the highest register reachable on the control-flow
  paths after each setmaxnreg (USETMAXREG.DEALLOC: producer; TRY_ALLOC: consumers), which must stay
  under the budget set there; and, for the forward kernels, how many MUFU.EX2 run between the
  wait_group 1 (DEPBAR.LE gsb0, 0x1) and the next wait_group 0 of the main loop (the softmax that
  overlaps P V: 66 = 64 scores + 2 rescale factors per thread when the overlap holds, 0 when ptxas
  hoisted the wait).

  cuobjdump -sass build/scratchlm_wgmma_lab > lab.sass   (cuobjdump: CUDA's, or Triton's package's)
  python3 bench/attention/check_sass.py lab.sass
"""
import re
import sys


def parse(text):
    kernels = {}
    for chunk in re.split(r"\n\s*Function : ", text)[1:]:
        name = chunk.split("\n")[0].strip()
        ins, order = {}, []
        for line in chunk.split("\n"):
            m = re.search(r"/\*([0-9a-f]{4,5})\*/\s+(.*?);", line)
            if m:
                a = int(m.group(1), 16)
                ins[a] = m.group(2).strip()
                order.append(a)
        kernels[name] = (ins, order)
    return kernels


def successors(ins, nxt, a):
    t = ins[a]
    predicated = t.startswith("@")
    body = re.sub(r"^@!?U?P\w+\s+", "", t)
    op = body.split()[0]
    out = []
    if op.startswith("BRA") or op.startswith("BRX"):
        targets = re.findall(r"0x([0-9a-f]+)", body)
        if targets:
            out.append(int(targets[-1], 16))
        if predicated or "U.ANY" in body or re.search(r"BRA\s+!?U?P\d", body):
            out.append(nxt.get(a))
    elif op.startswith("EXIT") or op.startswith("RET"):
        if predicated:
            out.append(nxt.get(a))
    elif op.startswith("CALL"):
        targets = re.findall(r"0x([0-9a-f]+)", body)
        if targets:
            out.append(int(targets[-1], 16))
        out.append(nxt.get(a))
    else:
        out.append(nxt.get(a))
    return [x for x in out if x is not None]


def max_reg_from(ins, order, start):
    nxt = {order[i]: order[i + 1] for i in range(len(order) - 1)}
    seen, stack, top = set(), [start], -1
    while stack:
        a = stack.pop()
        if a in seen:
            continue
        seen.add(a)
        for r in re.findall(r"\bR(\d+)\b", ins[a]):
            top = max(top, int(r))
        stack.extend(successors(ins, nxt, a))
    return top


def overlap_mufu(ins, order):
    """MUFU.EX2 count between each DEPBAR 0x1 and the following DEPBAR 0x0 (in layout order)."""
    counts, counting, n = [], False, 0
    for a in order:
        t = ins[a]
        if "DEPBAR.LE gsb0, 0x1" in t:
            counting, n = True, 0
        elif "DEPBAR.LE gsb0, 0x0" in t and counting:
            counts.append(n)
            counting = False
        elif counting and "MUFU.EX2" in t:
            n += 1
    return counts


def main():
    kernels = parse(open(sys.argv[1]).read())
    bad = 0
    for name, (ins, order) in sorted(kernels.items()):
        hgmma = sorted({re.search(r"HGMMA\.\S+", t).group(0) for t in ins.values() if "HGMMA" in t})
        line = f"{name[:100]}\n   HGMMA {', '.join(hgmma) or 'none'}"
        n_mma = sum("HGMMA" in t for t in ins.values())
        n_wait = sum("WARPGROUP.DEPBAR" in t for t in ins.values())
        if n_mma:
            # ptxas serializes wgmma (its C7518 note) by a wait after every HGMMA: then n_wait ≈ n_mma.
            serial = n_wait >= n_mma
            bad += 1 if serial else 0
            line += f"\n   {n_mma} HGMMA, {n_wait} wait_group{'  SERIALIZED' if serial else ''}"
        for kind in ("DEALLOC", "TRY_ALLOC"):
            starts = [a for a in order if "USETMAXREG" in ins[a] and kind in ins[a]]
            if starts:
                budget = int(ins[starts[0]].split()[-1], 16)
                top = max_reg_from(ins, order, starts[0])
                ok = top < budget
                bad += 0 if ok else 1
                line += f"\n   {kind:9s} budget {budget:3d}: highest register R{top} {'ok' if ok else 'OVER BUDGET'}"
        if "attention_forward_wgmma_kernel" in name or "attention_dq_wgmma_kernel" in name:
            counts = overlap_mufu(ins, order)
            line += f"\n   MUFU.EX2 between wait_group 1 and 0: {counts}"
        print(line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
