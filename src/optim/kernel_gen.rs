//! The generator behind the kernel table (`kernels.rs`): one definition of
//! each update rule becomes the fused CPU loop, the CUDA kernel and the
//! CUDA argument list.
//!
//! A rule's step is written once, in a small language that is at the same
//! time Rust and, translated token by token, C++: `let [mut] x = e;`,
//! `x = e;` and `if flag { ... } [else { ... }]`, with `e` built from
//! `+ - * /`, parentheses, the rule's variables and the primitives `sqrt`,
//! `fabs`, `fmax`, `sgn`, `lerp` and `ema_sq` (below for Rust, `prelude.cu`
//! for CUDA). The `kernels!` macro pastes that text into the CPU loop as
//! Rust, and with `stringify!` into the CUDA source as C++; the same macro
//! writes the kernel's C signature and the host code that fills it
//! ([`Plan`]), so the three cannot drift apart.
//!
//! Floating-point operations happen exactly where the table writes them, in
//! both languages (CUDA compiled without contracted multiply-adds): the CPU
//! and GPU give the same bits up to the rounding of `sqrt` and division on
//! the device.

use anyhow::{Result, bail};

use super::config::{Decay, L1};

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
    /// A scalar rounded to this precision.
    fn c(x: f64) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, o: Self) -> Self;
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

// The primitives of the table, in Rust (`prelude.cu` has the CUDA ones).

#[inline(always)]
pub(crate) fn sqrt<T: Real>(x: T) -> T {
    x.sqrt()
}

#[inline(always)]
pub(crate) fn fabs<T: Real>(x: T) -> T {
    x.abs()
}

#[inline(always)]
pub(crate) fn fmax<T: Real>(a: T, b: T) -> T {
    a.max(b)
}

/// torch.sign: -1, 0 or 1.
#[inline(always)]
pub(crate) fn sgn<T: Real>(x: T) -> T {
    if x > T::ZERO {
        T::ONE
    } else if x < T::ZERO {
        -T::ONE
    } else {
        T::ZERO
    }
}

/// torch's lerp: `a + w*(b - a)` for w < 0.5, else `b - (b - a)*(1 - w)`,
/// with `w1 = 1 - w` and the branch `lo = w < 0.5` decided in f64.
#[inline(always)]
pub(crate) fn lerp<T: Real>(a: T, b: T, w: T, w1: T, lo: bool) -> T {
    if lo {
        a + (b - a) * w
    } else {
        b - (b - a) * w1
    }
}

/// `a*d + ((1 - d)*g)*g`, with `d1 = 1 - d`.
#[inline(always)]
pub(crate) fn ema_sq<T: Real>(a: T, g: T, d: T, d1: T) -> T {
    a * d + (g * d1) * g
}

/// The regularisation of one step as the kernels take it: the settings'
/// decay and L1 mode, and the learning rate (for decoupled decay's factor).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KernelReg {
    pub decay: Decay,
    pub l1: L1,
    pub lr: f64,
}

impl KernelReg {
    /// No regularisation (exempt tensors).
    pub const NONE: KernelReg = KernelReg {
        decay: Decay::None,
        l1: L1::None,
        lr: 0.0,
    };

    /// The table's regularisation scalars `(l1, wd, decay, prox)`: the
    /// subgradient's L1 weight, coupled L2's weight, decoupled decay's
    /// factor `1 - lr*weight_decay`, and the proximal L1 weight; 0 where
    /// the block is off (its flag says so).
    pub fn values(&self) -> [f64; 4] {
        let l1 = match self.l1 {
            L1::Subgradient(x) => x,
            _ => 0.0,
        };
        let prox = match self.l1 {
            L1::Proximal(x) => x,
            _ => 0.0,
        };
        let (wd, decay) = match self.decay {
            Decay::None => (0.0, 0.0),
            Decay::Coupled(wd) => (wd, 0.0),
            Decay::Decoupled(wd) => (0.0, 1.0 - self.lr * wd),
        };
        [l1, wd, decay, prox]
    }

    /// Which blocks are on: `(l1, wd, decay, prox)` as in [`values`](Self::values).
    pub fn flags(&self) -> [bool; 4] {
        [
            matches!(self.l1, L1::Subgradient(_)),
            matches!(self.decay, Decay::Coupled(_)),
            matches!(self.decay, Decay::Decoupled(_)),
            matches!(self.l1, L1::Proximal(_)),
        ]
    }
}

/// One scalar argument of a CUDA kernel: a real (rounded to the parameter's
/// precision at launch, as the CPU loop rounds its own) or an int flag.
/// (Without the `cuda` feature only the host test launches kernels.)
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) enum Arg {
    Real(f64),
    Int(i32),
}

/// A kernel launch: the kernel's name without the dtype suffix, which state
/// tensor each of the kernel's state pointers takes (one pointer per state
/// slot the rule declares, in table order; None: null, the slot is off),
/// and the scalars in the kernel's order (the rule's reals, flags and fixed
/// flags, then the regularisation's reals and flags).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct Plan {
    pub kernel: &'static str,
    pub state: Vec<Option<usize>>,
    pub args: Vec<Arg>,
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

/// Runs a generated kernel over the tensor, on several threads when it is
/// large. `state` holds the rule's present state vectors, in table order.
pub(crate) fn run<T: Real, S: AsMut<[T]>, const K: usize, F: Fn(T, T, &mut [T; K]) -> T + Sync>(
    p: &mut [T],
    g: &[T],
    state: &mut [S],
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
    let mut rest_st: Vec<&mut [T]> = state.iter_mut().map(|v| v.as_mut()).collect();
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

fn views<T, S: AsMut<[T]>, const K: usize>(state: &mut [S], a: usize, b: usize) -> [&mut [T]; K] {
    to_array(state.iter_mut().map(|v| &mut v.as_mut()[a..b]).collect())
}

fn to_array<T, const K: usize>(v: Vec<&mut [T]>) -> [&mut [T]; K] {
    match v.try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("state length checked in run()"),
    }
}

/// The table's statements as C++ text (a string literal): `let [mut] x = e;`
/// declares `T x = e;`, `x = e;` assigns, `if c { } else { }` branches on an
/// int flag. Expressions are copied as written.
macro_rules! c_stmts {
    () => { "" };
    (let mut $x:ident = $e:expr; $($rest:tt)*) => {
        concat!("T ", stringify!($x), " = ", stringify!($e), ";\n", c_stmts!($($rest)*))
    };
    (let $x:ident = $e:expr; $($rest:tt)*) => {
        concat!("T ", stringify!($x), " = ", stringify!($e), ";\n", c_stmts!($($rest)*))
    };
    (if $c:ident { $($a:tt)* } else { $($b:tt)* } $($rest:tt)*) => {
        concat!(
            "if (", stringify!($c), ") {\n", c_stmts!($($a)*), "} else {\n",
            c_stmts!($($b)*), "}\n", c_stmts!($($rest)*)
        )
    };
    (if $c:ident { $($a:tt)* } $($rest:tt)*) => {
        concat!("if (", stringify!($c), ") {\n", c_stmts!($($a)*), "}\n", c_stmts!($($rest)*))
    };
    ($x:ident = $e:expr; $($rest:tt)*) => {
        concat!(stringify!($x), " = ", stringify!($e), ";\n", c_stmts!($($rest)*))
    };
}

/// A braced block of table statements as a braced C++ block.
macro_rules! c_block {
    ({ $($s:tt)* }) => {
        concat!("{\n", c_stmts!($($s)*), "}\n")
    };
}

/// The CPU loops, first by regularisation: the nine combinations of
/// [`Decay`] and [`L1`], each with its blocks known at compile time.
macro_rules! cpu_reg {
    ($reg:ident; [$l1:ident, $wd:ident, $dec:ident, $prox:ident] $fixed:tt $emit:tt) => {
        match ($reg.decay, $reg.l1) {
            (Decay::None, L1::None) => cpu_reg!(@ [$l1 = false, $wd = false, $dec = false, $prox = false] $fixed $emit),
            (Decay::None, L1::Subgradient(_)) => cpu_reg!(@ [$l1 = true, $wd = false, $dec = false, $prox = false] $fixed $emit),
            (Decay::None, L1::Proximal(_)) => cpu_reg!(@ [$l1 = false, $wd = false, $dec = false, $prox = true] $fixed $emit),
            (Decay::Coupled(_), L1::None) => cpu_reg!(@ [$l1 = false, $wd = true, $dec = false, $prox = false] $fixed $emit),
            (Decay::Coupled(_), L1::Subgradient(_)) => cpu_reg!(@ [$l1 = true, $wd = true, $dec = false, $prox = false] $fixed $emit),
            (Decay::Coupled(_), L1::Proximal(_)) => cpu_reg!(@ [$l1 = false, $wd = true, $dec = false, $prox = true] $fixed $emit),
            (Decay::Decoupled(_), L1::None) => cpu_reg!(@ [$l1 = false, $wd = false, $dec = true, $prox = false] $fixed $emit),
            (Decay::Decoupled(_), L1::Subgradient(_)) => cpu_reg!(@ [$l1 = true, $wd = false, $dec = true, $prox = false] $fixed $emit),
            (Decay::Decoupled(_), L1::Proximal(_)) => cpu_reg!(@ [$l1 = false, $wd = false, $dec = true, $prox = true] $fixed $emit),
        }
    };
    (@ [$($bn:ident = $bv:tt),*] [$($s:ident),*] $emit:tt) => {
        cpu_fixed!([$($bn = $bv),*] [$($s),*] $emit)
    };
}

/// The CPU loops, then by fixed flag: binds the fixed flags one by one to compile-time
/// constants (each combination is its own loop), then emits the loop.
macro_rules! cpu_fixed {
    ([$($bn:ident = $bv:tt),*] [] $emit:tt) => {
        cpu_emit!([$($bn = $bv),*] $emit)
    };
    ([$($bn:ident = $bv:tt),*] [$s:ident $(, $rs:ident)*] $emit:tt) => {
        if $s {
            cpu_fixed!([$($bn = $bv,)* $s = true] [$($rs),*] $emit)
        } else {
            cpu_fixed!([$($bn = $bv,)* $s = false] [$($rs),*] $emit)
        }
    };
}

/// One CPU loop, with every flag that selects a block or a state slot a
/// constant, so that the loop holds only the blocks that are on (with them
/// decided at run time, the compiler kept every block as vector selects and
/// some steps took 3.6-5x longer).
macro_rules! cpu_emit {
    (
        [$($bn:ident = $bv:tt),*]
        [$p_:ident, $g_:ident, $state:ident; $p:ident, $g:ident, $step:ident, $zero:ident;
         [$($slot:ident $cond:tt),*]; $pre:tt; $body:tt; $post:tt]
    ) => {{
        $(const $bn: bool = $bv;)*
        const K: usize = 0 $(+ $cond as usize)*;
        run::<T, _, K, _>($p_, $g_, $state, move |$p: T, $g: T, st: &mut [T; K]| -> T {
            let mut $p = $p;
            let mut $g = $g;
            let mut $step = $zero;
            let mut k = 0usize;
            $(
                let mut $slot = if $cond { st[k] } else { $zero };
                k += $cond as usize;
            )*
            $pre
            $body
            $post
            let mut k = 0usize;
            $(
                if $cond {
                    st[k] = $slot;
                }
                k += $cond as usize;
            )*
            $p
        })
    }};
}

/// The kernel table: see `kernels.rs` for the table and this module's doc
/// for the language. Generates, from one definition of each rule,
/// - `cpu`: the fused CPU step (one loop per combination of fixed flags and
///   regularisation blocks);
/// - `SOURCE`: the CUDA source (`prelude.cu`, then one kernel per rule, for
///   f32 and f64, and `FUSED_KERNELS(X)` listing them);
/// - `plan`: the CUDA launch (kernel, state pointers, scalar arguments);
/// - `NAMES`: the kernels' names.
///
/// Each rule gives the `Scalars` pattern it handles; `real(x = e)` scalars
/// (f64 expressions, rounded to the parameter's precision once per step),
/// `flag(x = e)` booleans read in the loop, `fixed(x = e)` booleans that
/// select a loop (and the state slots); `state(x if cond)` its state
/// slots, in the order of the rule's `state_names()`, `cond` being `true`
/// or a fixed flag; and `step { }`, which reads and writes `p`, `g`, the
/// slots and its own variables, and sets `step`: the per-coordinate step
/// size for the proximal L1 block. Slots declared absent are null on CUDA
/// and not stored on the CPU. The `regularisation` section wraps every
/// rule: `before` runs before the step, `after` after it.
macro_rules! kernels {
    (
        vars($p:ident, $g:ident, $step:ident, $one:ident, $zero:ident);
        regularisation {
            real($l1:ident, $wd:ident, $decay:ident, $prox:ident)
            fixed($l1_on:ident, $wd_on:ident, $dec_on:ident, $prox_on:ident)
            before $pre:tt
            after $post:tt
        }
        $(
            $name:ident($pat:pat) {
                real($($r:ident = $re:expr),* $(,)?)
                flag($($f:ident = $fe:expr),* $(,)?)
                fixed($($s:ident = $se:expr),* $(,)?)
                state($($slot:ident if $cond:tt),* $(,)?)
                step $body:tt
            }
        )*
    ) => {
        /// The kernels, in table order (read by the NVRTC test of the
        /// `cuda` feature).
        #[cfg_attr(not(all(test, feature = "cuda")), allow(dead_code))]
        pub(crate) const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// The CUDA source of every kernel, generated from the table.
        #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
        pub(crate) const SOURCE: &str = concat!(
            "// Generated from src/optim/kernels.rs by the kernels! macro\n",
            "// (src/optim/kernel_gen.rs): do not edit.\n\n",
            include_str!("prelude.cu"),
            $(
                "// ", stringify!($name), "\n",
                "#define ", stringify!($name), "_PARAMS(T) unsigned long long n, T* p_, const T* g_",
                $(", T* ", stringify!($slot), "_",)*
                $(", T ", stringify!($r),)*
                $(", int ", stringify!($f),)*
                $(", int ", stringify!($s),)*
                ", T ", stringify!($l1), ", T ", stringify!($wd), ", T ", stringify!($decay),
                ", T ", stringify!($prox), ", int ", stringify!($l1_on), ", int ",
                stringify!($wd_on), ", int ", stringify!($dec_on), ", int ",
                stringify!($prox_on), "\n",
                "#define ", stringify!($name), "_ARGS n, p_, g_",
                $(", ", stringify!($slot), "_",)*
                $(", ", stringify!($r),)*
                $(", ", stringify!($f),)*
                $(", ", stringify!($s),)*
                ", ", stringify!($l1), ", ", stringify!($wd), ", ", stringify!($decay),
                ", ", stringify!($prox), ", ", stringify!($l1_on), ", ", stringify!($wd_on),
                ", ", stringify!($dec_on), ", ", stringify!($prox_on), "\n",
                "template <typename T> __device__ __forceinline__ void ", stringify!($name),
                "_kernel(", stringify!($name), "_PARAMS(T)) {\n",
                "const T ", stringify!($one), " = T(1), ", stringify!($zero), " = T(0);\n",
                "GRID_LOOP(i, n) {\n",
                "T ", stringify!($p), " = p_[i];\n",
                "T ", stringify!($g), " = g_[i];\n",
                "T ", stringify!($step), " = ", stringify!($zero), ";\n",
                $(
                    "T ", stringify!($slot), " = ", stringify!($cond), " ? ",
                    stringify!($slot), "_[i] : ", stringify!($zero), ";\n",
                )*
                c_block!($pre),
                c_block!($body),
                c_block!($post),
                $(
                    "if (", stringify!($cond), ") ", stringify!($slot), "_[i] = ",
                    stringify!($slot), ";\n",
                )*
                "p_[i] = ", stringify!($p), ";\n",
                "}\n}\n",
                "extern \"C\" __global__ void ", stringify!($name), "_f32(", stringify!($name),
                "_PARAMS(float)) { ", stringify!($name), "_kernel<float>(", stringify!($name),
                "_ARGS); }\n",
                "extern \"C\" __global__ void ", stringify!($name), "_f64(", stringify!($name),
                "_PARAMS(double)) { ", stringify!($name), "_kernel<double>(", stringify!($name),
                "_ARGS); }\n\n",
            )*
            "#define FUSED_KERNELS(X)", $(" X(", stringify!($name), ")",)* "\n"
        );

        /// The fused CPU step of the rule `sc` names: `p_` updated in place
        /// with the gradient `g_`, `state` the rule's present state vectors.
        #[allow(
            unused_braces,
            unused_mut,
            unused_assignments,
            unused_variables,
            non_upper_case_globals,
            clippy::redundant_locals,
            clippy::identity_op,
            clippy::too_many_lines
        )]
        pub(crate) fn cpu<T: Real, S: AsMut<[T]>>(
            sc: &Scalars,
            reg: &KernelReg,
            p_: &mut [T],
            g_: &[T],
            state: &mut [S],
        ) -> anyhow::Result<()> {
            let [reg_l1, reg_wd, reg_decay, reg_prox] = reg.values();
            let $l1: T = T::c(reg_l1);
            let $wd: T = T::c(reg_wd);
            let $decay: T = T::c(reg_decay);
            let $prox: T = T::c(reg_prox);
            let $one = T::ONE;
            let $zero = T::ZERO;
            match *sc {
                $(
                    $pat => {
                        $(let $r: f64 = $re;)*
                        $(let $f: bool = $fe;)*
                        $(let $s: bool = $se;)*
                        $(let $r: T = T::c($r);)*
                        cpu_reg!(
                            reg; [$l1_on, $wd_on, $dec_on, $prox_on] [$($s),*]
                            [p_, g_, state; $p, $g, $step, $zero;
                             [$($slot $cond),*]; $pre; $body; $post]
                        )
                    }
                )*
            }
        }

        /// The CUDA launch of one step: the rule's kernel, its state
        /// pointers and its scalars, computed as `cpu` computes them.
        #[allow(unused_variables, unused_assignments, unused_mut, clippy::redundant_locals)]
        #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
        pub(crate) fn plan(sc: &Scalars, reg: &KernelReg) -> Plan {
            match *sc {
                $(
                    $pat => {
                        $(let $r: f64 = $re;)*
                        $(let $f: bool = $fe;)*
                        $(let $s: bool = $se;)*
                        let mut args = vec![$(Arg::Real($r)),*];
                        $(args.push(Arg::Int(i32::from($f)));)*
                        $(args.push(Arg::Int(i32::from($s)));)*
                        args.extend(reg.values().map(Arg::Real));
                        args.extend(reg.flags().map(|b| Arg::Int(b.into())));
                        let mut state: Vec<Option<usize>> = vec![];
                        let mut present = 0;
                        $(
                            state.push($cond.then(|| {
                                present += 1;
                                present - 1
                            }));
                        )*
                        Plan {
                            kernel: stringify!($name),
                            state,
                            args,
                        }
                    }
                )*
            }
        }
    };
}
