"""Writes tests/golden/cnn.json: the CNN of src/models/cnn.rs, small
(channels [4, 8], hidden 16, 28 x 28 inputs, 10 classes), run by PyTorch.

Per case (with and without BatchNorm; and a deeper one that pools after
every second block only, as a BasicNet does, its last block unpooled): the
weights (given explicitly, so
that the two sides' initialisation RNGs do not matter), a batch of 8 inputs
and labels, and from ONE train-mode forward and backward: the logits, the
mean cross-entropy, every parameter's gradient and BatchNorm's running
statistics afterwards; then the eval-mode logits (running statistics).

The weights and inputs are drawn in float32 and stored as float32 values;
every result is computed in float64 from those same values, so the fixture
holds the exact answer (to f64 rounding) and the Rust test can bound its own
f32 rounding alone. Run through scripts/make-fixtures.sh.
"""

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


class Cnn(nn.Module):
    def __init__(self, channels, hidden, batch_norm, pool_every=1, side=28, classes=10):
        super().__init__()
        c_in = 1
        self.blocks = len(channels)
        self.batch_norm = batch_norm
        self.pool_every = pool_every
        for i, c in enumerate(channels):
            setattr(self, f"conv{i + 1}", nn.Conv2d(c_in, c, 3, padding=1))
            if batch_norm:
                setattr(self, f"bn{i + 1}", nn.BatchNorm2d(c))
            c_in = c
            if (i + 1) % pool_every == 0:
                side //= 2
        self.fc1 = nn.Linear(c_in * side * side, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        h = x.view(x.shape[0], 1, 28, 28)
        for i in range(self.blocks):
            h = getattr(self, f"conv{i + 1}")(h)
            if self.batch_norm:
                h = getattr(self, f"bn{i + 1}")(h)
            h = F.relu(h)
            if (i + 1) % self.pool_every == 0:
                h = F.max_pool2d(h, 2)
        h = F.relu(self.fc1(h.flatten(1)))
        return self.fc2(h)


def values(t):
    return [float(v) for v in t.detach().flatten().tolist()]


def case(name, batch_norm, seed, channels=(4, 8), pool_every=1):
    torch.manual_seed(seed)
    model = Cnn(list(channels), 16, batch_norm, pool_every)
    with torch.no_grad():
        for k, p in model.named_parameters():
            # Non-trivial BatchNorm scales and shifts.
            if k.startswith("bn") and k.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape))
            elif k.startswith("bn") and k.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape))
    x = torch.rand(8, 784)
    y = torch.arange(8) % 10
    params32 = {k: p.detach().clone() for k, p in model.state_dict().items()}
    model = model.double()
    model.train()
    logits = model(x.double())
    loss = F.cross_entropy(logits, y)
    loss.backward()
    out = {
        "name": name,
        "model": {
            "name": "cnn",
            "channels": list(channels),
            **({"pool_every": pool_every} if pool_every != 1 else {}),
            "hidden": 16,
            "batch_norm": batch_norm,
        },
        "x": values(x),
        "y": y.tolist(),
        "params": {
            k: {"shape": list(p.shape), "values": values(p)}
            for k, p in params32.items()
            if p.dtype == torch.float32 and "running" not in k
        },
        "logits_train": values(logits),
        "loss": loss.item(),
        "grads": {k: values(p.grad) for k, p in model.named_parameters()},
        "buffers": {
            k: values(b) for k, b in model.named_buffers() if "running" in k
        },
        "num_batches_tracked": {
            k: int(b) for k, b in model.named_buffers() if k.endswith("num_batches_tracked")
        },
    }
    model.eval()
    with torch.no_grad():
        out["logits_eval"] = values(model(x.double()))
    return out


def main():
    cases = [
        case("batch_norm", True, 0),
        case("no_batch_norm", False, 1),
        # Five blocks, pools after 2 and 4 (28 -> 14 -> 7), the last block
        # unpooled; two channels each, to keep the file small.
        case("pool_every_2", True, 2, channels=(2, 2, 2, 2, 2), pool_every=2),
    ]
    doc = {
        "source": "tests/golden/make_cnn_fixture.py",
        "torch": torch.__version__,
        "cases": cases,
    }
    path = os.path.join(os.path.dirname(__file__), "cnn.json")
    with open(path, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
