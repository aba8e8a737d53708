"""The PyTorch reference for the CNN's done-when run: the same architecture
as src/models/cnn.rs (conv 3x3 1->32, BatchNorm, ReLU, max-pool 2, conv 3x3
32->64, BatchNorm, ReLU, max-pool 2, linear 3136->128, ReLU, linear 128->10,
torch's default initialisation), the same recipe as

    sparsity-lab train --model cnn --data fashion-mnist --optimizer adam \\
        --set lr=1e-3 --epochs 3

(batch 64, reshuffled each epoch, pixels / 255, Adam lr 1e-3, 3 epochs),
on one thread, printing the test accuracy after each epoch and the mean
time of a training step. Usage:

    python3 scripts/cnn_reference.py [DATA_DIR] [--seed N] [--epochs N]

DATA_DIR holds the gzipped IDX files (default
$SPARSITY_LAB_DATA/fashion-mnist/raw, else ../shared/data/fashion-mnist/raw).
"""

import argparse
import gzip
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(root, split):
    x = idx(os.path.join(root, f"{split}-images-idx3-ubyte.gz"))
    y = idx(os.path.join(root, f"{split}-labels-idx1-ubyte.gz"))
    return torch.tensor(x, dtype=torch.float32).reshape(-1, 784) / 255.0, torch.tensor(
        y, dtype=torch.long
    )


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(3136, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        h = x.view(-1, 1, 28, 28)
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(h))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def main():
    ap = argparse.ArgumentParser()
    default = os.path.join(
        os.environ.get("SPARSITY_LAB_DATA", os.path.join(os.path.dirname(__file__), "../../shared/data")),
        "fashion-mnist/raw",
    )
    ap.add_argument("data", nargs="?", default=default)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr = load(a.data, "train")
    xte, yte = load(a.data, "t10k")
    model = Cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step_time, steps = 0.0, 0
    for epoch in range(1, a.epochs + 1):
        model.train()
        order = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            b = order[i : i + 64]
            t = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(model(xtr[b]), ytr[b])
            loss.backward()
            opt.step()
            step_time += time.perf_counter() - t
            steps += 1
        model.eval()
        with torch.no_grad():
            correct = sum(
                (model(xte[i : i + 1000]).argmax(1) == yte[i : i + 1000]).sum().item()
                for i in range(0, len(xte), 1000)
            )
        print(
            f"epoch {epoch}: test acc {100 * correct / len(xte):.2f}%, "
            f"{1000 * step_time / steps:.1f} ms/step ({a.threads} thread(s), torch {torch.__version__})",
            flush=True,
        )


if __name__ == "__main__":
    main()
