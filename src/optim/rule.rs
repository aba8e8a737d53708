//! The per-tensor update rules: their state, their per-step scalars, and the
//! reference implementation on Candle tensors.
//!
//! A step has two halves. [`Rule::scalars`] computes everything that does
//! not depend on the element (bias corrections, NAdam's mu, RAdam's
//! rectification) once per tensor and step; both the tensor path below and
//! the fused kernels (`kernels.rs`, CPU and CUDA) consume the same
//! [`Scalars`], so they cannot disagree on them. This tensor path is the
//! specification the fused kernels are tested against. The tensor path follows PyTorch's
//! `_single_tensor_*` functions operation by operation, so that f64 results
//! agree to rounding and f32 results to a few ulps.
//!
//! Regularisation is not the rule's business: the driver in `mod.rs` adds
//! coupled terms to the gradient, decays decoupled weights and applies the
//! proximal step with the per-coordinate step size the rule reports.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::config::{Momentum, RuleSettings};

/// The effective learning rate the rule applied to each coordinate's
/// (bias-corrected) direction; the proximal threshold is this times l1_prox.
pub(crate) enum StepSize {
    Uniform(f64),
    PerCoord(Tensor),
    /// Not computed (the caller did not ask).
    Unknown,
}

/// The state of one parameter: torch's step count (1 on the first update),
/// and NAdam's running product of mu.
pub(crate) struct ParamState {
    pub t: u64,
    pub mu_product: f64,
}

/// A rule's per-step scalars, computed once per tensor and step.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalars {
    Sgd {
        lr: f64,
        momentum: f64,
        dampening: f64,
        nesterov: bool,
        first: bool,
    },
    Adagrad {
        clr: f64,
        eps: f64,
    },
    Rmsprop {
        lr: f64,
        alpha: f64,
        eps: f64,
        centered: bool,
        momentum: f64,
    },
    Adadelta {
        lr: f64,
        rho: f64,
        eps: f64,
    },
    Adam {
        lr: f64,
        b1: f64,
        b2: f64,
        eps: f64,
        amsgrad: bool,
        step_size: f64,
        inv_bc2_sqrt: f64,
    },
    Nadam {
        lr: f64,
        b1: f64,
        b2: f64,
        eps: f64,
        inv_bc2: f64,
        c_grad: f64,
        c_mom: f64,
    },
    Radam {
        lr: f64,
        b1: f64,
        b2: f64,
        eps: f64,
        inv_bc1: f64,
        rect: Option<f64>,
        bc2_sqrt: f64,
    },
    Adamax {
        lr: f64,
        b1: f64,
        b2: f64,
        eps: f64,
        clr: f64,
    },
}

/// An optimizer's update rule: its typed hyper-parameters, without
/// regularisation.
pub(crate) struct Rule {
    s: RuleSettings,
}

impl Rule {
    pub fn new(settings: RuleSettings) -> Self {
        Self { s: settings }
    }

    /// torch's names of the state tensors, in the order `init` makes them.
    pub fn state_names(&self) -> Vec<&'static str> {
        use RuleSettings::*;
        match self.s {
            Sgd {
                momentum: Momentum::None,
            } => vec![],
            Sgd { .. } => vec!["momentum_buffer"],
            Adagrad { .. } => vec!["sum"],
            Rmsprop {
                momentum, centered, ..
            } => {
                let mut n = vec!["square_avg"];
                if momentum > 0.0 {
                    n.push("momentum_buffer");
                }
                if centered {
                    n.push("grad_avg");
                }
                n
            }
            Adadelta { .. } => vec!["square_avg", "acc_delta"],
            Adam { amsgrad: true, .. } => vec!["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
            Adam { .. } | Nadam { .. } | Radam { .. } => vec!["exp_avg", "exp_avg_sq"],
            Adamax { .. } => vec!["exp_avg", "exp_inf"],
        }
    }

    /// The initial state tensors: zeros, or AdaGrad's initial accumulator.
    pub fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        self.state_names()
            .iter()
            .map(|_| {
                let z = p.zeros_like()?;
                Ok(match self.s {
                    RuleSettings::Adagrad {
                        initial_accumulator_value,
                        ..
                    } => (z + initial_accumulator_value)?,
                    _ => z,
                })
            })
            .collect()
    }

    /// The scalars of this step, where `st.t` is already incremented. Updates
    /// NAdam's mu product, which torch keeps in a 0-d tensor of the
    /// parameter's precision.
    pub fn scalars(&self, lr: f64, st: &mut ParamState, dtype: DType) -> Scalars {
        let t = st.t as f64;
        // Python's `1 - beta**step`.
        let bc = |b: f64| 1.0 - b.powf(t);
        match self.s {
            RuleSettings::Sgd { momentum } => {
                let (momentum, dampening, nesterov) = match momentum {
                    Momentum::None => (0.0, 0.0, false),
                    Momentum::Heavy {
                        momentum,
                        dampening,
                    } => (momentum, dampening, false),
                    Momentum::Nesterov { momentum } => (momentum, 0.0, true),
                };
                Scalars::Sgd {
                    lr,
                    momentum,
                    dampening,
                    nesterov,
                    // torch: the first step copies the gradient into the buffer.
                    first: st.t == 1,
                }
            }
            RuleSettings::Adagrad { lr_decay, eps, .. } => Scalars::Adagrad {
                clr: lr / (1.0 + (t - 1.0) * lr_decay),
                eps,
            },
            RuleSettings::Rmsprop {
                alpha,
                eps,
                centered,
                momentum,
            } => Scalars::Rmsprop {
                lr,
                alpha,
                eps,
                centered,
                momentum,
            },
            RuleSettings::Adadelta { rho, eps } => Scalars::Adadelta { lr, rho, eps },
            RuleSettings::Adam {
                beta1: b1,
                beta2: b2,
                eps,
                amsgrad,
            } => Scalars::Adam {
                lr,
                b1,
                b2,
                eps,
                amsgrad,
                step_size: lr / bc(b1),
                inv_bc2_sqrt: 1.0 / bc(b2).sqrt(),
            },
            RuleSettings::Nadam {
                beta1: b1,
                beta2: b2,
                eps,
                momentum_decay: psi,
            } => {
                let mu = b1 * (1.0 - 0.5 * 0.96f64.powf(t * psi));
                let mu_next = b1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * psi));
                st.mu_product = match dtype {
                    DType::F64 => st.mu_product * mu,
                    _ => (st.mu_product as f32 * mu as f32) as f64,
                };
                Scalars::Nadam {
                    lr,
                    b1,
                    b2,
                    eps,
                    inv_bc2: 1.0 / bc(b2),
                    c_grad: -lr * (1.0 - mu) / (1.0 - st.mu_product),
                    c_mom: (-lr * mu_next) / (1.0 - st.mu_product * mu_next),
                }
            }
            RuleSettings::Radam {
                beta1: b1,
                beta2: b2,
                eps,
            } => {
                let bc2 = bc(b2);
                let rho_inf = 2.0 / (1.0 - b2) - 1.0;
                let rho_t = rho_inf - 2.0 * t * b2.powf(t) / bc2;
                let rect = (rho_t > 5.0).then(|| {
                    ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                        .sqrt()
                });
                Scalars::Radam {
                    lr,
                    b1,
                    b2,
                    eps,
                    inv_bc1: 1.0 / bc(b1),
                    rect,
                    bc2_sqrt: bc2.sqrt(),
                }
            }
            RuleSettings::Adamax {
                beta1: b1,
                beta2: b2,
                eps,
            } => Scalars::Adamax {
                lr,
                b1,
                b2,
                eps,
                clr: lr / bc(b1),
            },
        }
    }
}

/// torch's `a.lerp_(b, w)`: `a + w*(b - a)` for `w < 0.5`, else
/// `b - (b - a)*(1 - w)`.
fn lerp(a: &Tensor, b: &Tensor, w: f64) -> Result<Tensor> {
    let diff = (b - a)?;
    Ok(if w < 0.5 {
        (a + (diff * w)?)?
    } else {
        (b - (diff * (1.0 - w))?)?
    })
}

/// torch's `a.mul_(decay).addcmul_(g, g, value=1 - decay)`.
fn ema_sq(a: &Tensor, g: &Tensor, decay: f64) -> Result<Tensor> {
    Ok(((a * decay)? + ((g * (1.0 - decay))? * g)?)?)
}

/// The Adam-family moment block shared by Adam, AMSGrad, AdamW, Adam+L2,
/// NAdam and RAdam: `m <- lerp(m, g, 1 - b1)`, `v <- b2*v + (1 - b2)*g^2`.
fn moments(st: &mut [Tensor], g: &Tensor, b1: f64, b2: f64) -> Result<(Tensor, Tensor)> {
    let m = lerp(&st[0], g, 1.0 - b1)?;
    let v = ema_sq(&st[1], g, b2)?;
    st[0] = m.clone();
    st[1] = v.clone();
    Ok((m, v))
}

/// `lr / denom` per coordinate, when asked for.
fn per_coord(want: bool, lr: f64, denom: &Tensor) -> Result<StepSize> {
    Ok(if want {
        StepSize::PerCoord((denom.recip()? * lr)?)
    } else {
        StepSize::Unknown
    })
}

/// The reference step on tensors: returns the new parameter and the step
/// size. `st` holds the state tensors in `state_names` order.
pub(crate) fn step_tensors(
    sc: &Scalars,
    want: bool,
    p: &Tensor,
    g: &Tensor,
    st: &mut [Tensor],
) -> Result<(Tensor, StepSize)> {
    let k = st.len();
    Ok(match *sc {
        Scalars::Sgd {
            lr,
            momentum,
            dampening,
            nesterov,
            first,
        } => {
            let d = if momentum != 0.0 {
                let buf = if first {
                    g.clone()
                } else {
                    ((&st[0] * momentum)? + (g * (1.0 - dampening))?)?
                };
                st[0] = buf.clone();
                if nesterov {
                    (g + (buf * momentum)?)?
                } else {
                    buf
                }
            } else {
                g.clone()
            };
            ((p + (d * -lr)?)?, StepSize::Uniform(lr))
        }
        Scalars::Adagrad { clr, eps } => {
            let sum = (&st[0] + g.sqr()?)?;
            let std = (sum.sqrt()? + eps)?;
            st[0] = sum;
            ((p + ((g / &std)? * -clr)?)?, per_coord(want, clr, &std)?)
        }
        Scalars::Rmsprop {
            lr,
            alpha,
            eps,
            centered,
            momentum,
        } => {
            let sq = ema_sq(&st[0], g, alpha)?;
            let avg = if centered {
                let ga = lerp(&st[k - 1], g, 1.0 - alpha)?;
                let avg = (&sq - ga.sqr()?)?.sqrt()?;
                st[k - 1] = ga;
                avg
            } else {
                sq.sqrt()?
            };
            let avg = (avg + eps)?;
            st[0] = sq;
            let new_p = if momentum > 0.0 {
                let buf = ((&st[1] * momentum)? + (g / &avg)?)?;
                st[1] = buf.clone();
                (p + (buf * -lr)?)?
            } else {
                (p + ((g / &avg)? * -lr)?)?
            };
            (new_p, per_coord(want, lr, &avg)?)
        }
        Scalars::Adadelta { lr, rho, eps } => {
            let sq = ema_sq(&st[0], g, rho)?;
            // eps sits inside both square roots (torch).
            let std = (&sq + eps)?.sqrt()?;
            let ratio = ((&st[1] + eps)?.sqrt()? / &std)?;
            let delta = (&ratio * g)?;
            st[1] = ema_sq(&st[1], &delta, rho)?;
            st[0] = sq;
            let size = if want {
                StepSize::PerCoord((ratio * lr)?)
            } else {
                StepSize::Unknown
            };
            ((p + (delta * -lr)?)?, size)
        }
        Scalars::Adam {
            lr,
            b1,
            b2,
            eps,
            amsgrad,
            step_size,
            inv_bc2_sqrt,
        } => {
            let (m, v) = moments(st, g, b1, b2)?;
            // AMSGrad: the max is over the raw v; bias correction comes after.
            let v_used = if amsgrad {
                st[2] = st[2].maximum(&v)?;
                st[2].clone()
            } else {
                v
            };
            let denom = ((v_used.sqrt()? * inv_bc2_sqrt)? + eps)?;
            (
                (p + ((&m / &denom)? * -step_size)?)?,
                per_coord(want, lr, &denom)?,
            )
        }
        Scalars::Nadam {
            lr,
            b1,
            b2,
            eps,
            inv_bc2,
            c_grad,
            c_mom,
        } => {
            let (m, v) = moments(st, g, b1, b2)?;
            // NAdam's eps goes after sqrt(v / bc2), unlike Adam's sqrt(v)/sqrt(bc2).
            let denom = ((v * inv_bc2)?.sqrt()? + eps)?;
            let new_p = (p + ((g / &denom)? * c_grad)?)?;
            let new_p = (new_p + ((&m / &denom)? * c_mom)?)?;
            (new_p, per_coord(want, lr, &denom)?)
        }
        Scalars::Radam {
            lr,
            b1,
            b2,
            eps,
            inv_bc1,
            rect,
            bc2_sqrt,
        } => {
            let (m, v) = moments(st, g, b1, b2)?;
            let m_hat = (m * inv_bc1)?;
            let (update, size) = match rect {
                Some(r) => {
                    // eps is added to sqrt(v) before the bias correction (torch).
                    let adaptive = ((v.sqrt()? + eps)?.recip()? * bc2_sqrt)?;
                    let update = (((m_hat * lr)? * &adaptive)? * r)?;
                    let size = if want {
                        StepSize::PerCoord((adaptive * (lr * r))?)
                    } else {
                        StepSize::Unknown
                    };
                    (update, size)
                }
                None => ((m_hat * lr)?, StepSize::Uniform(lr)),
            };
            ((p - update)?, size)
        }
        Scalars::Adamax {
            lr,
            b1,
            b2,
            eps,
            clr,
        } => {
            let m = lerp(&st[0], g, 1.0 - b1)?;
            // eps is added to |g| inside the max (torch).
            let u = (&st[1] * b2)?.maximum(&(g.abs()? + eps)?)?;
            let new_p = (p + ((&m / &u)? * -clr)?)?;
            let size = per_coord(want, lr, &u)?;
            st[0] = m;
            st[1] = u;
            (new_p, size)
        }
    })
}
