//! Optimizers, hand-written on Candle tensors, step for step equal to
//! PyTorch's `torch.optim`.
//!
//! An optimizer here is a chain, as in optax:
//!
//! 1. coupled terms join the gradient: `g += l1*sign(p)` (L1 subgradient),
//!    then `g += weight_decay*p` (L2, torch's `weight_decay`);
//! 2. or decoupled decay shrinks the weight first: `p *= 1 - lr*weight_decay`
//!    (AdamW, and `decoupled_weight_decay = true` on any optimizer);
//! 3. the optimizer's own [`rule`](rule::Rule) updates the state and the
//!    parameter;
//! 4. proximal L1 soft-thresholds the result with the rule's per-coordinate
//!    step size: `p = sign(p)*max(|p| - step*l1_prox, 0)` (exact zeros).
//!
//! Adam+L2 and AdamW are the same rule with the decay block in a different
//! place; AMSGrad, NAdam and RAdam share Adam's moment block. With
//! `exempt_1d = true`, tensors with fewer than two dimensions (biases, norm
//! gains) skip steps 1, 2 and 4, like torch's usual "no decay" group.
//!
//! Parameters are always visited in sorted name order.

pub mod config;
mod cuda;
mod fused;
#[macro_use]
mod kernel_gen;
mod kernels;
mod keys;
mod mask;
pub mod registry;
mod rule;
pub mod variants;

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

pub use config::{Decay, L1, OptimizerConfig, RawValue, Regularization, Settings};
use kernel_gen::KernelReg;
pub use mask::StatePolicy;
pub use registry::{Info, OptimizerKind};
pub use rule::{Momentum, RuleSettings};
use rule::{ParamState, Rule, Scalars, StepSize};

/// An optimizer the experiment runner can hold as `Box<dyn Optimizer>`
/// (unlike `candle_nn::Optimizer`, this trait is object-safe).
pub trait Optimizer: Send {
    /// Updates every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &GradStore) -> Result<()>;

    /// Computes the gradients of `loss` and takes one step.
    fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    fn learning_rate(&self) -> f64;

    /// Sets the learning rate used from the next step on (for schedules).
    fn set_learning_rate(&mut self, lr: f64);

    fn config(&self) -> &OptimizerConfig;

    /// Parameter names in the order they are updated (sorted).
    fn param_names(&self) -> Vec<String>;

    /// The named state of one parameter, with torch's names (`exp_avg`,
    /// `momentum_buffer`, ...) plus `step` (and `mu_product` for NAdam) as
    /// 0-d f64 tensors. `None` for an unknown parameter.
    fn state(&self, param: &str) -> Option<Vec<(String, Tensor)>>;

    /// Bytes of optimizer state over all parameters.
    fn state_bytes(&self) -> usize;

    /// Sets pruning masks (0/1 tensors of their parameters' shapes, by
    /// parameter name; parameters left out are unmasked), replacing any set
    /// before; zeroes the masked weights now and applies `policy` to the
    /// state. From then on masked weights stay exactly zero ([`mask`]).
    fn set_masks(&mut self, masks: BTreeMap<String, Tensor>, policy: StatePolicy) -> Result<()>;

    /// The masks set, by parameter name.
    fn masks(&self) -> BTreeMap<String, Tensor>;
}

/// How steps are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The fused in-place CPU kernels where they apply (contiguous f32/f64
    /// parameters on the CPU), the tensor path elsewhere.
    Auto,
    /// The readable tensor-op path everywhere: the reference.
    Reference,
}

/// Builds the optimizer for `params`, given as (name, variable) pairs in any
/// order. Non-float variables are skipped.
pub fn build(config: &OptimizerConfig, params: Vec<(String, Var)>) -> Result<Box<dyn Optimizer>> {
    build_with(config, params, Backend::Auto)
}

/// As [`build`], choosing the backend.
pub fn build_with(
    config: &OptimizerConfig,
    params: Vec<(String, Var)>,
    backend: Backend,
) -> Result<Box<dyn Optimizer>> {
    Ok(Box::new(ParamOptimizer::new(
        config.clone(),
        params,
        backend,
    )?))
}

/// Builds the optimizer for every variable of a `VarMap`, in name order.
pub fn build_for_varmap(config: &OptimizerConfig, varmap: &VarMap) -> Result<Box<dyn Optimizer>> {
    let params = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    build(config, params)
}

// The reference path's regularisation (the fused kernels' is in the
// kernel table, `kernels.rs`).

/// Step 1: the coupled terms, added to the gradient.
fn coupled_grad(reg: &Regularization, p: &Tensor, g: &Tensor) -> Result<Tensor> {
    let mut g = g.clone();
    if let L1::Subgradient(l1) = reg.l1 {
        g = (g + (p.sign()? * l1)?)?;
    }
    if let Decay::Coupled(wd) = reg.decay {
        g = (g + (p * wd)?)?;
    }
    Ok(g)
}

/// Step 2: decoupled decay, applied to the weight before the rule.
fn decoupled_decay(reg: &Regularization, p: &Tensor, lr: f64) -> Result<Tensor> {
    match reg.decay {
        Decay::Decoupled(wd) => Ok((p * (1.0 - lr * wd))?),
        _ => Ok(p.clone()),
    }
}

/// Step 4: the proximal operator of `step*l1_prox*|p|`, a soft threshold.
fn prox(reg: &Regularization, p: Tensor, step: StepSize) -> Result<Tensor> {
    let L1::Proximal(l1_prox) = reg.l1 else {
        return Ok(p);
    };
    let shrunk = match step {
        StepSize::Uniform(s) => (p.abs()? - s * l1_prox)?,
        StepSize::PerCoord(s) => (p.abs()? - (s * l1_prox)?)?,
        StepSize::Unknown => bail!("internal error: proximal step without a step size"),
    };
    Ok((p.sign()? * shrunk.relu()?)?)
}

/// Where a parameter's state lives.
enum Store {
    /// Candle tensors, for the reference path.
    Tensors(Vec<Tensor>),
    /// Host vectors, updated in place by the fused kernels.
    Host(fused::HostState),
    /// Device tensors, updated in place by the fused CUDA kernels (only
    /// with the `cuda` feature).
    Device(Vec<Tensor>),
}

struct Slot {
    name: String,
    var: Var,
    regularized: bool,
    state: ParamState,
    store: Store,
    mask: Option<Tensor>,
}

/// The driver: walks the parameters in name order and runs the chain.
struct ParamOptimizer {
    config: OptimizerConfig,
    lr: f64,
    reg: Regularization,
    rule: Rule,
    slots: Vec<Slot>,
}

impl ParamOptimizer {
    fn new(
        config: OptimizerConfig,
        mut params: Vec<(String, Var)>,
        backend: Backend,
    ) -> Result<Self> {
        let settings = config.settings()?;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = params.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!("two parameters are both named `{}`", w[0].0);
        }
        let rule = Rule::new(settings.rule);
        let reg = settings.reg;
        let slots = params
            .into_iter()
            .filter(|(_, v)| v.dtype().is_float())
            .map(|(name, var)| {
                let tensors = rule.init(var.as_tensor())?;
                let auto = backend == Backend::Auto;
                #[cfg(feature = "cuda")]
                let on_cuda = cuda::applies(var.as_tensor());
                #[cfg(not(feature = "cuda"))]
                let on_cuda = false;
                let store = if auto && fused::applies(var.as_tensor()) {
                    Store::Host(fused::HostState::from_tensors(&tensors, var.dtype())?)
                } else if auto && on_cuda {
                    Store::Device(tensors)
                } else {
                    Store::Tensors(tensors)
                };
                Ok(Slot {
                    regularized: reg.applies_to(var.rank()),
                    name,
                    var,
                    state: ParamState {
                        t: 0,
                        mu_product: 1.0,
                    },
                    store,
                    mask: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            lr: settings.lr,
            config,
            reg,
            rule,
            slots,
        })
    }
}

impl Optimizer for ParamOptimizer {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let masked = slot.mask.as_ref().map(|m| mask::grad(g, m)).transpose()?;
            let g = masked.as_ref().unwrap_or(g);
            slot.state.t += 1;
            let sc: Scalars = self
                .rule
                .scalars(self.lr, &mut slot.state, slot.var.dtype());
            let reg = if slot.regularized {
                KernelReg {
                    decay: self.reg.decay,
                    l1: self.reg.l1,
                    lr: self.lr,
                }
            } else {
                KernelReg::NONE
            };
            match &mut slot.store {
                Store::Host(host) => fused::step(slot.var.as_tensor(), g, sc, reg, host)?,
                Store::Device(state) => {
                    #[cfg(feature = "cuda")]
                    cuda::step(slot.var.as_tensor(), g, sc, reg, state)?;
                    #[cfg(not(feature = "cuda"))]
                    {
                        let _ = (state, reg, sc);
                        unreachable!("device state is only made with the cuda feature");
                    }
                }
                Store::Tensors(tensors) => {
                    let p = slot.var.as_detached_tensor();
                    let (p, g) = if slot.regularized {
                        (
                            decoupled_decay(&self.reg, &p, self.lr)?,
                            coupled_grad(&self.reg, &p, g)?,
                        )
                    } else {
                        (p, g.clone())
                    };
                    let want = slot.regularized && matches!(self.reg.l1, L1::Proximal(_));
                    let (mut new_p, step) = rule::step_tensors(&sc, want, &p, &g, tensors)?;
                    if slot.regularized {
                        new_p = prox(&self.reg, new_p, step)?;
                    }
                    slot.var.set(&new_p)?;
                }
            }
            if let Some(m) = &slot.mask {
                mask::param(&slot.var, m)?;
            }
        }
        Ok(())
    }

    fn set_masks(&mut self, masks: BTreeMap<String, Tensor>, policy: StatePolicy) -> Result<()> {
        self.set_masks_with(masks, policy)
    }

    fn masks(&self) -> BTreeMap<String, Tensor> {
        self.masks_now()
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn param_names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }

    fn state(&self, param: &str) -> Option<Vec<(String, Tensor)>> {
        let slot = self.slots.iter().find(|s| s.name == param)?;
        let dev = slot.var.device();
        let scalar = |x: f64| Tensor::new(x, dev).expect("a 0-d tensor on the parameter's device");
        let tensors = match &slot.store {
            Store::Tensors(t) => t.clone(),
            Store::Host(h) => h.to_tensors(slot.var.as_tensor()).ok()?,
            // Copies: the kernels update these in place.
            Store::Device(t) => t.iter().map(|t| t.copy()).collect::<Result<_, _>>().ok()?,
        };
        let mut out: Vec<(String, Tensor)> = self
            .rule
            .state_names()
            .into_iter()
            .zip(tensors)
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        out.push(("step".into(), scalar(slot.state.t as f64)));
        if self.config.kind == OptimizerKind::Nadam {
            out.push(("mu_product".into(), scalar(slot.state.mu_product)));
        }
        Some(out)
    }

    fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.store {
                Store::Tensors(ts) | Store::Device(ts) => ts
                    .iter()
                    .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                    .sum(),
                Store::Host(h) => h.bytes(),
            })
            .sum()
    }
}

impl ParamOptimizer {
    /// Sets the masks (replacing any before; see [`mask`]), zeroes the masked weights, and
    /// applies `policy` to the state.
    fn set_masks_with(
        &mut self,
        mut masks: BTreeMap<String, Tensor>,
        policy: StatePolicy,
    ) -> Result<()> {
        if let Some(name) = masks
            .keys()
            .find(|n| !self.slots.iter().any(|s| s.name == **n))
        {
            bail!("a mask names `{name}`, which is not a parameter of this optimizer");
        }
        let mut checked_masks = vec![];
        for slot in &self.slots {
            checked_masks.push(match masks.remove(&slot.name) {
                Some(m) => Some(mask::checked(&slot.name, &slot.var, &m)?),
                None => None,
            });
        }
        for (slot, mask) in self.slots.iter_mut().zip(checked_masks) {
            if let Some(m) = &mask {
                mask::param(&slot.var, m)?;
            }
            slot.mask = mask;
            match policy {
                StatePolicy::Keep => {}
                StatePolicy::Zero => {
                    if let Some(m) = &slot.mask {
                        zero_state(&mut slot.store, &slot.var, m)?;
                    }
                }
                StatePolicy::Reset => {
                    let init = self.rule.init(slot.var.as_tensor())?;
                    slot.store = match &slot.store {
                        Store::Tensors(_) => Store::Tensors(init),
                        Store::Device(_) => Store::Device(init),
                        Store::Host(_) => {
                            Store::Host(fused::HostState::from_tensors(&init, slot.var.dtype())?)
                        }
                    };
                    slot.state.t = 0;
                    slot.state.mu_product = 1.0;
                }
            }
        }
        Ok(())
    }

    fn masks_now(&self) -> BTreeMap<String, Tensor> {
        self.slots
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.mask.clone()?)))
            .collect()
    }
}

/// Multiplies every state buffer of one parameter by its mask.
fn zero_state(store: &mut Store, var: &Var, mask: &Tensor) -> Result<()> {
    match store {
        Store::Tensors(ts) | Store::Device(ts) => {
            for t in ts.iter_mut() {
                *t = (&*t * mask)?;
            }
        }
        Store::Host(h) => {
            let ts = h
                .to_tensors(var.as_tensor())?
                .iter()
                .map(|t| t * mask.to_device(t.device())?)
                .collect::<candle_core::Result<Vec<_>>>()?;
            *h = fused::HostState::from_tensors(&ts, var.dtype())?;
        }
    }
    Ok(())
}
