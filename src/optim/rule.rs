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

/// Each rule's hyper-parameters (torch's names; `beta1`, `beta2` are
/// `betas`). AdamW is [`RuleSettings::Adam`] with [`Decay::Decoupled`](super::Decay::Decoupled).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RuleSettings {
    Sgd {
        momentum: Momentum,
    },
    Adagrad {
        lr_decay: f64,
        initial_accumulator_value: f64,
        eps: f64,
    },
    Rmsprop {
        alpha: f64,
        eps: f64,
        centered: bool,
        momentum: f64,
    },
    Adadelta {
        rho: f64,
        eps: f64,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        amsgrad: bool,
    },
    Nadam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        momentum_decay: f64,
    },
    Radam {
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    Adamax {
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    Lion {
        beta1: f64,
        beta2: f64,
    },
}

/// SGD's momentum: none (`momentum = 0`), heavy-ball with dampening, or
/// Nesterov's (which torch allows only without dampening).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Momentum {
    None,
    Heavy { momentum: f64, dampening: f64 },
    Nesterov { momentum: f64 },
}

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

/// Each rule's per-step scalars, one struct per rule (`Scalars::Adam(sc::Adam { .. })`).
pub(crate) mod sc {
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Sgd {
        pub lr: f64,
        pub momentum: f64,
        pub dampening: f64,
        pub nesterov: bool,
        pub first: bool,
    }

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Adagrad {
        pub clr: f64,
        pub eps: f64,
    }

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Rmsprop {
        pub lr: f64,
        pub alpha: f64,
        pub eps: f64,
        pub centered: bool,
        pub momentum: f64,
    }

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Adadelta {
        pub lr: f64,
        pub rho: f64,
        pub eps: f64,
    }

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Adam {
        pub lr: f64,
        pub b1: f64,
        pub b2: f64,
        pub eps: f64,
        pub amsgrad: bool,
        pub step_size: f64,
        pub inv_bc2_sqrt: f64,
    }

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Nadam {
        pub lr: f64,
        pub b1: f64,
        pub b2: f64,
        pub eps: f64,
        pub inv_bc2: f64,
        pub c_grad: f64,
        pub c_mom: f64,
    }

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Radam {
        pub lr: f64,
        pub b1: f64,
        pub b2: f64,
        pub eps: f64,
        pub inv_bc1: f64,
        pub rect: Option<f64>,
        pub bc2_sqrt: f64,
    }

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Adamax {
        pub lr: f64,
        pub b1: f64,
        pub b2: f64,
        pub eps: f64,
        pub clr: f64,
    }

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Lion {
        pub lr: f64,
        pub b1: f64,
        pub b2: f64,
    }
}

/// A rule's per-step scalars, computed once per tensor and step.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalars {
    Sgd(sc::Sgd),
    Adagrad(sc::Adagrad),
    Rmsprop(sc::Rmsprop),
    Adadelta(sc::Adadelta),
    Adam(sc::Adam),
    Nadam(sc::Nadam),
    Radam(sc::Radam),
    Adamax(sc::Adamax),
    Lion(sc::Lion),
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
            Lion { .. } => vec!["exp_avg"],
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
                Scalars::Sgd(sc::Sgd {
                    lr,
                    momentum,
                    dampening,
                    nesterov,
                    // torch: the first step copies the gradient into the buffer.
                    first: st.t == 1,
                })
            }
            RuleSettings::Adagrad { lr_decay, eps, .. } => Scalars::Adagrad(sc::Adagrad {
                clr: lr / (1.0 + (t - 1.0) * lr_decay),
                eps,
            }),
            RuleSettings::Rmsprop {
                alpha,
                eps,
                centered,
                momentum,
            } => Scalars::Rmsprop(sc::Rmsprop {
                lr,
                alpha,
                eps,
                centered,
                momentum,
            }),
            RuleSettings::Adadelta { rho, eps } => Scalars::Adadelta(sc::Adadelta { lr, rho, eps }),
            RuleSettings::Adam {
                beta1: b1,
                beta2: b2,
                eps,
                amsgrad,
            } => Scalars::Adam(sc::Adam {
                lr,
                b1,
                b2,
                eps,
                amsgrad,
                step_size: lr / bc(b1),
                inv_bc2_sqrt: 1.0 / bc(b2).sqrt(),
            }),
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
                Scalars::Nadam(sc::Nadam {
                    lr,
                    b1,
                    b2,
                    eps,
                    inv_bc2: 1.0 / bc(b2),
                    c_grad: -lr * (1.0 - mu) / (1.0 - st.mu_product),
                    c_mom: (-lr * mu_next) / (1.0 - st.mu_product * mu_next),
                })
            }
            RuleSettings::Radam {
                beta1: b1,
                beta2: b2,
                eps,
            } => Scalars::Radam(sc::Radam {
                lr,
                b1,
                b2,
                eps,
                inv_bc1: 1.0 / bc(b1),
                rect: radam_rect(b2, t),
                bc2_sqrt: bc(b2).sqrt(),
            }),
            RuleSettings::Adamax {
                beta1: b1,
                beta2: b2,
                eps,
            } => Scalars::Adamax(sc::Adamax {
                lr,
                b1,
                b2,
                eps,
                clr: lr / bc(b1),
            }),
            RuleSettings::Lion {
                beta1: b1,
                beta2: b2,
            } => Scalars::Lion(sc::Lion { lr, b1, b2 }),
        }
    }
}

/// RAdam's rectification at step `t`, from step 6 on (`rho_t > 5`).
fn radam_rect(b2: f64, t: f64) -> Option<f64> {
    let bc2 = 1.0 - b2.powf(t);
    let rho_inf = 2.0 / (1.0 - b2) - 1.0;
    let rho_t = rho_inf - 2.0 * t * b2.powf(t) / bc2;
    (rho_t > 5.0).then(|| {
        ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            .sqrt()
    })
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

/// One reference step's inputs: the parameter (after decoupled decay), the
/// gradient (with the coupled terms), the state tensors in `state_names`
/// order, and whether the caller wants the step size (for proximal L1).
struct Io<'a> {
    want: bool,
    p: &'a Tensor,
    g: &'a Tensor,
    st: &'a mut [Tensor],
}

/// What a rule's reference step returns: the new parameter and the step size.
type Out = Result<(Tensor, StepSize)>;

/// The reference step on tensors: returns the new parameter and the step
/// size. `st` holds the state tensors in `state_names` order.
pub(crate) fn step_tensors(
    sc: &Scalars,
    want: bool,
    p: &Tensor,
    g: &Tensor,
    st: &mut [Tensor],
) -> Out {
    let io = Io { want, p, g, st };
    match sc {
        Scalars::Sgd(s) => sgd(s, io),
        Scalars::Adagrad(s) => adagrad(s, io),
        Scalars::Rmsprop(s) => rmsprop(s, io),
        Scalars::Adadelta(s) => adadelta(s, io),
        Scalars::Adam(s) => adam(s, io),
        Scalars::Nadam(s) => nadam(s, io),
        Scalars::Radam(s) => radam(s, io),
        Scalars::Adamax(s) => adamax(s, io),
        Scalars::Lion(s) => lion(s, io),
    }
}

fn sgd(s: &sc::Sgd, Io { p, g, st, .. }: Io) -> Out {
    let d = if s.momentum != 0.0 {
        let buf = if s.first {
            g.clone()
        } else {
            ((&st[0] * s.momentum)? + (g * (1.0 - s.dampening))?)?
        };
        st[0] = buf.clone();
        if s.nesterov {
            (g + (buf * s.momentum)?)?
        } else {
            buf
        }
    } else {
        g.clone()
    };
    Ok(((p + (d * -s.lr)?)?, StepSize::Uniform(s.lr)))
}

fn adagrad(s: &sc::Adagrad, Io { want, p, g, st }: Io) -> Out {
    let sum = (&st[0] + g.sqr()?)?;
    let std = (sum.sqrt()? + s.eps)?;
    st[0] = sum;
    Ok((
        (p + ((g / &std)? * -s.clr)?)?,
        per_coord(want, s.clr, &std)?,
    ))
}

fn rmsprop(s: &sc::Rmsprop, Io { want, p, g, st }: Io) -> Out {
    let k = st.len();
    let sq = ema_sq(&st[0], g, s.alpha)?;
    let avg = if s.centered {
        let ga = lerp(&st[k - 1], g, 1.0 - s.alpha)?;
        let avg = (&sq - ga.sqr()?)?.sqrt()?;
        st[k - 1] = ga;
        avg
    } else {
        sq.sqrt()?
    };
    let avg = (avg + s.eps)?;
    st[0] = sq;
    let new_p = if s.momentum > 0.0 {
        let buf = ((&st[1] * s.momentum)? + (g / &avg)?)?;
        st[1] = buf.clone();
        (p + (buf * -s.lr)?)?
    } else {
        (p + ((g / &avg)? * -s.lr)?)?
    };
    Ok((new_p, per_coord(want, s.lr, &avg)?))
}

fn adadelta(s: &sc::Adadelta, Io { want, p, g, st }: Io) -> Out {
    let sq = ema_sq(&st[0], g, s.rho)?;
    // eps sits inside both square roots (torch).
    let std = (&sq + s.eps)?.sqrt()?;
    let ratio = ((&st[1] + s.eps)?.sqrt()? / &std)?;
    let delta = (&ratio * g)?;
    st[1] = ema_sq(&st[1], &delta, s.rho)?;
    st[0] = sq;
    let size = if want {
        StepSize::PerCoord((ratio * s.lr)?)
    } else {
        StepSize::Unknown
    };
    Ok(((p + (delta * -s.lr)?)?, size))
}

/// Adam, Adam+L2, AdamW and AMSGrad.
fn adam(s: &sc::Adam, Io { want, p, g, st }: Io) -> Out {
    let (m, v) = moments(st, g, s.b1, s.b2)?;
    // AMSGrad: the max is over the raw v; bias correction comes after.
    let v_used = if s.amsgrad {
        st[2] = st[2].maximum(&v)?;
        st[2].clone()
    } else {
        v
    };
    let denom = ((v_used.sqrt()? * s.inv_bc2_sqrt)? + s.eps)?;
    Ok((
        (p + ((&m / &denom)? * -s.step_size)?)?,
        per_coord(want, s.lr, &denom)?,
    ))
}

fn nadam(s: &sc::Nadam, Io { want, p, g, st }: Io) -> Out {
    let (m, v) = moments(st, g, s.b1, s.b2)?;
    // NAdam's eps goes after sqrt(v / bc2), unlike Adam's sqrt(v)/sqrt(bc2).
    let denom = ((v * s.inv_bc2)?.sqrt()? + s.eps)?;
    let new_p = (p + ((g / &denom)? * s.c_grad)?)?;
    let new_p = (new_p + ((&m / &denom)? * s.c_mom)?)?;
    Ok((new_p, per_coord(want, s.lr, &denom)?))
}

fn radam(s: &sc::Radam, Io { want, p, g, st }: Io) -> Out {
    let (m, v) = moments(st, g, s.b1, s.b2)?;
    let m_hat = (m * s.inv_bc1)?;
    let (update, size) = match s.rect {
        Some(r) => {
            // eps is added to sqrt(v) before the bias correction (torch).
            let adaptive = ((v.sqrt()? + s.eps)?.recip()? * s.bc2_sqrt)?;
            let update = (((m_hat * s.lr)? * &adaptive)? * r)?;
            let size = if want {
                StepSize::PerCoord((adaptive * (s.lr * r))?)
            } else {
                StepSize::Unknown
            };
            (update, size)
        }
        None => ((m_hat * s.lr)?, StepSize::Uniform(s.lr)),
    };
    Ok(((p - update)?, size))
}

fn adamax(s: &sc::Adamax, Io { want, p, g, st }: Io) -> Out {
    let m = lerp(&st[0], g, 1.0 - s.b1)?;
    // eps is added to |g| inside the max (torch).
    let u = (&st[1] * s.b2)?.maximum(&(g.abs()? + s.eps)?)?;
    let new_p = (p + ((&m / &u)? * -s.clr)?)?;
    let size = per_coord(want, s.lr, &u)?;
    st[0] = m;
    st[1] = u;
    Ok((new_p, size))
}

/// Lion (lion-pytorch's `update_fn`): a step of exactly lr per coordinate in
/// the sign of an interpolation of momentum and gradient (sign(0) = 0),
/// then the momentum's own update with b2.
fn lion(s: &sc::Lion, Io { p, g, st, .. }: Io) -> Out {
    let c = ((&st[0] * s.b1)? + (g * (1.0 - s.b1))?)?;
    let new_p = (p - (c.sign()? * s.lr)?)?;
    st[0] = ((&st[0] * s.b2)? + (g * (1.0 - s.b2))?)?;
    Ok((new_p, StepSize::Uniform(s.lr)))
}
