#!/usr/bin/env python3
"""Writes the optimizer golden fixtures (optim_<name>.json beside this file)
by running real PyTorch.

Regenerate with `scripts/make-fixtures.sh` (installs torch and lion-pytorch
with pip when they are missing), or directly:
`python3 tests/golden/make_optim_fixtures.py [OPTIMIZER...]`.

Every case runs the torch optimizer for STEPS steps on two tensors at once, a
2x3 matrix `weight` and a length-3 `bias`, with gradients drawn here and
stored in the fixture, so that the Rust test feeds the exact same gradients.
Both float32 and float64 runs are recorded: after every step, the parameters
and the full optimizer state (torch's own `state[p]` entries).

The regularisation modes that torch.optim has no switch for are written here
in plain torch, after the definitions in src/optim/mod.rs:
  - `l1` (subgradient): grad += l1 * sign(p) before the step;
  - `decoupled_weight_decay` on optimizers without it: p *= 1 - lr*wd before
    the step (torch's AdamW does exactly this);
  - `l1_prox`: after the step, p = sign(p) * max(|p| - step * l1_prox, 0),
    where `step` is the optimizer's per-coordinate step size, recomputed
    below from torch's state (ProxGen, Yun et al. 2021);
  - `exempt_1d`: the bias gets no decay and no L1 (torch: a param group with
    weight_decay = 0).
"""

import json
import math
import os
import sys

import numpy as np
import torch
from lion_pytorch import Lion

STEPS = 50
HERE = os.path.dirname(os.path.abspath(__file__))

# Per-coordinate gradient scales: ordinary, small, tiny, always-zero and large
# coordinates, to exercise eps placement and sign(0).
W_SCALE = np.array([[1.0, 0.5, 1e-3], [0.0, 2.0, 1e-6]])
B_SCALE = np.array([1.0, 0.0, 0.1])

TORCH = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adadelta": torch.optim.Adadelta,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adamax": torch.optim.Adamax,
    # lion-pytorch's Lion (Chen et al. 2023): its weight_decay is decoupled,
    # p *= 1 - lr*weight_decay (its own `decoupled_weight_decay` flag, which
    # divides the decay by the initial lr, is left off).
    "lion": Lion,
}
# Optimizers outside torch.optim, whose constructor has no `foreach`.
NO_FOREACH = {"lion"}
# Optimizers whose torch class has `decoupled_weight_decay`.
NATIVE_DECOUPLED = {"adam", "nadam", "radam"}
OURS = {"l1", "l1_prox", "exempt_1d", "decoupled_weight_decay"}
DEFAULT_LR = {"sgd": 1e-3, "adagrad": 1e-2, "rmsprop": 1e-2, "adadelta": 1.0,
              "adam": 1e-3, "adamw": 1e-3, "nadam": 2e-3, "radam": 1e-3, "adamax": 2e-3,
              "lion": 1e-4}
DEFAULT_WD = {"adamw": 1e-2}
DEFAULT_EPS = {"adagrad": 1e-10, "adadelta": 1e-6}


def cases():
    """(id, optimizer name, our config) for every optimizer and option."""
    c = []

    def add(name, label, **cfg):
        c.append((f"{name}/{label}", name, cfg))

    add("sgd", "plain", lr=0.1)
    add("sgd", "momentum", lr=0.05, momentum=0.9)
    add("sgd", "dampening", lr=0.05, momentum=0.9, dampening=0.5)
    add("sgd", "nesterov", lr=0.05, momentum=0.9, nesterov=True)
    add("sgd", "l2", lr=0.05, momentum=0.9, weight_decay=0.1)
    add("sgd", "decoupled", lr=0.05, momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True)
    add("sgd", "l1", lr=0.05, l1=0.05)
    add("sgd", "l1_prox", lr=0.05, momentum=0.9, l1_prox=2.0)
    add("sgd", "l1_prox_exempt", lr=0.05, l1_prox=2.0, exempt_1d=True)
    add("sgd", "l2_exempt", lr=0.05, weight_decay=0.5, exempt_1d=True)
    add("sgd", "defaults")

    add("adagrad", "defaults")
    add("adagrad", "lr_decay", lr=0.1, lr_decay=0.05)
    add("adagrad", "init_acc", lr=0.1, initial_accumulator_value=0.5, eps=1e-3)
    add("adagrad", "l2", lr=0.1, weight_decay=0.1)
    add("adagrad", "decoupled", lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)
    add("adagrad", "l1", lr=0.1, l1=0.01)
    add("adagrad", "l1_prox", lr=0.1, l1_prox=0.5)

    add("rmsprop", "defaults")
    add("rmsprop", "alpha", lr=0.01, alpha=0.9)
    add("rmsprop", "centered", lr=0.01, centered=True)
    add("rmsprop", "momentum", lr=0.01, momentum=0.9)
    add("rmsprop", "centered_momentum", lr=0.01, centered=True, momentum=0.5)
    add("rmsprop", "l2", lr=0.01, weight_decay=0.1)
    add("rmsprop", "decoupled", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    add("rmsprop", "l1", lr=0.01, l1=0.01)
    add("rmsprop", "l1_prox", lr=0.01, centered=True, momentum=0.5, l1_prox=0.5)

    add("adadelta", "defaults")
    add("adadelta", "rho", lr=0.5, rho=0.5, eps=1e-4)
    add("adadelta", "l2", weight_decay=0.1)
    add("adadelta", "decoupled", weight_decay=0.1, decoupled_weight_decay=True)
    add("adadelta", "l1", l1=0.1)
    add("adadelta", "l1_prox", l1_prox=2.0)

    add("adam", "defaults")
    add("adam", "lr", lr=0.05)
    add("adam", "betas_eps", lr=0.05, beta1=0.5, beta2=0.9, eps=1e-3)
    add("adam", "large_eps", lr=0.05, eps=0.1)
    add("adam", "amsgrad", lr=0.05, amsgrad=True)
    add("adam", "l2", lr=0.05, weight_decay=0.1)
    add("adam", "decoupled", lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)
    add("adam", "l1", lr=0.05, l1=0.01)
    add("adam", "l1_prox", lr=0.05, l1_prox=0.5)
    add("adam", "l1_prox_amsgrad_exempt", lr=0.05, amsgrad=True, l1_prox=0.5, exempt_1d=True)
    add("adam", "l2_exempt", lr=0.05, weight_decay=0.5, exempt_1d=True)

    add("adamw", "defaults")
    add("adamw", "wd", lr=0.05, weight_decay=0.1)
    add("adamw", "amsgrad", lr=0.05, weight_decay=0.1, amsgrad=True)
    add("adamw", "exempt", lr=0.05, weight_decay=0.5, exempt_1d=True)
    add("adamw", "l1", lr=0.05, weight_decay=0.1, l1=0.01)
    add("adamw", "l1_prox", lr=0.05, weight_decay=0.1, l1_prox=0.5)

    add("nadam", "defaults")
    add("nadam", "momentum_decay", lr=0.05, momentum_decay=0.01)
    add("nadam", "l2", lr=0.05, weight_decay=0.1)
    add("nadam", "decoupled", lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)
    add("nadam", "l1", lr=0.05, l1=0.01)
    add("nadam", "l1_prox", lr=0.05, l1_prox=0.5)

    add("radam", "defaults")
    add("radam", "lr", lr=0.05, beta2=0.99)
    add("radam", "l2", lr=0.05, weight_decay=0.1)
    add("radam", "decoupled", lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)
    add("radam", "l1", lr=0.05, l1=0.01)
    add("radam", "l1_prox", lr=0.05, beta2=0.99, l1_prox=0.5)

    add("adamax", "defaults")
    add("adamax", "lr", lr=0.05, beta1=0.8, beta2=0.99, eps=1e-3)
    add("adamax", "l2", lr=0.05, weight_decay=0.1)
    add("adamax", "decoupled", lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)
    add("adamax", "l1", lr=0.05, l1=0.01)
    add("adamax", "l1_prox", lr=0.05, l1_prox=0.5)

    # Lion's steps are +-lr per coordinate: lr 0.01 moves the weights by up
    # to 0.5 over the 50 steps; sign(0) = 0 on the always-zero coordinates.
    add("lion", "defaults")
    add("lion", "lr", lr=0.01)
    add("lion", "betas", lr=0.01, beta1=0.5, beta2=0.9)
    add("lion", "wd", lr=0.01, weight_decay=1.0)
    add("lion", "wd_exempt", lr=0.01, weight_decay=1.0, exempt_1d=True)
    add("lion", "l1", lr=0.01, l1=0.5)
    add("lion", "l1_prox", lr=0.01, l1_prox=2.0)
    return c


def torch_kwargs(name, cfg):
    kw = {k: v for k, v in cfg.items() if k not in OURS and k not in ("beta1", "beta2")}
    if "beta1" in cfg or "beta2" in cfg:
        kw["betas"] = (cfg.get("beta1", 0.9), cfg.get("beta2", 0.99 if name == "lion" else 0.999))
    decoupled = cfg.get("decoupled_weight_decay", False)
    if decoupled and name in NATIVE_DECOUPLED:
        kw["decoupled_weight_decay"] = True
    elif decoupled:
        kw.pop("weight_decay", None)  # done by hand below
    return kw


def step_size(name, cfg, opt, p, state_before):
    """The per-coordinate step size the optimizer just used on p."""
    g = opt.param_groups[0]
    lr = g["lr"]
    st = opt.state[p]
    t = float(st["step"]) if "step" in st else None
    if name in ("sgd", "lion"):
        return lr
    if name == "adagrad":
        clr = lr / (1 + (t - 1) * g["lr_decay"])
        return torch.reciprocal(st["sum"].sqrt() + g["eps"]) * clr
    if name == "rmsprop":
        sq = st["square_avg"]
        avg = (sq - st["grad_avg"] ** 2).sqrt() if g["centered"] else sq.sqrt()
        return torch.reciprocal(avg + g["eps"]) * lr
    if name == "adadelta":
        acc = state_before.get("acc_delta", torch.zeros_like(p))
        ratio = (acc + g["eps"]).sqrt() / (st["square_avg"] + g["eps"]).sqrt()
        return ratio * lr
    b1, b2 = g["betas"]
    bc2 = 1 - b2 ** t
    if name in ("adam", "adamw"):
        v = st["max_exp_avg_sq"] if g["amsgrad"] else st["exp_avg_sq"]
        return torch.reciprocal(v.sqrt() / math.sqrt(bc2) + g["eps"]) * lr
    if name == "nadam":
        return torch.reciprocal((st["exp_avg_sq"] / bc2).sqrt() + g["eps"]) * lr
    if name == "radam":
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * (b2 ** t) / bc2
        if rho_t <= 5.0:
            return lr
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        adaptive = torch.reciprocal(st["exp_avg_sq"].sqrt() + g["eps"]) * math.sqrt(bc2)
        return adaptive * (lr * rect)
    if name == "adamax":
        return torch.reciprocal(st["exp_inf"]) * lr
    raise ValueError(name)


def fmt(dtype):
    return (lambda x: "%.9g" % x) if dtype == torch.float32 else (lambda x: "%.17g" % x)


def flat(t):
    return t.detach().reshape(-1).tolist() if torch.is_tensor(t) else [t]


def run(case_id, name, cfg, init, grads, dtype):
    torch.set_default_dtype(dtype)
    params = {k: torch.tensor(v, dtype=dtype).requires_grad_() for k, v in init.items()}
    order = sorted(params)
    exempt = cfg.get("exempt_1d", False)
    kw = torch_kwargs(name, cfg)
    groups = []
    for k in order:
        reg = not (exempt and params[k].dim() < 2)
        group = {"params": [params[k]]}
        if not reg:
            group["weight_decay"] = 0.0
        groups.append(group)
    if name not in NO_FOREACH:
        kw["foreach"] = False
    opt = TORCH[name](groups, **kw)
    lr = cfg.get("lr", DEFAULT_LR[name])
    wd = cfg.get("weight_decay", DEFAULT_WD.get(name, 0.0))
    manual_decoupled = cfg.get("decoupled_weight_decay", False) and name not in NATIVE_DECOUPLED
    out = []
    for grad in grads:
        before = {}
        for k in order:
            p = params[k]
            reg = not (exempt and p.dim() < 2)
            g = torch.tensor(grad[k], dtype=dtype).reshape(p.shape)
            if reg and cfg.get("l1", 0.0):
                g = g + torch.sign(p.detach()) * cfg["l1"]
            p.grad = g
            if reg and manual_decoupled and wd:
                with torch.no_grad():
                    p.mul_(1 - lr * wd)
            before[k] = {s: v.clone() for s, v in opt.state[p].items() if torch.is_tensor(v)}
        opt.step()
        if cfg.get("l1_prox", 0.0):
            with torch.no_grad():
                for k in order:
                    p = params[k]
                    if exempt and p.dim() < 2:
                        continue
                    s = step_size(name, cfg, opt, p, before[k])
                    thr = s * cfg["l1_prox"]
                    p.copy_(torch.sign(p) * torch.clamp(p.abs() - thr, min=0))
        rec = {"params": {k: flat(params[k]) for k in order}, "state": {}}
        for k in order:
            st = {}
            for s, v in opt.state[params[k]].items():
                if v is None:
                    continue
                st[s] = flat(v) if torch.is_tensor(v) and v.dim() > 0 else float(v)
            rec["state"][k] = st
        out.append(rec)
    return out


def dumps(obj, f):
    """JSON with floats at the precision of their run (9 or 17 digits)."""
    if isinstance(obj, dict):
        return "{" + ",".join(json.dumps(k) + ":" + dumps(v, f) for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(dumps(v, f) for v in obj) + "]"
    if isinstance(obj, bool) or isinstance(obj, str) or isinstance(obj, int):
        return json.dumps(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError("non-finite value in a fixture")
        return f(obj)
    raise TypeError(type(obj))


def main():
    """Writes every optimizer's fixture, or only those named as arguments
    (`make_optim_fixtures.py lion`); a case's random draws depend on its
    position in cases() only, so either way the others' stay as they are."""
    only = set(sys.argv[1:])
    unknown = only - set(TORCH)
    if unknown:
        sys.exit(f"unknown optimizer(s) {sorted(unknown)}; expected some of {sorted(TORCH)}")
    by_opt = {}
    for i, (case_id, name, cfg) in enumerate(cases()):
        if only and name not in only:
            continue
        rng = np.random.default_rng(1000 + i)
        init = {
            "weight": rng.normal(size=(2, 3)).astype(np.float32),
            "bias": rng.normal(size=3).astype(np.float32),
        }
        init["weight"][1, 0] = 0.0  # sign(0) = 0 for L1
        grads = []
        for _ in range(STEPS):
            grads.append({
                "weight": (rng.normal(size=(2, 3)) * W_SCALE + 0.1 * W_SCALE).astype(np.float32),
                "bias": (rng.normal(size=3) * B_SCALE).astype(np.float32),
            })
        init_l = {k: v.tolist() for k, v in init.items()}
        grads_l = [{k: v.reshape(-1).tolist() for k, v in g.items()} for g in grads]
        runs = {}
        for key, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            runs[key] = dumps(run(case_id, name, cfg, init_l, grads_l, dtype), fmt(dtype))
        f9 = fmt(torch.float32)
        text = (
            '{"id":' + json.dumps(case_id)
            + ',"optimizer":' + json.dumps({"name": name, **cfg})
            + ',"shapes":{"bias":[3],"weight":[2,3]}'
            + ',"init":' + dumps({k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in init_l.items()}, f9)
            + ',"grads":' + dumps(grads_l, f9)
            + ',"runs":{"f32":' + runs["f32"] + ',"f64":' + runs["f64"] + "}}"
        )
        by_opt.setdefault(name, []).append(text)
    for name, texts in by_opt.items():
        path = os.path.join(HERE, f"optim_{name}.json")
        header = json.dumps({
            "generator": "tests/golden/make_optim_fixtures.py",
            "torch": torch.__version__,
            "steps": STEPS,
        })[:-1]
        with open(path, "w") as f:
            f.write(header + ',"cases":[\n' + ",\n".join(texts) + "\n]}\n")
        print(f"wrote {path} ({len(texts)} cases)", file=sys.stderr)


if __name__ == "__main__":
    main()
