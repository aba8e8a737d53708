#!/usr/bin/env python3
"""Sparsity at matched held-out loss, from a study's run records.

    python3 scripts/matched_loss.py experiments/transformer --task shakespeare \
        --baseline SGD+momentum > experiments/transformer/matched-loss.md

Optimizers that reach different held-out losses are not comparable on
sparsity at their final steps: a network further along has had more steps
to move its weights. This compares them where they reach the same loss.

For each seed s, the matched level L*(s) is the worst final held-out loss
among the task's optimizers at that seed (diverged runs left out), so every
run reaches it. Each run is measured where its held-out loss first falls to
L*(s): each measure is interpolated linearly, on the loss axis, between the
two evaluations that bracket the crossing (the run record's `history`, one
point per `eval_every` steps); the optimizer that sets L*(s) reaches it at
its last evaluation at the latest (earlier where its loss rose at the end).
Rows are paired with the baseline by seed, over the seeds both finished;
the 95 % interval is Student's t on the paired differences (n - 1 degrees
of freedom).

Only the run records are read (no checkpoints); the output is Markdown.

Why this is still Python beside the Rust matched-accuracy analysis
(src/experiment/report/matched.rs): it reads the records' evaluation
history, which the report does not interpolate yet, and moving it means a
new report section whose output must reproduce the committed
matched-loss.md. Until then its Student-t quantile (`t_critical` below:
bisection on the regularised incomplete beta) is the method of
`stats::t_critical` in src/experiment/stats.rs, to the same precision.
"""

import argparse
import glob
import json
import math
import os
import sys

MEASURES = [
    ("\\|w\\| < 0.01 RMS %", lambda p: p["weights_scale_rel_near_zero_frac"]["0.01"]),
    ("\\|w\\| < 0.1 RMS %", lambda p: p["weights_scale_rel_near_zero_frac"]["0.1"]),
    ("\\|w\\| < 1e-3 %", lambda p: p["weights_near_zero_frac"]["1e-3"]),
    ("w = 0 %", lambda p: p["weights_exact_zero_frac"]),
]


def betacf(a, b, x):
    """Continued fraction of the incomplete beta (Numerical Recipes 6.4)."""
    tiny = 1e-300
    clamp = lambda v: v if abs(v) > tiny else tiny  # noqa: E731
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 / clamp(1.0 - qab * x / qap)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 / clamp(1.0 + aa * d)
        c = clamp(1.0 + aa / c)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 / clamp(1.0 + aa * d)
        c = clamp(1.0 + aa / c)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def beta_inc(a, b, x):
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * betacf(a, b, x) / a
    return 1.0 - front * betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t, df):
    return beta_inc(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df, alpha=0.05):
    """The t with two-sided p = alpha, by bisection."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_two_sided_p(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def mean_sd(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def at_level(history, level):
    """(step, loss, measures) where the held-out loss first falls to `level`,
    interpolated on the loss axis; the last point if it never does."""
    pts = [p for p in history if p.get("test_loss") is not None]
    for i, p in enumerate(pts):
        if p["test_loss"] <= level:
            if i == 0:
                return p["step"], p["test_loss"], [f(p) for _, f in MEASURES]
            q = pts[i - 1]
            span = q["test_loss"] - p["test_loss"]
            t = (q["test_loss"] - level) / span if span > 0 else 1.0
            mix = lambda a, b: a + t * (b - a)  # noqa: E731
            vals = [mix(f(q), f(p)) for _, f in MEASURES]
            return mix(q["step"], p["step"]), level, vals
    p = pts[-1]
    return p["step"], p["test_loss"], [f(p) for _, f in MEASURES]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="the study's results folder (with runs/)")
    ap.add_argument("--task", required=True)
    ap.add_argument("--baseline", required=True)
    args = ap.parse_args()

    runs = {}
    for f in sorted(glob.glob(os.path.join(args.study, "runs", "*.json"))):
        r = json.load(open(f))
        if r.get("study", {}).get("task") != args.task:
            continue
        runs.setdefault(r["study"]["label"], {})[r["seed"]] = r
    if args.baseline not in runs:
        sys.exit(f"error: no runs of the baseline `{args.baseline}` in task `{args.task}` under {args.study}/runs")
    labels = sorted(runs, key=lambda l: min(r["study"]["order"] for r in runs[l].values()))
    done = lambda l, s: s in runs[l] and runs[l][s]["status"] == "done"  # noqa: E731
    seeds = sorted(s for s in runs[args.baseline] if done(args.baseline, s))
    if not seeds:
        sys.exit(f"error: no finished run of the baseline `{args.baseline}`")
    # Per seed, the level every finished run of that seed reaches.
    final = lambda l, s: runs[l][s]["final"]["test_loss"]  # noqa: E731
    level = {s: max(final(l, s) for l in labels if done(l, s)) for s in seeds}
    setter = {s: max((l for l in labels if done(l, s)), key=lambda l: final(l, s)) for s in seeds}
    at = {(l, s): at_level(runs[l][s]["history"], level[s]) for l in labels for s in seeds if done(l, s)}
    paired = {l: [s for s in seeds if done(l, s)] for l in labels}

    out = []
    out.append(f"# Sparsity at matched held-out loss: `{os.path.basename(os.path.normpath(args.study))}`, task `{args.task}`\n")
    out.append(
        "Written by `python3 scripts/matched_loss.py` from the run records (see its docstring). "
        f"Per seed, the matched level is the worst final held-out loss of the task's optimizers "
        f"({', '.join(f'seed {s}: {level[s]:.4f}, set by {setter[s]}' for s in seeds)}); "
        "each run is measured where its held-out loss first falls to that level, interpolated between "
        "evaluations. Weights are the tensors with two or more dimensions. "
        f"Differences are paired by seed with `{args.baseline}`: mean [95 % CI] over the n seeds both "
        "finished, Student's t with n − 1 degrees of freedom.\n"
    )
    head = "| optimizer | n | step at the level | " + " | ".join(m for m, _ in MEASURES) + " |"
    out.append(head)
    out.append("|---|---:|---:|" + "---:|" * len(MEASURES))
    for l in labels:
        ss = paired[l]
        if not ss:
            out.append(f"| {l} | 0 | – |" + " – |" * len(MEASURES))
            continue
        cells = [str(len(ss)), f"{mean_sd([at[l, s][0] for s in ss])[0]:.0f}"]
        for k in range(len(MEASURES)):
            m, sd = mean_sd([100 * at[l, s][2][k] for s in ss])
            cells.append(f"{m:.2f} ± {sd:.2f}" if len(ss) > 1 else f"{m:.2f}")
        out.append(f"| {l} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"Paired differences, optimizer − {args.baseline}, percentage points (mean [95 % CI]); exploratory, not corrected for many comparisons and not marked (the study's confirmatory hypotheses are in its results.md):\n")
    out.append("| optimizer | n | " + " | ".join(m for m, _ in MEASURES) + " |")
    out.append("|---|---:|" + "---:|" * len(MEASURES))
    for l in labels:
        ss = paired[l]
        if l == args.baseline:
            continue
        cells = [str(len(ss))]
        for k in range(len(MEASURES)):
            d = [100 * (at[l, s][2][k] - at[args.baseline, s][2][k]) for s in ss]
            if len(d) < 2:
                cells.append(f"{d[0]:+.2f} (one seed)" if d else "–")
                continue
            m, sd = mean_sd(d)
            h = t_critical(len(d) - 1) * sd / math.sqrt(len(d))
            cells.append(f"{m:+.2f} [{m - h:+.2f}, {m + h:+.2f}]")
        out.append(f"| {l} | " + " | ".join(cells) + " |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
