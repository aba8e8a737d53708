#!/usr/bin/env python3
"""The Python parts of scripts/gpu-check.sh (standard library, and torch for
`bench`):

    gpu_check.py train-diff DIR_A DIR_B     # two `train` outputs, A against B
    gpu_check.py bench --device cuda [--budget S] [CASE ...]
    gpu_check.py bench-table OURS.jsonl TORCH.jsonl

train-diff compares the final metrics of run.json and every tensor of
model.safetensors, prints them as Markdown, and exits with 1 when a
difference is outside the bounds below. bench times PyTorch's training step
for the cases of `sparsity-lab bench-steps` (benches/speed.rs's shapes: the
MLP 784-128-10 with Adam at batch 64 and 256, the character Transformer,
2 layers of width 128, context 128, batch 32, with AdamW), best of its fused,
foreach and for-loop optimizers, one JSON line per case.
"""
import argparse
import json
import os
import struct
import sys
import time
from array import array

# Bounds for a training run on the GPU against the same run on the CPU.
# The two differ in the order of floating-point sums (cuBLAS against the CPU
# GEMM, and autograd against the hand-written backward of the CPU path), so
# they are not bit-identical, and differences grow over training; these
# bounds are what "the same run" should still meet after 1000 steps.
BOUNDS = {
    "weight": 1e-3,  # max |w_a - w_b| over all weights, relative to max |w_b|
    "loss": 1e-3,  # |loss_a - loss_b| / loss_b, final train and test loss
    "acc": 0.005,  # |acc_a - acc_b|, final test accuracy (0.5 points)
    "sparsity": 0.005,  # |frac_a - frac_b|: exact zeros, |w| < 1e-3
}


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        code = {"F32": "f", "F64": "d"}.get(meta["dtype"])
        if code is None:
            continue
        start, end = meta["data_offsets"]
        a = array(code)
        a.frombytes(data[start:end])
        if sys.byteorder != "little":
            a.byteswap()
        out[name] = a
    return out


def train_diff(a_dir, b_dir):
    ra = json.load(open(os.path.join(a_dir, "run.json")))
    rb = json.load(open(os.path.join(b_dir, "run.json")))
    wa = read_safetensors(os.path.join(a_dir, "model.safetensors"))
    wb = read_safetensors(os.path.join(b_dir, "model.safetensors"))
    fails = []
    print(f"| | {ra['device']} | {rb['device']} | difference | bound |")
    print("|---|---|---|---|---|")

    def row(name, x, y, diff, bound):
        ok = diff <= bound
        if not ok:
            fails.append(name)
        print(f"| {name} | {x:.6g} | {y:.6g} | {diff:.3g} | {bound:g}{'' if ok else ' **exceeded**'} |")

    fa, fb = ra["final"], rb["final"]
    for k in ("train_loss", "test_loss"):
        row(k, fa[k], fb[k], abs(fa[k] - fb[k]) / abs(fb[k]), BOUNDS["loss"])
    row("test_acc", fa["test_acc"], fb["test_acc"], abs(fa["test_acc"] - fb["test_acc"]), BOUNDS["acc"])
    ta, tb = fa["measures"]["total"], fb["measures"]["total"]
    for label, x, y in [
        ("exact zeros", ta["exact_zero_frac"], tb["exact_zero_frac"]),
        ("\\|w\\| < 1e-3", ta["near_zero_frac"]["1e-3"], tb["near_zero_frac"]["1e-3"]),
    ]:
        row(label, x, y, abs(x - y), BOUNDS["sparsity"])
    if sorted(wa) != sorted(wb):
        fails.append("tensor names")
        print(f"\ntensor names differ: {sorted(wa)} against {sorted(wb)}")
    else:
        scale = max(max(abs(v) for v in t) for t in wb.values())
        worst = 0.0
        for name in sorted(wb):
            d = max(abs(x - y) for x, y in zip(wa[name], wb[name]))
            same = sum(1 for x, y in zip(wa[name], wb[name]) if x == y)
            print(f"| {name}: max abs diff | | | {d:.3g} ({100 * same / len(wb[name]):.1f}% equal) | |")
            worst = max(worst, d)
        row("all weights: max abs diff / max \\|w\\| (the columns: that diff, max \\|w\\|)", worst, scale, worst / scale, BOUNDS["weight"])
    return 1 if fails else 0


CASES = ["mlp-64", "mlp-256", "transformer"]


def bench(device, budget, cases):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timeit(f):
        for _ in range(3):
            f()
        sync()
        samples = []
        start = time.perf_counter()
        while len(samples) < 10 or time.perf_counter() - start < budget:
            t = time.perf_counter()
            f()
            sync()
            samples.append((time.perf_counter() - t) * 1e3)
            if len(samples) >= 10000:
                break
        samples.sort()
        return samples[len(samples) // 2], len(samples)

    class Block(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.h = h
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.fc_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))

    class CharTransformer(nn.Module):
        def __init__(self, vocab=65, ctx=128, d=128, h=4, layers=2):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
            self.blocks = nn.ModuleList(Block(d, h) for _ in range(layers))
            self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.ln_f(x))

    def step_fn(case, impl):
        torch.manual_seed(0)
        kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
        if case.startswith("mlp-"):
            b = int(case.split("-")[1])
            m = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev)
            opt = torch.optim.Adam(m.parameters(), lr=1e-3, **kw)
            x = (torch.randn(b, 784) * 0.3 + 0.1).to(dev)
            y = (torch.arange(b) % 10).to(dev)
            loss = lambda: F.cross_entropy(m(x), y)
        else:
            m = CharTransformer().to(dev)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1, **kw)
            ids = torch.randint(0, 65, (32, 129)).to(dev)
            x, y = ids[:, :-1], ids[:, 1:]
            loss = lambda: F.cross_entropy(m(x).reshape(-1, 65), y.reshape(-1))

        def step():
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()

        return step

    for case in cases:
        results = {}
        for impl in ["fused", "foreach", "forloop"]:
            try:
                results[impl] = timeit(step_fn(case, impl))
            except (RuntimeError, TypeError) as e:
                print(f"torch {impl} unavailable for {case}: {e}", file=sys.stderr)
        best = min(results, key=lambda k: results[k][0])
        print(json.dumps({
            "case": case, "device": device, "torch": torch.__version__,
            "median_ms": round(results[best][0], 5), "runs": results[best][1], "impl": best,
            "all_ms": {k: round(v[0], 5) for k, v in results.items()},
        }))


def bench_table(ours_path, torch_path):
    ours = {d["case"]: d for d in map(json.loads, filter(str.strip, open(ours_path)))}
    peer = {d["case"]: d for d in map(json.loads, filter(str.strip, open(torch_path)))}
    print("| case | sparsity-lab ms | PyTorch ms (its fastest optimizer) | PyTorch / ours |")
    print("|---|---|---|---|")
    for case in ours:
        if case in peer:
            o, p = ours[case]["median_ms"], peer[case]["median_ms"]
            print(f"| {case} | {o:.3f} | {p:.3f} ({peer[case]['impl']}) | {p / o:.2f}x |")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-diff")
    t.add_argument("a")
    t.add_argument("b")
    b = sub.add_parser("bench")
    b.add_argument("--device", default="cuda")
    b.add_argument("--budget", type=float, default=2.0)
    b.add_argument("cases", nargs="*", default=CASES)
    bt = sub.add_parser("bench-table")
    bt.add_argument("ours")
    bt.add_argument("torch")
    a = ap.parse_args()
    if a.cmd == "train-diff":
        return train_diff(a.a, a.b)
    if a.cmd == "bench":
        return bench(a.device, a.budget, a.cases) or 0
    return bench_table(a.ours, a.torch)


if __name__ == "__main__":
    sys.exit(main())
