#!/usr/bin/env python3
"""PyTorch reference for the tiny-shakespeare Transformer (issue 13).

STUDY.md's reference run ("Reference figures") reached a held-out loss of
1.87 after 1000 steps of AdamW (lr 1e-3, weight decay 0.1, batch 32) with
torch's default initialisation; our harness reached 1.71. This script trains
the same model in PyTorch with either initialisation and evaluates it the way
the harness does, so the two causes (initialisation, evaluation) can be told
apart:

  --init torch  torch's defaults: nn.Embedding N(0, 1), nn.MultiheadAttention
                (xavier-uniform in_proj, zero biases), nn.Linear
                U(+-1/sqrt(fan_in)) weights and biases (STUDY.md's run);
  --init ours   the harness's (src/models/transformer.rs, nanoGPT style):
                every weight matrix and both embeddings N(0, 0.02), zero
                biases, LayerNorm 1 and 0.

  --eval-windows N   held-out loss over the first N consecutive,
                non-overlapping context windows of the held-out text, as the
                harness's `eval_windows` (100 in experiments/transformer.toml),
                printed next to the loss over every window of the held-out
                text (871 at context 128).

The model: token and learned position embeddings, `layers` pre-LayerNorm
blocks of causal multi-head self-attention and a GELU (erf) MLP 4x, a final
LayerNorm and an untied linear head; training windows of `context`
characters drawn uniformly at random from the first 90 % of the text; AdamW
on every parameter (as the harness: no exemption for biases and norms).

    python scripts/transformer_reference.py --init torch --steps 1000
    python scripts/transformer_reference.py --init ours --steps 1000
"""

import argparse
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, ratio):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, ratio * d)
        self.fc_proj = nn.Linear(ratio * d, d)

    def forward(self, x, mask):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + a
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


class Model(nn.Module):
    def __init__(self, vocab, d=128, heads=4, layers=2, context=128, ratio=4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads, ratio) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        mask = torch.triu(torch.full((context, context), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask)

    def init_ours(self):
        """The harness's initialisation: N(0, 0.02) matrices, zero biases."""
        for name, p in self.named_parameters():
            if name.startswith("ln") or ".ln" in name:
                continue  # LayerNorm keeps 1 and 0
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            else:
                nn.init.zeros_(p)

    def forward(self, x):
        t = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))
        for b in self.blocks:
            h = b(h, self.mask[:t, :t])
        return self.head(self.ln_f(h))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", choices=["torch", "ours"], default="torch")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-windows", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument(
        "--data",
        default=os.path.join(
            os.environ.get("SPARSITY_LAB_DATA", "/work/shared/data"),
            "tinyshakespeare/input.txt",
        ),
    )
    a = ap.parse_args()
    if a.steps < 1 or a.eval_every < 1 or a.eval_windows < 0:
        ap.error("--steps and --eval-every must be >= 1, --eval-windows >= 0")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    with open(a.data, encoding="utf-8") as f:
        text = f.read()
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    n_train = int(len(ids) * 0.9)
    train, test = ids[:n_train], ids[n_train:]
    c = a.context

    windows = (len(test) - 1) // c
    starts = torch.arange(windows) * c
    ex = torch.stack([test[s : s + c] for s in starts])
    ey = torch.stack([test[s + 1 : s + c + 1] for s in starts])
    first = min(windows, a.eval_windows)

    model = Model(len(vocab), context=c)
    if a.init == "ours":
        model.init_ours()
    opt = torch.optim.AdamW(
        model.parameters(), lr=a.lr, weight_decay=a.weight_decay
    )
    gen = torch.Generator().manual_seed(a.seed)

    @torch.no_grad()
    def held_out():
        model.eval()
        tot = []
        for i in range(0, len(ex), 100):
            out = model(ex[i : i + 100])
            ce = F.cross_entropy(out.transpose(1, 2), ey[i : i + 100], reduction="none")
            tot += ce.sum(1).tolist()
        model.train()
        per_window = torch.tensor(tot) / c
        return (
            per_window[:first].mean().item() if first else float("nan"),
            per_window.mean().item(),
        )

    print(
        f"init {a.init}, {sum(p.numel() for p in model.parameters())} params, "
        f"seed {a.seed}",
        flush=True,
    )
    def show(losses):
        return f"held-out loss {losses[0]:.4f} (first {first} windows), {losses[1]:.4f} (all {windows})"

    print(f"step 0 {show(held_out())}", flush=True)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        s = torch.randint(0, len(train) - c, (a.batch_size,), generator=gen)
        x = torch.stack([train[i : i + c] for i in s])
        y = torch.stack([train[i + 1 : i + c + 1] for i in s])
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % a.eval_every == 0 or step == a.steps:
            el = time.time() - t0
            print(
                f"step {step} train loss {loss.item():.4f} {show(held_out())} "
                f"({el / step:.3f} s/step)",
                flush=True,
            )
    if not math.isfinite(loss.item()):
        raise SystemExit("diverged")


if __name__ == "__main__":
    main()
