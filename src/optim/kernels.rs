//! The kernel table: every update rule's fused step, written once. The
//! `kernels!` macro (`kernel_gen.rs`, which also describes the language)
//! turns each entry into the CPU loop (`cpu`), the CUDA kernel (`SOURCE`)
//! and the CUDA argument list (`plan`).
//!
//! Each entry follows the reference step in `rule.rs` operation by
//! operation and in the same order, on the same [`Scalars`]: the golden
//! tests and `tests/fused_vs_reference.rs` hold the two equal bit for bit.
//! Scalars are computed in f64 here, as `real(...)`, and rounded to the
//! parameter's precision once per step (`1 - b1` and `1 - (1 - b1)` are
//! separate scalars because torch's lerp uses both).

use super::config::{Decay, L1};
use super::kernel_gen::{Arg, KernelReg, Plan, Real, ema_sq, fabs, fmax, lerp, run, sgn, sqrt};
use super::rule::{Scalars, sc};

kernels! {
    vars(p, g, step, one, zero);

    // Coupled terms join the gradient (L1 subgradient, then L2), decoupled
    // decay shrinks the weight, all from the weight before the step; after
    // the step, proximal L1 soft-thresholds with the rule's step size.
    regularisation {
        real(l1, wd, decay, prox)
        fixed(l1_on, wd_on, dec_on, prox_on)
        before {
            if l1_on {
                g = g + sgn(p) * l1;
            }
            if wd_on {
                g = g + p * wd;
            }
            if dec_on {
                p = p * decay;
            }
        }
        after {
            if prox_on {
                let shrunk = fabs(p) - step * prox;
                p = sgn(p) * fmax(shrunk, zero);
            }
        }
    }

    sgd(Scalars::Sgd(sc::Sgd { lr, momentum, dampening, nesterov, first })) {
        real(lr = lr, momentum = momentum, one_minus_damp = 1.0 - dampening)
        flag(nesterov = nesterov, first = first)
        fixed(has_buf = momentum != 0.0)
        state(buf if has_buf)
        step {
            let mut d = g;
            if has_buf {
                // torch: the first step copies the gradient into the buffer.
                if first {
                    buf = g;
                } else {
                    buf = buf * momentum + g * one_minus_damp;
                }
                if nesterov {
                    d = g + buf * momentum;
                } else {
                    d = buf;
                }
            }
            p = p + d * (-lr);
            step = lr;
        }
    }

    adagrad(Scalars::Adagrad(sc::Adagrad { clr, eps })) {
        real(clr = clr, eps = eps)
        flag()
        fixed()
        state(sum if true)
        step {
            sum = sum + g * g;
            let std_ = sqrt(sum) + eps;
            p = p + (g / std_) * (-clr);
            step = (one / std_) * clr;
        }
    }

    rmsprop(Scalars::Rmsprop(sc::Rmsprop { lr, alpha, eps, centered, momentum })) {
        real(
            lr = lr,
            alpha = alpha,
            one_minus_alpha = 1.0 - alpha,
            w = 1.0 - alpha,
            w1 = 1.0 - w,
            eps = eps,
            momentum = momentum,
        )
        flag(lo = w < 0.5)
        fixed(has_mom = momentum > 0.0, centered = centered)
        state(sq if true, mom if has_mom, gavg if centered)
        step {
            sq = ema_sq(sq, g, alpha, one_minus_alpha);
            let mut var = sq;
            if centered {
                gavg = lerp(gavg, g, w, w1, lo);
                var = sq - gavg * gavg;
            }
            let avg = sqrt(var) + eps;
            if has_mom {
                mom = mom * momentum + g / avg;
                p = p + mom * (-lr);
            } else {
                p = p + (g / avg) * (-lr);
            }
            step = (one / avg) * lr;
        }
    }

    adadelta(Scalars::Adadelta(sc::Adadelta { lr, rho, eps })) {
        real(lr = lr, rho = rho, one_minus_rho = 1.0 - rho, eps = eps)
        flag()
        fixed()
        state(sq if true, acc if true)
        step {
            sq = ema_sq(sq, g, rho, one_minus_rho);
            // eps sits inside both square roots (torch).
            let std_ = sqrt(sq + eps);
            let ratio = sqrt(acc + eps) / std_;
            let delta = ratio * g;
            acc = ema_sq(acc, delta, rho, one_minus_rho);
            p = p + delta * (-lr);
            step = ratio * lr;
        }
    }

    // Adam, Adam+L2, AdamW and AMSGrad (the max is over the raw v).
    adam(Scalars::Adam(sc::Adam { lr, b1, b2, eps, amsgrad, step_size, inv_bc2_sqrt })) {
        real(
            w = 1.0 - b1,
            w1 = 1.0 - w,
            b2 = b2,
            one_minus_b2 = 1.0 - b2,
            eps = eps,
            step_size = step_size,
            inv_bc2_sqrt = inv_bc2_sqrt,
            lr = lr,
        )
        flag(lo = w < 0.5)
        fixed(amsgrad = amsgrad)
        state(m if true, v if true, vmax if amsgrad)
        step {
            m = lerp(m, g, w, w1, lo);
            v = ema_sq(v, g, b2, one_minus_b2);
            let mut used = v;
            if amsgrad {
                vmax = fmax(vmax, v);
                used = vmax;
            }
            let denom = sqrt(used) * inv_bc2_sqrt + eps;
            p = p + (m / denom) * (-step_size);
            step = (one / denom) * lr;
        }
    }

    nadam(Scalars::Nadam(sc::Nadam { lr, b1, b2, eps, inv_bc2, c_grad, c_mom })) {
        real(
            w = 1.0 - b1,
            w1 = 1.0 - w,
            b2 = b2,
            one_minus_b2 = 1.0 - b2,
            eps = eps,
            inv_bc2 = inv_bc2,
            c_grad = c_grad,
            c_mom = c_mom,
            lr = lr,
        )
        flag(lo = w < 0.5)
        fixed()
        state(m if true, v if true)
        step {
            m = lerp(m, g, w, w1, lo);
            v = ema_sq(v, g, b2, one_minus_b2);
            // eps goes after sqrt(v / bc2), unlike Adam's sqrt(v)/sqrt(bc2).
            let denom = sqrt(v * inv_bc2) + eps;
            p = p + (g / denom) * c_grad;
            p = p + (m / denom) * c_mom;
            step = (one / denom) * lr;
        }
    }

    // rect: the rectification, from step 6 on (has_rect); r = 0 before.
    radam(Scalars::Radam(sc::Radam { lr, b1, b2, eps, inv_bc1, rect, bc2_sqrt })) {
        real(
            w = 1.0 - b1,
            w1 = 1.0 - w,
            b2 = b2,
            one_minus_b2 = 1.0 - b2,
            eps = eps,
            inv_bc1 = inv_bc1,
            r = rect.unwrap_or(0.0),
            bc2_sqrt = bc2_sqrt,
            lr = lr,
            lr_rect = lr * r,
        )
        flag(lo = w < 0.5, has_rect = rect.is_some())
        fixed()
        state(m if true, v if true)
        step {
            m = lerp(m, g, w, w1, lo);
            v = ema_sq(v, g, b2, one_minus_b2);
            let m_hat = m * inv_bc1;
            if has_rect {
                // eps is added to sqrt(v) before the bias correction (torch).
                let adaptive = (one / (sqrt(v) + eps)) * bc2_sqrt;
                let upd = ((m_hat * lr) * adaptive) * r;
                p = p - upd;
                step = adaptive * lr_rect;
            } else {
                p = p - m_hat * lr;
                step = lr;
            }
        }
    }

    adamax(Scalars::Adamax(sc::Adamax { lr, b1, b2, eps, clr })) {
        real(w = 1.0 - b1, w1 = 1.0 - w, b2 = b2, eps = eps, clr = clr, lr = lr)
        flag(lo = w < 0.5)
        fixed()
        state(m if true, u if true)
        step {
            m = lerp(m, g, w, w1, lo);
            // eps is added to |g| inside the max (torch).
            u = fmax(u * b2, fabs(g) + eps);
            p = p + (m / u) * (-clr);
            step = (one / u) * lr;
        }
    }

    // Lion: a step of exactly lr per coordinate; the momentum is updated
    // after the step, with its own beta.
    lion(Scalars::Lion(sc::Lion { lr, b1, b2 })) {
        real(lr = lr, b1 = b1, one_minus_b1 = 1.0 - b1, b2 = b2, one_minus_b2 = 1.0 - b2)
        flag()
        fixed()
        state(m if true)
        step {
            let c = m * b1 + g * one_minus_b1;
            p = p - sgn(c) * lr;
            m = m * b2 + g * one_minus_b2;
            step = lr;
        }
    }
}
