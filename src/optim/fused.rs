//! Fused CPU optimizer steps: one in-place pass over each parameter's p, g
//! and state, with the whole chain (coupled terms, decoupled decay, the
//! rule, the proximal step) inside the loop, split across threads when the
//! tensor is large. No allocation per step.
//!
//! The formulas are the reference rules' (`rule.rs`), operation by operation
//! and in the same order; the same golden tests check both paths against
//! PyTorch. The state lives in host vectors owned by the optimizer; the
//! parameter is written in place through Candle's `InplaceOp2`.

use std::cell::RefCell;

use anyhow::{Result, bail};
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor};

use super::rule::Scalars;

/// Below this many elements a tensor is updated on one thread.
const PAR_MIN: usize = 1 << 16;

/// The arithmetic the kernels need, for f32 and f64.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    fn c(x: f64) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, o: Self) -> Self;
    /// torch.sign: -1, 0 or 1.
    fn sign(self) -> Self {
        if self > Self::ZERO {
            Self::ONE
        } else if self < Self::ZERO {
            -Self::ONE
        } else {
            Self::ZERO
        }
    }
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn c(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                // torch.maximum; NaN handling is not needed on finite data.
                if self >= o { self } else { o }
            }
        }
    };
}
real!(f32);
real!(f64);

/// torch's lerp: `a + w*(b - a)` for w < 0.5, else `b - (b - a)*(1 - w)`.
#[inline(always)]
fn lerp<T: Real>(a: T, b: T, w: f64) -> T {
    if w < 0.5 {
        a + (b - a) * T::c(w)
    } else {
        b - (b - a) * T::c(1.0 - w)
    }
}

/// `a*d + ((1 - d)*g)*g`.
#[inline(always)]
fn ema_sq<T: Real>(a: T, g: T, d: f64) -> T {
    a * T::c(d) + (g * T::c(1.0 - d)) * g
}

/// The regularisation constants of a step; zero means off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reg {
    pub l1: f64,
    pub wd_coupled: f64,
    /// `1 - lr*weight_decay` when decoupled decay is on.
    pub decay: Option<f64>,
    pub l1_prox: f64,
}

impl Reg {
    /// No regularisation (exempt tensors).
    pub const NONE: Reg = Reg {
        l1: 0.0,
        wd_coupled: 0.0,
        decay: None,
        l1_prox: 0.0,
    };
}

/// One element of the chain. `st` holds this element's state values.
#[inline(always)]
fn element<T: Real, const K: usize>(sc: &Scalars, reg: &Reg, p0: T, g0: T, st: &mut [T; K]) -> T {
    let mut g = g0;
    if reg.l1 != 0.0 {
        g = g + p0.sign() * T::c(reg.l1);
    }
    if reg.wd_coupled != 0.0 {
        g = g + p0 * T::c(reg.wd_coupled);
    }
    let p = match reg.decay {
        Some(f) => p0 * T::c(f),
        None => p0,
    };
    let (p, step) = match *sc {
        Scalars::Sgd {
            lr,
            momentum,
            dampening,
            nesterov,
            first,
        } => {
            let d = if momentum != 0.0 {
                let buf = if first {
                    g
                } else {
                    st[0] * T::c(momentum) + g * T::c(1.0 - dampening)
                };
                st[0] = buf;
                if nesterov {
                    g + buf * T::c(momentum)
                } else {
                    buf
                }
            } else {
                g
            };
            (p + d * T::c(-lr), T::c(lr))
        }
        Scalars::Adagrad { clr, eps } => {
            let sum = st[0] + g * g;
            st[0] = sum;
            let std = sum.sqrt() + T::c(eps);
            (p + (g / std) * T::c(-clr), (T::ONE / std) * T::c(clr))
        }
        Scalars::Rmsprop {
            lr,
            alpha,
            eps,
            centered,
            momentum,
        } => {
            let sq = ema_sq(st[0], g, alpha);
            st[0] = sq;
            let avg = if centered {
                let gi = K - 1;
                let ga = lerp(st[gi], g, 1.0 - alpha);
                st[gi] = ga;
                (sq - ga * ga).sqrt()
            } else {
                sq.sqrt()
            };
            let avg = avg + T::c(eps);
            let p = if momentum > 0.0 {
                let buf = st[1] * T::c(momentum) + g / avg;
                st[1] = buf;
                p + buf * T::c(-lr)
            } else {
                p + (g / avg) * T::c(-lr)
            };
            (p, (T::ONE / avg) * T::c(lr))
        }
        Scalars::Adadelta { lr, rho, eps } => {
            let sq = ema_sq(st[0], g, rho);
            let std = (sq + T::c(eps)).sqrt();
            let ratio = (st[1] + T::c(eps)).sqrt() / std;
            let delta = ratio * g;
            st[0] = sq;
            st[1] = ema_sq(st[1], delta, rho);
            (p + delta * T::c(-lr), ratio * T::c(lr))
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
            let m = lerp(st[0], g, 1.0 - b1);
            let v = ema_sq(st[1], g, b2);
            st[0] = m;
            st[1] = v;
            let vu = if amsgrad {
                let vmax = st[K - 1].max(v);
                st[K - 1] = vmax;
                vmax
            } else {
                v
            };
            let denom = vu.sqrt() * T::c(inv_bc2_sqrt) + T::c(eps);
            (
                p + (m / denom) * T::c(-step_size),
                (T::ONE / denom) * T::c(lr),
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
            let m = lerp(st[0], g, 1.0 - b1);
            let v = ema_sq(st[1], g, b2);
            st[0] = m;
            st[1] = v;
            let denom = (v * T::c(inv_bc2)).sqrt() + T::c(eps);
            let p = p + (g / denom) * T::c(c_grad);
            (p + (m / denom) * T::c(c_mom), (T::ONE / denom) * T::c(lr))
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
            let m = lerp(st[0], g, 1.0 - b1);
            let v = ema_sq(st[1], g, b2);
            st[0] = m;
            st[1] = v;
            let m_hat = m * T::c(inv_bc1);
            match rect {
                Some(r) => {
                    let adaptive = (T::ONE / (v.sqrt() + T::c(eps))) * T::c(bc2_sqrt);
                    let upd = ((m_hat * T::c(lr)) * adaptive) * T::c(r);
                    (p - upd, adaptive * T::c(lr * r))
                }
                None => (p - m_hat * T::c(lr), T::c(lr)),
            }
        }
        Scalars::Adamax {
            lr,
            b1,
            b2,
            eps,
            clr,
        } => {
            let m = lerp(st[0], g, 1.0 - b1);
            let u = (st[1] * T::c(b2)).max(g.abs() + T::c(eps));
            st[0] = m;
            st[1] = u;
            (p + (m / u) * T::c(-clr), (T::ONE / u) * T::c(lr))
        }
    };
    if reg.l1_prox != 0.0 {
        let shrunk = p.abs() - step * T::c(reg.l1_prox);
        p.sign() * shrunk.max(T::ZERO)
    } else {
        p
    }
}

/// Runs the chain over a contiguous range. `state` holds K vectors.
fn run_range<T: Real, const K: usize>(
    sc: &Scalars,
    reg: &Reg,
    p: &mut [T],
    g: &[T],
    state: &mut [&mut [T]],
) {
    let mut st = [T::ZERO; K];
    for i in 0..p.len() {
        for k in 0..K {
            st[k] = state[k][i];
        }
        p[i] = element::<T, K>(sc, reg, p[i], g[i], &mut st);
        for k in 0..K {
            state[k][i] = st[k];
        }
    }
}

/// Splits the work in two halves on two threads when the tensor is large.
fn run_par<T: Real, const K: usize>(
    sc: &Scalars,
    reg: &Reg,
    p: &mut [T],
    g: &[T],
    state: &mut [Vec<T>],
) {
    let n = p.len();
    let threads = if n >= PAR_MIN {
        candle_core::utils::get_num_threads().clamp(1, 8)
    } else {
        1
    };
    if threads == 1 {
        let mut views: Vec<&mut [T]> = state.iter_mut().map(|v| v.as_mut_slice()).collect();
        run_range::<T, K>(sc, reg, p, g, &mut views);
        return;
    }
    let chunk = n.div_ceil(threads);
    // Per-thread views of p, g and every state vector over the same range.
    let mut state_chunks: Vec<Vec<&mut [T]>> =
        (0..threads).map(|_| Vec::with_capacity(K)).collect();
    for v in state.iter_mut() {
        for (t, c) in v.chunks_mut(chunk).enumerate() {
            state_chunks[t].push(c);
        }
    }
    std::thread::scope(|s| {
        for ((pc, gc), mut sc_views) in p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(state_chunks) {
            s.spawn(move || run_range::<T, K>(sc, reg, pc, gc, &mut sc_views));
        }
    });
}

fn dispatch<T: Real>(
    sc: &Scalars,
    reg: &Reg,
    p: &mut [T],
    g: &[T],
    state: &mut [Vec<T>],
) -> Result<()> {
    match state.len() {
        0 => run_par::<T, 0>(sc, reg, p, g, state),
        1 => run_par::<T, 1>(sc, reg, p, g, state),
        2 => run_par::<T, 2>(sc, reg, p, g, state),
        3 => run_par::<T, 3>(sc, reg, p, g, state),
        k => bail!("fused step: {k} state vectors are not supported"),
    }
    Ok(())
}

/// Host-side state of one parameter.
pub(crate) enum HostState {
    F32(Vec<Vec<f32>>),
    F64(Vec<Vec<f64>>),
}

impl HostState {
    /// The initial state, from the reference rule's initial tensors.
    pub fn from_tensors(init: &[Tensor], dtype: DType) -> Result<Self> {
        Ok(match dtype {
            DType::F64 => HostState::F64(
                init.iter()
                    .map(|t| t.flatten_all()?.to_vec1())
                    .collect::<candle_core::Result<_>>()?,
            ),
            _ => HostState::F32(
                init.iter()
                    .map(|t| t.flatten_all()?.to_vec1())
                    .collect::<candle_core::Result<_>>()?,
            ),
        })
    }

    pub fn to_tensors(&self, like: &Tensor) -> Result<Vec<Tensor>> {
        let shape = like.shape();
        Ok(match self {
            HostState::F32(v) => v
                .iter()
                .map(|s| Tensor::from_slice(s, shape, like.device()))
                .collect::<candle_core::Result<_>>()?,
            HostState::F64(v) => v
                .iter()
                .map(|s| Tensor::from_slice(s, shape, like.device()))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    pub fn bytes(&self) -> usize {
        match self {
            HostState::F32(v) => v.iter().map(|s| s.len() * 4).sum(),
            HostState::F64(v) => v.iter().map(|s| s.len() * 8).sum(),
        }
    }
}

/// The in-place op: dst = p, src = g; the state is reached through a RefCell.
struct StepOp<'a> {
    sc: Scalars,
    reg: Reg,
    state: RefCell<&'a mut HostState>,
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("fused step: tensors must be contiguous"),
    }
}

impl InplaceOp2 for StepOp<'_> {
    fn name(&self) -> &'static str {
        "fused-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (a, b) = l1.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("fused step: parameter must be contiguous".into())
        })?;
        let mut state = self.state.borrow_mut();
        let r =
            match (s1, s2, &mut **state) {
                (CpuStorage::F32(p), CpuStorage::F32(g), HostState::F32(st)) => contiguous(g, l2)
                    .and_then(|g| dispatch(&self.sc, &self.reg, &mut p[a..b], g, st)),
                (CpuStorage::F64(p), CpuStorage::F64(g), HostState::F64(st)) => contiguous(g, l2)
                    .and_then(|g| dispatch(&self.sc, &self.reg, &mut p[a..b], g, st)),
                _ => Err(anyhow::anyhow!(
                    "fused step: parameter, gradient and state dtypes differ"
                )),
            };
        r.map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }
}

/// Whether a parameter can take the fused path.
pub(crate) fn applies(p: &Tensor) -> bool {
    p.device().is_cpu() && matches!(p.dtype(), DType::F32 | DType::F64) && p.is_contiguous()
}

/// Updates `p` in place with gradient `g`.
pub(crate) fn step(
    p: &Tensor,
    g: &Tensor,
    sc: Scalars,
    reg: Reg,
    state: &mut HostState,
) -> Result<()> {
    let g = if g.is_contiguous() {
        g.clone()
    } else {
        g.contiguous()?
    };
    let op = StepOp {
        sc,
        reg,
        state: RefCell::new(state),
    };
    p.inplace_op2(&g, &op)?;
    Ok(())
}
