#!/usr/bin/env python3
"""One benchmark command: sparsity-lab against PyTorch on this machine, in
the same run, same shapes, dtypes, threads and kinds of inputs.

    python3 scripts/bench.py                   # all cases, recorded in BENCHMARKS.md
    python3 scripts/bench.py mlp-64            # some cases, printed only
    python3 scripts/bench.py cnn cnn-2t --record   # some cases, recorded
    python3 scripts/bench.py transformer --rounds 3   # ours and PyTorch alternated 3 times

A recorded sitting goes into BENCHMARKS.md under this machine's section
(`## <CPU model> with AVX-512|AVX2, <n> cores`, created before `## Notes`
when it is the first sitting on such a machine), newest first, with the
date, the commit, the load and the CPU's features. Nothing else in the
file is touched; its summary table at the top is kept by hand.

Installs torch with pip when it is missing. Our side is
`cargo bench --bench speed` (benches/speed.rs); the peer is below. Each case
reports the median of many timed repetitions after warm-up. The ratio is
PyTorch's time over ours: above 1 means sparsity-lab is faster.

With `--rounds N`, each case runs ours, then PyTorch, N times in turn: the
times reported are each side's median over the rounds, the ratio is the
median of the rounds' ratios, and its range is printed and recorded. On a
shared host whose speed drifts within minutes, a ratio from alternated
rounds is steadier than one from a single pair of runs.
"""
import statistics
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import torch
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "torch"])
    import torch

import torch.nn as nn
import torch.nn.functional as F

OPTS = ["sgd", "rmsprop", "adam", "adamw", "amsgrad"]
CASES = [f"opt-{o}-{s}" for o in OPTS for s in ("1m", "10m")] + [
    "mlp-64", "mlp-256", "transformer", "transformer-matmuls", "cnn", "cnn-2t", "basicnet"]


def threads_of(case):
    """Threads per case, as in the speed issue: the MLP step on one thread,
    optimizer steps and the Transformer on two; the CNN step on one (`cnn`,
    as a study runs it) and on two (`cnn-2t`); the BasicNet-like CNN of
    experiments/basicnet.toml on one, as its study runs it."""
    return 1 if case.startswith("mlp") or case in ("cnn", "basicnet") else 2


def timeit(f, min_runs=20, budget=2.0):
    for _ in range(3):
        f()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < budget:
        t = time.perf_counter()
        f()
        samples.append((time.perf_counter() - t) * 1e3)
        if len(samples) >= 10000:
            break
    samples.sort()
    return samples[len(samples) // 2]


def torch_opt(name, n, impl):
    p = torch.randn(n, requires_grad=True)
    p.grad = torch.randn(n) * 1e-3
    kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    if name == "sgd":
        opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, **kw)
    elif name == "rmsprop":
        opt = torch.optim.RMSprop([p], lr=1e-3, **kw)
    elif name == "adam":
        opt = torch.optim.Adam([p], lr=1e-3, **kw)
    elif name == "adamw":
        opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, **kw)
    else:
        opt = torch.optim.Adam([p], lr=1e-3, amsgrad=True, **kw)
    return timeit(opt.step)


def torch_mlp(b, impl):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, **kw)
    x = torch.randn(b, 784) * 0.3 + 0.1
    y = torch.arange(b) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()

    return timeit(step, budget=3.0)


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
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def torch_transformer(impl):
    torch.manual_seed(0)
    m = CharTransformer()
    kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1, **kw)
    ids = torch.randint(0, 65, (32, 129))
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x).reshape(-1, 65), y.reshape(-1)).backward()
        opt.step()

    return timeit(step, min_runs=10, budget=5.0)


def torch_matmuls(_impl):
    """benches/speed.rs's `transformer-matmuls`: only the matrix products of
    a Transformer step (each linear layer's forward and its two gradients;
    the attention scores, the attention output and their gradients), twice
    (two layers), at the study's shapes: is the matrix product the limit?"""
    g = torch.Generator().manual_seed(3)
    n, d = 32 * 128, 128
    r = lambda *s: torch.randn(*s, generator=g)
    x, h = r(n, d), r(n, 4 * d)
    w_qkv, w_o, w_fc, w_pr = r(3 * d, d), r(d, d), r(4 * d, d), r(d, 4 * d)
    q, p = r(32, 4, 128, 32), r(32, 4, 128, 128)

    def lin(x, w):
        y = x @ w.T
        _dx = y @ w
        _dw = y.T @ x

    def step():
        for _ in range(2):
            lin(x, w_qkv)
            lin(x, w_o)
            lin(x, w_fc)
            lin(h, w_pr)
            s = q @ q.transpose(-1, -2)
            _ = s @ q
            _ = s.transpose(-1, -2) @ q
            o = p @ q
            _ = o @ q.transpose(-1, -2)
            _ = p.transpose(-1, -2) @ o

    return timeit(step, min_runs=10, budget=3.0)


def torch_cnn(impl, case="cnn"):
    torch.manual_seed(0)
    # The model of src/models/cnn/, as the CNN fixture's script defines it.
    sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
    from make_cnn_fixture import Cnn

    channels, pool_every = ((16, 16, 32, 32, 64, 64, 64), 2) if case == "basicnet" else ((32, 64), 1)
    m = Cnn(list(channels), 128, True, pool_every).train()
    kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, **kw)
    x = torch.randn(64, 784) * 0.3 + 0.1
    y = torch.arange(64) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()

    return timeit(step, min_runs=10, budget=3.0)


def peer(case):
    """Best PyTorch time over its implementations (fused, foreach, for-loop)."""
    torch.set_num_threads(threads_of(case))
    impls = ["fused", "foreach", "forloop"]
    if case.startswith("opt-rmsprop"):
        impls = ["foreach", "forloop"]  # no fused RMSprop in torch
    if case == "transformer-matmuls":
        impls = ["matmul"]  # no optimizer: one implementation
    results = {}
    for impl in impls:
        try:
            if case.startswith("opt-"):
                _, name, size = case.split("-")
                results[impl] = torch_opt(name, 1_000_000 if size == "1m" else 10_000_000, impl)
            elif case.startswith("mlp-"):
                results[impl] = torch_mlp(int(case.split("-")[1]), impl)
            elif case.startswith("cnn") or case == "basicnet":
                results[impl] = torch_cnn(impl, case)
            elif case == "transformer-matmuls":
                results[impl] = torch_matmuls(impl)
            else:
                results[impl] = torch_transformer(impl)
        except (RuntimeError, TypeError) as e:  # an implementation torch lacks here
            print(f"  torch {impl} unavailable for {case}: {e}", file=sys.stderr)
    best = min(results, key=results.get)
    return results[best], best, results


def ours(case):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads_of(case)))
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "speed", "--", case],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)["median_ms"]


# The CPU features that decide which kernels run (gemm's and ours pick at
# run time; PyTorch's too).
SIMD = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
        "amx_tile", "amx_bf16", "asimd", "sve"]


def machine():
    cpu, flags = platform.processor(), []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == platform.processor():
                cpu = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")) and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in SIMD if f in have]
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{cpu} ({' '.join(flags) or 'features unknown'}), {os.cpu_count()} cores; {rustc}; "
            f"PyTorch {torch.__version__}; Python {platform.python_version()}")


def load():
    try:
        return "load %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load unknown"


def rounds_arg():
    args = sys.argv[1:]
    if "--rounds" not in args:
        return 1
    at = args.index("--rounds")
    try:
        n = int(args[at + 1])
    except (IndexError, ValueError):
        sys.exit("bench.py: --rounds needs a whole number of rounds, e.g. --rounds 3")
    if n < 1:
        sys.exit(f"bench.py: --rounds {n}: give at least 1")
    return n


def main():
    args = sys.argv[1:]
    n_rounds = rounds_arg()
    skip = {args.index("--rounds") + 1} if "--rounds" in args else set()
    cases = [a for i, a in enumerate(args) if not a.startswith("-") and i not in skip] or CASES
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"bench.py: unknown case {unknown[0]!r}; the cases are: {' '.join(CASES)}")
    subprocess.run(["cargo", "bench", "--no-run", "--quiet", "--bench", "speed"], cwd=ROOT, check=True)
    print(f"machine: {machine()}", flush=True)
    rows = []
    for case in cases:
        runs = []
        for _ in range(n_rounds):
            t_ours = ours(case)
            t_torch, impl, all_t = peer(case)
            runs.append((t_ours, t_torch, impl, all_t))
        ratios = [b / a for a, b, _, _ in runs]
        t_ours = statistics.median(a for a, _, _, _ in runs)
        t_torch = statistics.median(b for _, b, _, _ in runs)
        ratio = statistics.median(ratios)
        impl = max(set(r[2] for r in runs), key=[r[2] for r in runs].count)
        all_t = {k: statistics.median(r[3][k] for r in runs if k in r[3]) for k in runs[0][3]}
        spread = (min(ratios), max(ratios), n_rounds) if n_rounds > 1 else None
        rows.append((case, threads_of(case), t_ours, t_torch, impl, ratio, all_t, spread))
        extra = f" (rounds {min(ratios):.2f}-{max(ratios):.2f})" if spread else ""
        print(f"{case:18} threads {threads_of(case)}  ours {t_ours:9.3f} ms  torch {t_torch:9.3f} ms ({impl})  "
              f"ratio {ratio:5.2f}x{extra}  ({load()})", flush=True)
    if len(cases) == len(CASES) or "--record" in sys.argv[1:]:
        record(cases, rows)


def machine_heading():
    """`## <CPU model> with AVX-512|AVX2, <n> cores`: one section per kind of machine."""
    desc = machine()
    cpu = desc.split(" (", 1)[0]
    feats = desc.split(" (", 1)[1].split(")", 1)[0].split() if " (" in desc else []
    simd = " with AVX-512" if "avx512f" in feats else (" with AVX2" if "avx2" in feats else "")
    return f"## {cpu}{simd}, {os.cpu_count()} cores"


def record(cases, rows):
    """Inserts this sitting's table into BENCHMARKS.md under the machine's section."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "unknown commit"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"### {when}, at {commit}: `python3 scripts/bench.py {' '.join(cases)}"
        + (f" --rounds {rows[0][7][2]}" if rows and rows[0][7] else "") + "`",
        "",
        f"Machine: {machine()}; {load()} at the end.",
        "",
        "| case | threads | sparsity-lab ms | PyTorch ms | PyTorch impl | ratio | all PyTorch impls (ms) |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for case, th, a, b, impl, r, all_t, spread in rows:
        others = ", ".join(f"{k} {v:.3f}" for k, v in all_t.items())
        ratio = f"{r:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f} in {spread[2]} rounds)" if spread else "")
        lines.append(f"| {case} | {th} | {a:.3f} | {b:.3f} | {impl} | {ratio} | {others} |")
    sitting = "\n".join(lines) + "\n\n"
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n## Notes\n"
    heading = machine_heading()
    at = text.find(heading + "\n")
    if at < 0:
        notes = text.find("## Notes")
        at = notes if notes >= 0 else len(text)
        text = text[:at] + heading + "\n\n" + sitting + text[at:]
    else:
        # After the section's heading and its description paragraph (up to
        # the first sitting), so the newest sitting comes first.
        first = text.find("\n### ", at)
        end = text.find("\n## ", at + 1)
        pos = first + 1 if first >= 0 and (end < 0 or first < end) else (end + 1 if end >= 0 else len(text))
        text = text[:pos] + sitting + text[pos:]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    print(f"recorded in BENCHMARKS.md under '{heading}'")

if __name__ == "__main__":
    main()
