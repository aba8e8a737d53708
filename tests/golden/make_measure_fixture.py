#!/usr/bin/env python3
"""Writes a PyTorch checkpoint (torch_checkpoint.safetensors) and the sparsity
measures of its tensors computed independently with numpy
(torch_checkpoint_measures.json), for tests/cli_train_measure.rs.

Regenerate with `scripts/make-fixtures.sh`, or directly:
`python3 tests/golden/make_measure_fixture.py` (needs torch, numpy, safetensors).
"""
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def measures(v):
    v = np.asarray(v, dtype=np.float64).ravel()
    a = np.abs(v)
    n = len(v)
    l1 = a.sum()
    l2 = np.sqrt((a * a).sum())
    hoyer = 1.0 if l2 == 0 else (0.0 if n <= 1 else (np.sqrt(n) - l1 / l2) / (np.sqrt(n) - 1))
    if l1 == 0:
        gini = 1.0
    else:
        c = np.sort(a)
        k = np.arange(1, n + 1)
        gini = 1 - 2 * np.sum((c / l1) * ((n - k + 0.5) / n))
    return {
        "numel": n,
        "exact_zero_frac": float(np.mean(v == 0)),
        "near_zero_frac": {k: float(np.mean(a < t)) for k, t in (("1e-4", 1e-4), ("1e-3", 1e-3), ("1e-2", 1e-2))},
        "rel_near_zero_frac": float(np.mean(a < 0.01 * a.max())),
        "l1": float(l1),
        "l2": float(l2),
        "hoyer": float(hoyer),
        "gini": float(gini),
    }


def main():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        w = model[0].weight
        w[w.abs() < 0.05] = 0.0  # some exact zeros
        model[0].weight[0, :3] = torch.tensor([1e-5, -5e-4, 5e-3])
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["extra.double"] = torch.linspace(-1, 1, 7, dtype=torch.float64)
    save_file(sd, os.path.join(HERE, "torch_checkpoint.safetensors"))
    # BatchNorm's running statistics are buffers, not weights: `measure`
    # leaves them out (like the int64 counter, which is not a float tensor).
    buffers = (".running_mean", ".running_var", ".num_batches_tracked")
    floats = {
        k: v for k, v in sorted(sd.items()) if v.is_floating_point() and not k.endswith(buffers)
    }
    out = {
        "tensors": {k: measures(v.numpy()) for k, v in floats.items()},
        "total": measures(np.concatenate([v.double().numpy().ravel() for v in floats.values()])),
    }
    with open(os.path.join(HERE, "torch_checkpoint_measures.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    # The scale-relative fractions (numpy alone, from the file just written).
    import add_scale_rel_to_fixture

    add_scale_rel_to_fixture.main()


if __name__ == "__main__":
    main()
