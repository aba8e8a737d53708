#!/usr/bin/env python3
"""Adds the scale-relative near-zero fractions to torch_checkpoint_measures.json,
computed with numpy alone from torch_checkpoint.safetensors (read by hand:
an 8-byte header length, a JSON header, the raw little-endian data), for
machines without torch. make_measure_fixture.py computes the same when it
regenerates both files.

Per tensor: the fraction of |w| < c * RMS(w), c in 0.01, 0.03, 0.1, RMS =
sqrt(mean w^2); an all-zero tensor counts wholly. The total pools the
counts, each tensor with its own RMS.
"""
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE_REL = (("0.01", 0.01), ("0.03", 0.03), ("0.1", 0.1))
DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] not in DTYPES:
            continue
        # BatchNorm's running statistics are buffers, not weights.
        if name.endswith((".running_mean", ".running_var", ".num_batches_tracked")):
            continue
        lo, hi = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + lo : 8 + n + hi], dtype=DTYPES[t["dtype"]]).astype(np.float64)
    return out


def scale_rel_counts(v):
    v = np.asarray(v, dtype=np.float64).ravel()
    rms = np.sqrt(np.mean(v * v))
    if rms == 0:
        return [len(v)] * len(SCALE_REL)
    return [int(np.sum(np.abs(v) < c * rms)) for _, c in SCALE_REL]


def main():
    tensors = read_safetensors(os.path.join(HERE, "torch_checkpoint.safetensors"))
    path = os.path.join(HERE, "torch_checkpoint_measures.json")
    with open(path) as f:
        fixture = json.load(f)
    total = [0] * len(SCALE_REL)
    numel = 0
    for name, v in sorted(tensors.items()):
        counts = scale_rel_counts(v)
        fixture["tensors"][name]["scale_rel_near_zero_frac"] = {
            k: c / len(v) for (k, _), c in zip(SCALE_REL, counts)
        }
        total = [a + b for a, b in zip(total, counts)]
        numel += len(v)
    fixture["total"]["scale_rel_near_zero_frac"] = {k: c / numel for (k, _), c in zip(SCALE_REL, total)}
    with open(path, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
