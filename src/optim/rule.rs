//! The per-tensor update rules and the blocks they share.
//!
//! A [`Rule`] turns one parameter, its (already regularised) gradient and its
//! state into the new parameter value, following PyTorch's `_single_tensor_*`
//! functions operation by operation, so that f64 results agree to rounding
//! and f32 results to a few ulps. Regularisation is not the rule's business:
//! the driver in `mod.rs` adds coupled terms to the gradient before the rule
//! runs, decays decoupled weights before it, and applies the proximal L1 step
//! after it with the per-coordinate step size the rule reports.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::config::{OptimizerConfig, OptimizerKind};

/// What one step of one parameter needs besides the tensors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepCtx {
    pub lr: f64,
    /// Whether the caller needs the per-coordinate step size (proximal L1).
    pub want_step_size: bool,
}

/// The effective learning rate the rule applied to each coordinate's
/// (bias-corrected) gradient direction; the proximal L1 threshold is this
/// times the L1 strength.
pub(crate) enum StepSize {
    Uniform(f64),
    PerCoord(Tensor),
    /// Not computed (the caller did not ask).
    Unknown,
}

/// The state of one parameter: torch's step count (1 on the first update), the state tensors in the
/// order of [`Rule::state_names`], and NAdam's running product of mu.
pub(crate) struct ParamState {
    pub t: u64,
    pub tensors: Vec<Tensor>,
    pub mu_product: f64,
}

pub(crate) trait Rule: Send + Sync {
    /// torch's names of the state tensors, in the order `init` makes them.
    fn state_names(&self) -> Vec<&'static str>;
    /// The initial state tensors of a parameter.
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>>;
    /// One update. Returns the new parameter and the step size it used.
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)>;
}

/// Builds the rule for a configuration.
pub(crate) fn rule_for(cfg: &OptimizerConfig) -> Box<dyn Rule> {
    use OptimizerKind::*;
    let moments = || Moments {
        beta1: cfg.get("beta1"),
        beta2: cfg.get("beta2"),
    };
    match cfg.kind {
        Sgd => Box::new(Sgd_ {
            momentum: cfg.get("momentum"),
            dampening: cfg.get("dampening"),
            nesterov: cfg.flag("nesterov"),
        }),
        Adagrad => Box::new(Adagrad_ {
            lr_decay: cfg.get("lr_decay"),
            init_acc: cfg.get("initial_accumulator_value"),
            eps: cfg.get("eps"),
        }),
        Rmsprop => Box::new(Rmsprop_ {
            alpha: cfg.get("alpha"),
            eps: cfg.get("eps"),
            centered: cfg.flag("centered"),
            momentum: cfg.get("momentum"),
        }),
        Adadelta => Box::new(Adadelta_ {
            rho: cfg.get("rho"),
            eps: cfg.get("eps"),
        }),
        Adam | Adamw => Box::new(Adam_ {
            moments: moments(),
            eps: cfg.get("eps"),
            amsgrad: cfg.flag("amsgrad"),
        }),
        Nadam => Box::new(Nadam_ {
            moments: moments(),
            eps: cfg.get("eps"),
            momentum_decay: cfg.get("momentum_decay"),
        }),
        Radam => Box::new(Radam_ {
            moments: moments(),
            eps: cfg.get("eps"),
        }),
        Adamax => Box::new(Adamax_ {
            moments: moments(),
            eps: cfg.get("eps"),
        }),
    }
}

// ---------------------------------------------------------------------------
// Shared blocks.

/// torch's `a.lerp_(b, w)`: `a + w*(b - a)` for `w < 0.5`, else
/// `b - (b - a)*(1 - w)`.
pub(crate) fn lerp(a: &Tensor, b: &Tensor, w: f64) -> Result<Tensor> {
    let diff = (b - a)?;
    Ok(if w < 0.5 {
        (a + (diff * w)?)?
    } else {
        (b - (diff * (1.0 - w))?)?
    })
}

/// torch's `a.mul_(decay).addcmul_(g, g, value=1 - decay)`: an exponential
/// moving average of the squared gradient.
pub(crate) fn ema_sq(a: &Tensor, g: &Tensor, decay: f64) -> Result<Tensor> {
    Ok(((a * decay)? + ((g * (1.0 - decay))? * g)?)?)
}

/// The moment estimates every Adam-family rule shares, so that Adam,
/// AMSGrad, AdamW, Adam+L2, NAdam and RAdam cannot drift apart:
/// `m <- lerp(m, g, 1 - beta1)`, `v <- beta2*v + (1 - beta2)*g^2`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Moments {
    pub beta1: f64,
    pub beta2: f64,
}

impl Moments {
    fn update(&self, m: &Tensor, v: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((lerp(m, g, 1.0 - self.beta1)?, ema_sq(v, g, self.beta2)?))
    }
    /// `(1 - beta1^t, 1 - beta2^t)`, computed as Python's `1 - beta**step`.
    fn bias_corrections(&self, t: u64) -> (f64, f64) {
        let t = t as f64;
        (1.0 - self.beta1.powf(t), 1.0 - self.beta2.powf(t))
    }
}

/// `lr / denom`, the per-coordinate step size of a rule that divides by `denom`.
fn per_coord(ctx: StepCtx, denom: &Tensor) -> Result<StepSize> {
    Ok(if ctx.want_step_size {
        StepSize::PerCoord((denom.recip()? * ctx.lr)?)
    } else {
        StepSize::Unknown
    })
}

// ---------------------------------------------------------------------------
// The rules. Struct names carry a trailing underscore to keep them apart
// from the `OptimizerKind` variants.

struct Sgd_ {
    momentum: f64,
    dampening: f64,
    nesterov: bool,
}

impl Rule for Sgd_ {
    fn state_names(&self) -> Vec<&'static str> {
        if self.momentum != 0.0 {
            vec!["momentum_buffer"]
        } else {
            vec![]
        }
    }
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        Ok(if self.momentum != 0.0 {
            vec![p.zeros_like()?]
        } else {
            vec![]
        })
    }
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)> {
        let dir = if self.momentum != 0.0 {
            // torch: the first step copies the gradient into the buffer, undamped.
            let buf = if st.t == 1 {
                g.clone()
            } else {
                ((&st.tensors[0] * self.momentum)? + (g * (1.0 - self.dampening))?)?
            };
            st.tensors[0] = buf.clone();
            if self.nesterov {
                (g + (buf * self.momentum)?)?
            } else {
                buf
            }
        } else {
            g.clone()
        };
        Ok(((p + (dir * -ctx.lr)?)?, StepSize::Uniform(ctx.lr)))
    }
}

struct Adagrad_ {
    lr_decay: f64,
    init_acc: f64,
    eps: f64,
}

impl Rule for Adagrad_ {
    fn state_names(&self) -> Vec<&'static str> {
        vec!["sum"]
    }
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![(p.zeros_like()? + self.init_acc)?])
    }
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)> {
        let clr = ctx.lr / (1.0 + (st.t - 1) as f64 * self.lr_decay);
        let sum = (&st.tensors[0] + g.sqr()?)?;
        let std = (sum.sqrt()? + self.eps)?;
        let new_p = (p + ((g / &std)? * -clr)?)?;
        st.tensors[0] = sum;
        let size = per_coord(StepCtx { lr: clr, ..ctx }, &std)?;
        Ok((new_p, size))
    }
}

struct Rmsprop_ {
    alpha: f64,
    eps: f64,
    centered: bool,
    momentum: f64,
}

impl Rule for Rmsprop_ {
    fn state_names(&self) -> Vec<&'static str> {
        let mut names = vec!["square_avg"];
        if self.momentum > 0.0 {
            names.push("momentum_buffer");
        }
        if self.centered {
            names.push("grad_avg");
        }
        names
    }
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        self.state_names()
            .iter()
            .map(|_| Ok(p.zeros_like()?))
            .collect()
    }
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)> {
        let sq = ema_sq(&st.tensors[0], g, self.alpha)?;
        let avg = if self.centered {
            let gi = st.tensors.len() - 1;
            let ga = lerp(&st.tensors[gi], g, 1.0 - self.alpha)?;
            let avg = (&sq - ga.sqr()?)?.sqrt()?;
            st.tensors[gi] = ga;
            avg
        } else {
            sq.sqrt()?
        };
        let avg = (avg + self.eps)?;
        st.tensors[0] = sq;
        let new_p = if self.momentum > 0.0 {
            let buf = ((&st.tensors[1] * self.momentum)? + (g / &avg)?)?;
            let new_p = (p + (&buf * -ctx.lr)?)?;
            st.tensors[1] = buf;
            new_p
        } else {
            (p + ((g / &avg)? * -ctx.lr)?)?
        };
        Ok((new_p, per_coord(ctx, &avg)?))
    }
}

struct Adadelta_ {
    rho: f64,
    eps: f64,
}

impl Rule for Adadelta_ {
    fn state_names(&self) -> Vec<&'static str> {
        vec!["square_avg", "acc_delta"]
    }
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![p.zeros_like()?, p.zeros_like()?])
    }
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)> {
        let sq = ema_sq(&st.tensors[0], g, self.rho)?;
        let std = (&sq + self.eps)?.sqrt()?;
        // eps sits inside both square roots (torch).
        let ratio = ((&st.tensors[1] + self.eps)?.sqrt()? / &std)?;
        let delta = (&ratio * g)?;
        let acc = ema_sq(&st.tensors[1], &delta, self.rho)?;
        let new_p = (p + (delta * -ctx.lr)?)?;
        st.tensors = vec![sq, acc];
        let size = if ctx.want_step_size {
            StepSize::PerCoord((ratio * ctx.lr)?)
        } else {
            StepSize::Unknown
        };
        Ok((new_p, size))
    }
}

/// Adam and AMSGrad; with the driver's decay blocks also Adam+L2 and AdamW.
struct Adam_ {
    moments: Moments,
    eps: f64,
    amsgrad: bool,
}

impl Rule for Adam_ {
    fn state_names(&self) -> Vec<&'static str> {
        let mut names = vec!["exp_avg", "exp_avg_sq"];
        if self.amsgrad {
            names.push("max_exp_avg_sq");
        }
        names
    }
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        self.state_names()
            .iter()
            .map(|_| Ok(p.zeros_like()?))
            .collect()
    }
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)> {
        let (m, v) = self.moments.update(&st.tensors[0], &st.tensors[1], g)?;
        let (bc1, bc2) = self.moments.bias_corrections(st.t);
        let step_size = ctx.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        // AMSGrad: the max is over the raw v; bias correction comes after.
        let v_used = if self.amsgrad {
            let vmax = st.tensors[2].maximum(&v)?;
            st.tensors[2] = vmax.clone();
            vmax
        } else {
            v.clone()
        };
        let denom = ((v_used.sqrt()? / bc2_sqrt)? + self.eps)?;
        let new_p = (p + ((&m / &denom)? * -step_size)?)?;
        st.tensors[0] = m;
        st.tensors[1] = v;
        Ok((new_p, per_coord(ctx, &denom)?))
    }
}

struct Nadam_ {
    moments: Moments,
    eps: f64,
    momentum_decay: f64,
}

impl Rule for Nadam_ {
    fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![p.zeros_like()?, p.zeros_like()?])
    }
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)> {
        let t = st.t as f64;
        let b1 = self.moments.beta1;
        let (_, bc2) = self.moments.bias_corrections(st.t);
        let mu = b1 * (1.0 - 0.5 * 0.96f64.powf(t * self.momentum_decay));
        let mu_next = b1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * self.momentum_decay));
        // torch keeps mu_product in a 0-d tensor of the parameter's precision.
        st.mu_product = match p.dtype() {
            DType::F64 => st.mu_product * mu,
            _ => (st.mu_product as f32 * mu as f32) as f64,
        };
        let (m, v) = self.moments.update(&st.tensors[0], &st.tensors[1], g)?;
        // NAdam's eps goes after sqrt(v / bc2), unlike Adam's sqrt(v)/sqrt(bc2).
        let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
        let c_grad = -ctx.lr * (1.0 - mu) / (1.0 - st.mu_product);
        let c_mom = (-ctx.lr * mu_next) / (1.0 - st.mu_product * mu_next);
        let new_p = (p + ((g / &denom)? * c_grad)?)?;
        let new_p = (new_p + ((&m / &denom)? * c_mom)?)?;
        st.tensors = vec![m, v];
        Ok((new_p, per_coord(ctx, &denom)?))
    }
}

struct Radam_ {
    moments: Moments,
    eps: f64,
}

impl Rule for Radam_ {
    fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![p.zeros_like()?, p.zeros_like()?])
    }
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)> {
        let (m, v) = self.moments.update(&st.tensors[0], &st.tensors[1], g)?;
        let (bc1, bc2) = self.moments.bias_corrections(st.t);
        let b2 = self.moments.beta2;
        let t = st.t as f64;
        let m_hat = (&m / bc1)?;
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powf(t) / bc2;
        let (update, size) = if rho_t > 5.0 {
            let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt();
            // eps is added to sqrt(v) before the bias correction (torch).
            let adaptive = ((v.sqrt()? + self.eps)?.recip()? * bc2.sqrt())?;
            let update = (((m_hat * ctx.lr)? * &adaptive)? * rect)?;
            let size = if ctx.want_step_size {
                StepSize::PerCoord((adaptive * (ctx.lr * rect))?)
            } else {
                StepSize::Unknown
            };
            (update, size)
        } else {
            ((m_hat * ctx.lr)?, StepSize::Uniform(ctx.lr))
        };
        st.tensors = vec![m, v];
        Ok(((p - update)?, size))
    }
}

struct Adamax_ {
    moments: Moments,
    eps: f64,
}

impl Rule for Adamax_ {
    fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_inf"]
    }
    fn init(&self, p: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![p.zeros_like()?, p.zeros_like()?])
    }
    fn step(
        &self,
        ctx: StepCtx,
        p: &Tensor,
        g: &Tensor,
        st: &mut ParamState,
    ) -> Result<(Tensor, StepSize)> {
        let m = lerp(&st.tensors[0], g, 1.0 - self.moments.beta1)?;
        // eps is added to |g| inside the max (torch).
        let u = (&st.tensors[1] * self.moments.beta2)?.maximum(&(g.abs()? + self.eps)?)?;
        let (bc1, _) = self.moments.bias_corrections(st.t);
        let clr = ctx.lr / bc1;
        let new_p = (p + ((&m / &u)? * -clr)?)?;
        let size = per_coord(ctx, &u)?;
        st.tensors = vec![m, u];
        Ok((new_p, size))
    }
}
