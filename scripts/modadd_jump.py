#!/usr/bin/env python3
"""For each run of a results folder (default experiments/modadd), the step at
which held-out accuracy first reaches a level (default 0.9), and the step at
which the training loss first falls below 0.1 (the training set memorised):
the gap between the two is the grokking delay. A run whose accuracy never
reaches the level says "not within N steps" (the budget ended).

    python3 scripts/modadd_jump.py [RESULTS_DIR] [--level 0.9]
"""
import glob
import json
import os
import sys


def main():
    argv = sys.argv[1:]
    level = 0.9
    if "--level" in argv:
        i = argv.index("--level")
        level = float(argv[i + 1])
        del argv[i : i + 2]
    folder = argv[0] if argv else "experiments/modadd"
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "runs", "*.json"))):
        r = json.load(open(path))
        if "history" not in r:
            continue
        h = r["history"]
        jump = next((p["step"] for p in h if p["test_acc"] >= level), None)
        fit = next(
            (p["step"] for p in h if p.get("train_loss") is not None and p["train_loss"] < 0.1),
            None,
        )
        last = h[-1]
        rows.append((r.get("study", {}).get("label", os.path.basename(path)), r["seed"], fit, jump, last["step"], last["test_acc"]))
    print(f"| run | seed | train loss < 0.1 at step | held-out acc >= {level:.0%} at step | final step | final held-out acc |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, seed, fit, jump, steps, acc in rows:
        f = fit if fit is not None else f"not within {steps}"
        j = jump if jump is not None else f"not within {steps}"
        print(f"| {label} | {seed} | {f} | {j} | {steps} | {100 * acc:.2f} % |")


if __name__ == "__main__":
    main()
