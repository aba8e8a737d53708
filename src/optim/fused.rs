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
                // torch.maximum on finite data (maxps-friendly).
                <$t>::max(self, o)
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

/// The Adam-family moment block (Adam, AMSGrad, AdamW, NAdam, RAdam), as in
/// the reference path: `m <- lerp(m, g, 1 - b1)`, `v <- b2*v + (1 - b2)*g^2`,
/// stored in the first two state slots.
#[inline(always)]
fn moments<T: Real, const K: usize>(st: &mut [T; K], g: T, b1: f64, b2: f64) -> (T, T) {
    let m = lerp(st[0], g, 1.0 - b1);
    let v = ema_sq(st[1], g, b2);
    st[0] = m;
    st[1] = v;
    (m, v)
}

/// Regularisation as a type, so that the unregularised loops are compiled
/// without it: with the flags only known at run time, the compiler kept
/// every branch of every block in the loop as vector selects, and Adamax,
/// AMSGrad and RMSprop steps took 3.6-5x longer (see the README).
trait RegMode: Copy + Send + Sync {
    fn pre<T: Real>(&self, p: T, g: T) -> (T, T);
    fn post<T: Real>(&self, p: T, step: impl FnOnce() -> T) -> T;
}

/// No regularisation (the common case, and exempt tensors).
#[derive(Clone, Copy)]
struct Plain;

impl RegMode for Plain {
    #[inline(always)]
    fn pre<T: Real>(&self, p: T, g: T) -> (T, T) {
        (p, g)
    }
    #[inline(always)]
    fn post<T: Real>(&self, p: T, _step: impl FnOnce() -> T) -> T {
        p
    }
}

/// Regularisation checked block by block at run time, for combinations
/// without a loop of their own (none that the config validation allows
/// today; this keeps a future one correct).
#[derive(Clone, Copy)]
struct Dynamic(Reg);

impl RegMode for Dynamic {
    #[inline(always)]
    fn pre<T: Real>(&self, p0: T, g0: T) -> (T, T) {
        let r = &self.0;
        let mut g = g0;
        if r.l1 != 0.0 {
            g = g + p0.sign() * T::c(r.l1);
        }
        if r.wd_coupled != 0.0 {
            g = g + p0 * T::c(r.wd_coupled);
        }
        let p = match r.decay {
            Some(f) => p0 * T::c(f),
            None => p0,
        };
        (p, g)
    }
    #[inline(always)]
    fn post<T: Real>(&self, p: T, step: impl FnOnce() -> T) -> T {
        if self.0.l1_prox != 0.0 {
            let shrunk = p.abs() - step() * T::c(self.0.l1_prox);
            p.sign() * shrunk.max(T::ZERO)
        } else {
            p
        }
    }
}

/// Regularisation with each block known to be on or off at compile time
/// (L1 subgradient, coupled L2, decoupled decay, proximal L1).
#[derive(Clone, Copy)]
struct With<const L1: bool, const WD: bool, const DEC: bool, const PROX: bool>(Reg);

impl<const L1: bool, const WD: bool, const DEC: bool, const PROX: bool> RegMode
    for With<L1, WD, DEC, PROX>
{
    #[inline(always)]
    fn pre<T: Real>(&self, p0: T, g0: T) -> (T, T) {
        let mut g = g0;
        if L1 {
            g = g + p0.sign() * T::c(self.0.l1);
        }
        if WD {
            g = g + p0 * T::c(self.0.wd_coupled);
        }
        let p = if DEC {
            p0 * T::c(self.0.decay.unwrap_or(1.0))
        } else {
            p0
        };
        (p, g)
    }
    #[inline(always)]
    fn post<T: Real>(&self, p: T, step: impl FnOnce() -> T) -> T {
        if PROX {
            let shrunk = p.abs() - step() * T::c(self.0.l1_prox);
            p.sign() * shrunk.max(T::ZERO)
        } else {
            p
        }
    }
}

/// The loop: `f(p, g, state)` for every element, on contiguous slices.
#[inline(always)]
fn each<T: Real, const K: usize, F: Fn(T, T, &mut [T; K]) -> T>(
    p: &mut [T],
    g: &[T],
    st: [&mut [T]; K],
    f: &F,
) {
    let n = p.len();
    assert!(g.len() == n && st.iter().all(|s| s.len() == n));
    let mut local = [T::ZERO; K];
    for i in 0..n {
        for k in 0..K {
            local[k] = st[k][i];
        }
        p[i] = f(p[i], g[i], &mut local);
        for k in 0..K {
            st[k][i] = local[k];
        }
    }
}

/// The same loop compiled for AVX2 (chosen at run time): wider vectors, and
/// no fused multiply-adds, so the results are those of the plain loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn each_avx2<T: Real, const K: usize, F: Fn(T, T, &mut [T; K]) -> T>(
    p: &mut [T],
    g: &[T],
    st: [&mut [T]; K],
    f: &F,
) {
    each(p, g, st, f)
}

fn each_best<T: Real, const K: usize, F: Fn(T, T, &mut [T; K]) -> T>(
    p: &mut [T],
    g: &[T],
    st: [&mut [T]; K],
    f: &F,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { each_avx2(p, g, st, f) };
    }
    each(p, g, st, f)
}

/// Runs the kernel over the tensor, on several threads when it is large.
fn run<T: Real, const K: usize, F: Fn(T, T, &mut [T; K]) -> T + Sync>(
    p: &mut [T],
    g: &[T],
    state: &mut [Vec<T>],
    f: F,
) -> Result<()> {
    let n = p.len();
    if state.len() != K {
        bail!(
            "fused step: expected {K} state vectors, found {}",
            state.len()
        );
    }
    let threads = if n >= PAR_MIN {
        candle_core::utils::get_num_threads().clamp(1, 16)
    } else {
        1
    };
    if threads == 1 {
        let st: [&mut [T]; K] = views(state, 0, n);
        each_best(p, g, st, &f);
        return Ok(());
    }
    let chunk = n.div_ceil(threads);
    let mut rest_p = p;
    let mut jobs = vec![];
    let mut start = 0;
    // Split p and every state vector at the same offsets.
    let mut rest_st: Vec<&mut [T]> = state.iter_mut().map(|v| v.as_mut_slice()).collect();
    while start < n {
        let len = chunk.min(n - start);
        let (pc, pr) = rest_p.split_at_mut(len);
        rest_p = pr;
        let mut stc: Vec<&mut [T]> = Vec::with_capacity(K);
        let mut next = Vec::with_capacity(K);
        for s in rest_st {
            let (a, b) = s.split_at_mut(len);
            stc.push(a);
            next.push(b);
        }
        rest_st = next;
        jobs.push((pc, &g[start..start + len], stc));
        start += len;
    }
    let f = &f;
    // rayon's pool (already Candle's dependency) keeps its threads alive;
    // spawning fresh ones per step cost more than a 1M-element update.
    rayon::scope(|s| {
        let mut jobs = jobs.into_iter();
        let first = jobs.next();
        for (pc, gc, stc) in jobs {
            s.spawn(move |_| each_best(pc, gc, to_array(stc), f));
        }
        if let Some((pc, gc, stc)) = first {
            each_best(pc, gc, to_array(stc), f);
        }
    });
    Ok(())
}

fn views<T, const K: usize>(state: &mut [Vec<T>], a: usize, b: usize) -> [&mut [T]; K] {
    to_array(state.iter_mut().map(|v| &mut v[a..b]).collect())
}

fn to_array<T, const K: usize>(v: Vec<&mut [T]>) -> [&mut [T]; K] {
    match v.try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("state length checked in run()"),
    }
}

/// Picks the kernel for the rule once per call; each arm is its own
/// monomorphic loop.
fn dispatch<T: Real>(
    sc: &Scalars,
    reg: &Reg,
    p: &mut [T],
    g: &[T],
    state: &mut [Vec<T>],
) -> Result<()> {
    let r = *reg;
    macro_rules! with {
        ($l1:literal, $wd:literal, $dec:literal, $prox:literal) => {
            dispatch_with(sc, With::<$l1, $wd, $dec, $prox>(r), p, g, state)
        };
    }
    // Each block on or off; the all-off case is the plain loop.
    match (
        r.l1 != 0.0,
        r.wd_coupled != 0.0,
        r.decay.is_some(),
        r.l1_prox != 0.0,
    ) {
        (false, false, false, false) => dispatch_with(sc, Plain, p, g, state),
        (true, false, false, false) => with!(true, false, false, false),
        (false, true, false, false) => with!(false, true, false, false),
        (false, false, true, false) => with!(false, false, true, false),
        (false, false, false, true) => with!(false, false, false, true),
        (true, true, false, false) => with!(true, true, false, false),
        (false, true, false, true) => with!(false, true, false, true),
        (false, false, true, true) => with!(false, false, true, true),
        (true, false, true, false) => with!(true, false, true, false),
        // Combinations without a loop of their own check each block at run time.
        _ => dispatch_with(sc, Dynamic(r), p, g, state),
    }
}

fn dispatch_with<T: Real, R: RegMode>(
    sc: &Scalars,
    reg: R,
    p: &mut [T],
    g: &[T],
    state: &mut [Vec<T>],
) -> Result<()> {
    match *sc {
        Scalars::Sgd {
            lr,
            momentum,
            dampening,
            nesterov,
            first,
        } => {
            if momentum == 0.0 {
                return run::<T, 0, _>(p, g, state, move |p, g, _| {
                    let (p, g) = reg.pre(p, g);
                    reg.post(p + g * T::c(-lr), || T::c(lr))
                });
            }
            run::<T, 1, _>(p, g, state, move |p, g, st| {
                let (p, g) = reg.pre(p, g);
                let buf = if first {
                    g
                } else {
                    st[0] * T::c(momentum) + g * T::c(1.0 - dampening)
                };
                st[0] = buf;
                let d = if nesterov {
                    g + buf * T::c(momentum)
                } else {
                    buf
                };
                reg.post(p + d * T::c(-lr), || T::c(lr))
            })
        }
        Scalars::Adagrad { clr, eps } => run::<T, 1, _>(p, g, state, move |p, g, st| {
            let (p, g) = reg.pre(p, g);
            let sum = st[0] + g * g;
            st[0] = sum;
            let std = sum.sqrt() + T::c(eps);
            reg.post(p + (g / std) * T::c(-clr), || (T::ONE / std) * T::c(clr))
        }),
        Scalars::Rmsprop {
            lr,
            alpha,
            eps,
            centered,
            momentum,
        } => {
            // State order: square_avg, [momentum_buffer], [grad_avg].
            let with_mom = momentum > 0.0;
            macro_rules! rms {
                ($k:literal) => {
                    run::<T, $k, _>(p, g, state, move |p, g, st| {
                        let (p, g) = reg.pre(p, g);
                        let sq = ema_sq(st[0], g, alpha);
                        st[0] = sq;
                        let avg = if centered {
                            let ga = lerp(st[$k - 1], g, 1.0 - alpha);
                            st[$k - 1] = ga;
                            (sq - ga * ga).sqrt()
                        } else {
                            sq.sqrt()
                        };
                        let avg = avg + T::c(eps);
                        let p = if with_mom {
                            // Index 1 exists whenever momentum is on (K >= 2).
                            let mi = if $k > 1 { 1 } else { 0 };
                            let buf = st[mi] * T::c(momentum) + g / avg;
                            st[mi] = buf;
                            p + buf * T::c(-lr)
                        } else {
                            p + (g / avg) * T::c(-lr)
                        };
                        reg.post(p, || (T::ONE / avg) * T::c(lr))
                    })
                };
            }
            match 1 + usize::from(with_mom) + usize::from(centered) {
                1 => rms!(1),
                2 => rms!(2),
                _ => rms!(3),
            }
        }
        Scalars::Adadelta { lr, rho, eps } => run::<T, 2, _>(p, g, state, move |p, g, st| {
            let (p, g) = reg.pre(p, g);
            let sq = ema_sq(st[0], g, rho);
            let std = (sq + T::c(eps)).sqrt();
            let ratio = (st[1] + T::c(eps)).sqrt() / std;
            let delta = ratio * g;
            st[0] = sq;
            st[1] = ema_sq(st[1], delta, rho);
            reg.post(p + delta * T::c(-lr), || ratio * T::c(lr))
        }),
        Scalars::Adam {
            lr,
            b1,
            b2,
            eps,
            amsgrad,
            step_size,
            inv_bc2_sqrt,
        } => {
            macro_rules! adam {
                ($k:literal) => {
                    run::<T, $k, _>(p, g, state, move |p, g, st| {
                        let (p, g) = reg.pre(p, g);
                        let (m, v) = moments(st, g, b1, b2);
                        let vu = if $k == 3 {
                            let vmax = st[$k - 1].max(v);
                            st[$k - 1] = vmax;
                            vmax
                        } else {
                            v
                        };
                        let denom = vu.sqrt() * T::c(inv_bc2_sqrt) + T::c(eps);
                        reg.post(p + (m / denom) * T::c(-step_size), || {
                            (T::ONE / denom) * T::c(lr)
                        })
                    })
                };
            }
            if amsgrad { adam!(3) } else { adam!(2) }
        }
        Scalars::Nadam {
            lr,
            b1,
            b2,
            eps,
            inv_bc2,
            c_grad,
            c_mom,
        } => run::<T, 2, _>(p, g, state, move |p, g, st| {
            let (p, g) = reg.pre(p, g);
            let (m, v) = moments(st, g, b1, b2);
            let denom = (v * T::c(inv_bc2)).sqrt() + T::c(eps);
            let p = p + (g / denom) * T::c(c_grad);
            reg.post(p + (m / denom) * T::c(c_mom), || {
                (T::ONE / denom) * T::c(lr)
            })
        }),
        Scalars::Radam {
            lr,
            b1,
            b2,
            eps,
            inv_bc1,
            rect,
            bc2_sqrt,
        } => run::<T, 2, _>(p, g, state, move |p, g, st| {
            let (p, g) = reg.pre(p, g);
            let (m, v) = moments(st, g, b1, b2);
            let m_hat = m * T::c(inv_bc1);
            match rect {
                Some(r) => {
                    let adaptive = (T::ONE / (v.sqrt() + T::c(eps))) * T::c(bc2_sqrt);
                    let upd = ((m_hat * T::c(lr)) * adaptive) * T::c(r);
                    reg.post(p - upd, || adaptive * T::c(lr * r))
                }
                None => reg.post(p - m_hat * T::c(lr), || T::c(lr)),
            }
        }),
        Scalars::Adamax {
            lr,
            b1,
            b2,
            eps,
            clr,
        } => run::<T, 2, _>(p, g, state, move |p, g, st| {
            let (p, g) = reg.pre(p, g);
            let m = lerp(st[0], g, 1.0 - b1);
            let u = (st[1] * T::c(b2)).max(g.abs() + T::c(eps));
            st[0] = m;
            st[1] = u;
            reg.post(p + (m / u) * T::c(-clr), || (T::ONE / u) * T::c(lr))
        }),
    }
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
