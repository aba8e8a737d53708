//! The passes of the hand-written Transformer step, one layer kind each:
//! linear, LayerNorm and causal self-attention, forward and backward, over
//! row-major f32 buffers, with the sizes of one step ([`Dims`]).

use rayon::prelude::*;

use super::params::Affine;
use crate::models::kernels as k;
use crate::models::linear as dense;
use crate::models::matmul::{View, small_matmul, transposed};

/// Rows per parallel task in the row-wise passes; fixed, so partial sums
/// (weight gradients of LayerNorm, bias gradients) are added in the same
/// order whatever the number of threads.
pub(super) const ROWS: usize = 64;
const LN_EPS: f32 = 1e-5;

/// LayerNorm output and per-row statistics.
#[derive(Default)]
pub(super) struct Norm {
    pub(super) out: Vec<f32>,
    pub(super) mean: Vec<f32>,
    pub(super) rstd: Vec<f32>,
}

impl Norm {
    pub(super) fn new(n: usize, d: usize) -> Self {
        Self {
            out: vec![0.0; n * d],
            mean: vec![0.0; n],
            rstd: vec![0.0; n],
        }
    }
}

/// A raw pointer that may cross threads: the attention tasks write
/// disjoint column blocks of shared row-major buffers.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used where the tasks write disjoint elements (see above).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}
#[derive(Clone, Copy)]
struct Shared(View);
// SAFETY: read-only views of buffers nobody writes meanwhile.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The same view moved `off` elements along its buffer; callers pass
    /// offsets from [`Dims`], which stay inside the buffers it checked.
    fn at(self, off: usize) -> View {
        View {
            // SAFETY: see above; `add` stays inside the allocation.
            ptr: unsafe { self.0.ptr.add(off) },
            ..self.0
        }
    }
}

/// The sizes of one step.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Dims {
    /// Sequences, positions per sequence, and rows (`b * t`).
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) n: usize,
    /// Model width, heads, and width per head (`d / h`).
    pub(super) d: usize,
    pub(super) h: usize,
    pub(super) hd: usize,
    /// The MLP's hidden width.
    pub(super) f: usize,
    pub(super) vocab: usize,
    pub(super) layers: usize,
}

impl Dims {
    /// Offset of head `hi` of sequence `bi`'s queries (`part` 0), keys (1)
    /// or values (2) in the `[N, 3D]` buffer.
    fn qkv(&self, bi: usize, hi: usize, part: usize) -> usize {
        bi * self.t * 3 * self.d + part * self.d + hi * self.hd
    }
    /// Offset of head `hi` of sequence `bi` in an `[N, D]` buffer.
    fn out(&self, bi: usize, hi: usize) -> usize {
        bi * self.t * self.d + hi * self.hd
    }
    /// Views of head `hi` of sequence `bi`'s queries, keys and values in
    /// the `[N, 3D]` buffer `src`.
    fn heads_of(&self, src: Shared, bi: usize, hi: usize) -> (View, View, View) {
        let at = |part| src.at(self.qkv(bi, hi, part));
        (at(0), at(1), at(2))
    }
    fn check(&self, qkv: usize, att: usize, out: usize) {
        let (n, t) = (self.b * self.t, self.t);
        assert!(qkv == n * 3 * self.d && att == self.b * self.h * t * t && out == n * self.d);
    }
}

/// `out[rows, fout] = p.b + x[rows, fin] · p.w^T` with `p.w` as torch's
/// `[fout, fin]`, or, with `resid`, `out = resid + p.b + x · p.w^T`.
pub(super) fn linear(out: &mut [f32], resid: Option<&[f32]>, x: &[f32], p: &Affine<&[f32]>) {
    let (w, bias) = (p.w, p.b);
    let fout = bias.len();
    let fin = w.len() / fout;
    let rows = x.len() / fin;
    assert!(out.len() == rows * fout && x.len() == rows * fin && w.len() == fout * fin);
    out.par_chunks_mut(ROWS * fout)
        .enumerate()
        .for_each(|(i, chunk)| {
            for (r, row) in chunk.chunks_exact_mut(fout).enumerate() {
                match resid {
                    Some(res) => {
                        let at = (i * ROWS + r) * fout;
                        for ((o, a), b) in row.iter_mut().zip(&res[at..at + fout]).zip(bias) {
                            *o = a + b;
                        }
                    }
                    None => row.copy_from_slice(bias),
                }
            }
        });
    dense::add_x_wt(out, x, w, fout);
}

/// Gradients of a linear layer with weight `w [fout, fin]` from the output
/// gradient `dout [rows, fout]` and its input `x [rows, fin]`: `g.w =
/// dout^T · x`, `g.b` = column sums, and, when asked, `dx = dout · w`.
pub(super) fn linear_bwd(
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    g: &mut Affine<Vec<f32>>,
    dx: Option<&mut [f32]>,
    parts: &mut Vec<f32>,
) {
    let fout = g.b.len();
    dense::grads(dout, x, w, fout, &mut g.w, dx);
    col_sums(dout, fout, &mut g.b, parts);
}

/// Column sums of a row-major matrix with `cols` columns, in a fixed order.
fn col_sums(x: &[f32], cols: usize, out: &mut [f32], parts: &mut Vec<f32>) {
    // One partial sum per block of rows, in `parts` (kept across calls).
    parts.clear();
    parts.resize(x.len().div_ceil(ROWS * cols) * cols, 0.0);
    parts
        .par_chunks_mut(cols)
        .zip(x.par_chunks(ROWS * cols))
        .for_each(|(s, chunk)| {
            for row in chunk.chunks_exact(cols) {
                add_to(s, row);
            }
        });
    out.fill(0.0);
    for p in parts.chunks_exact(cols) {
        add_to(out, p);
    }
}

pub(super) fn add_to(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// LayerNorm of the rows of `x` with gain `p.w` and shift `p.b`.
pub(super) fn layer_norm(x: &[f32], p: &Affine<&[f32]>, out: &mut Norm) {
    let (w, b) = (p.w, p.b);
    let d = w.len();
    out.out
        .par_chunks_mut(ROWS * d)
        .zip(out.mean.par_chunks_mut(ROWS))
        .zip(out.rstd.par_chunks_mut(ROWS))
        .zip(x.par_chunks(ROWS * d))
        .for_each(|(((o, m), r), x)| k::layer_norm_rows(x, w, b, LN_EPS, o, m, r));
}

/// Adds the input gradient of a LayerNorm with gain `w` to `dx`; writes
/// its gain and shift gradients to `g`.
pub(super) fn layer_norm_bwd(
    x: &[f32],
    norm: &Norm,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    g: &mut Affine<Vec<f32>>,
    parts: &mut Vec<f32>,
) {
    let d = w.len();
    // Per block of rows: partial dw, partial db, one scratch row.
    parts.clear();
    parts.resize(x.len().div_ceil(ROWS * d) * 3 * d, 0.0);
    x.par_chunks(ROWS * d)
        .zip(dy.par_chunks(ROWS * d))
        .zip(dx.par_chunks_mut(ROWS * d))
        .zip(norm.mean.par_chunks(ROWS))
        .zip(norm.rstd.par_chunks(ROWS))
        .zip(parts.par_chunks_mut(3 * d))
        .for_each(|(((((x, dy), dx), m), r), acc)| {
            let (pw, rest) = acc.split_at_mut(d);
            let (pb, scratch) = rest.split_at_mut(d);
            k::layer_norm_bwd_rows(x, m, r, w, dy, dx, pw, pb, scratch);
        });
    g.w.fill(0.0);
    g.b.fill(0.0);
    for p in parts.chunks_exact(3 * d) {
        add_to(&mut g.w, &p[..d]);
        add_to(&mut g.b, &p[d..2 * d]);
    }
}

/// Rows per block of the causal attention's products: a block of query
/// rows `r0..r1` needs only the keys `0..r1`, so the products skip the
/// blocks above the diagonal (37.5 % of the work at T = 128). The skipped
/// terms are exact zeros at the end (or, for the keys' gradients, the
/// start) of each sum, so the bits are those of the full products.
const CAUSAL_BLOCK: usize = 32;

/// The blocks of rows `(r0, r1)` of a `t`-row causal attention.
fn causal_blocks(t: usize) -> impl DoubleEndedIterator<Item = (usize, usize)> {
    (0..t)
        .step_by(CAUSAL_BLOCK)
        .map(move |r0| (r0, (r0 + CAUSAL_BLOCK).min(t)))
}

/// Asks the CPU to bring `rows` rows of `len` floats, `stride` floats
/// apart from `ptr` on, into its L2 cache: the next task's operands, and
/// its outputs (whose lines a write would otherwise fetch), while this
/// task computes. The attention's strided rows are otherwise fetched one
/// miss at a time, inside the products. Only a hint (`prefetcht1`): it
/// reads and writes nothing and cannot fault.
#[inline(always)]
fn prefetch_rows(ptr: *const f32, rows: usize, stride: usize, len: usize) {
    if len == 0 {
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, rows, stride);
    #[cfg(target_arch = "x86_64")]
    for r in 0..rows {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        let row = ptr.wrapping_add(r * stride);
        // Every 64-byte line the row touches.
        let (mut line, last) = (row as usize & !63, row.wrapping_add(len - 1) as usize);
        while line <= last {
            // SAFETY: a prefetch reads nothing and cannot fault, whatever
            // the address; SSE is part of x86_64.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(line as *const i8) };
            line += 64;
        }
    }
}

/// [`prefetch_rows`] of the rows of a `[t, t]` attention block that
/// [`attention`] writes and [`attention_bwd`] reads: each row up to the
/// end of its block of keys.
#[inline(always)]
fn prefetch_block(p: *const f32, t: usize) {
    for (r0, r1) in causal_blocks(t) {
        prefetch_rows(p.wrapping_add(r0 * t), r1 - r0, t, r1);
    }
}

thread_local! {
    /// Each thread's buffers for the attention's tasks (a transposed
    /// head; the backward's score gradients), kept from step to step: a
    /// buffer made per task (or per rayon split) is fresh memory, whose
    /// pages the kernel clears on first touch (3 % of a step).
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 2]> = std::cell::RefCell::default();
}

/// Causal self-attention: `att` gets the probabilities, `y` the heads'
/// outputs side by side. Its products (32 x 128 x 32 and the like, one
/// sequence's head per task) are [`small_matmul`]'s, with `gemm`'s bits
/// and without its set-up per call.
///
/// Each block of query rows goes through its scores, softmax and output
/// while its rows are in cache. Its probabilities are written up to the
/// end of the block's keys: the columns past them are never read (here or
/// in [`attention_bwd`]) and keep whatever they held.
pub(super) fn attention(s: Dims, qkv: &[f32], att: &mut [f32], y: &mut [f32]) {
    s.check(qkv.len(), att.len(), y.len());
    let (t, hd) = (s.t, s.hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let y_ptr = SharedMut(y.as_mut_ptr());
    let src = Shared(View::rows(qkv, 3 * s.d));
    att.par_chunks_mut(t * t).enumerate().for_each(|(i, p)| {
        SCRATCH.with_borrow_mut(|[kt, _]| {
            let (bi, hi) = (i / s.h, i % s.h);
            let (q, kk, v) = s.heads_of(src, bi, hi);
            if i + 1 < s.b * s.h {
                // The next task's heads, rows of y and block of att.
                let (nb, nh) = ((i + 1) / s.h, (i + 1) % s.h);
                let (nq, nk, nv) = s.heads_of(src, nb, nh);
                for part in [nq, nk, nv] {
                    prefetch_rows(part.ptr, t, part.rs, hd);
                }
                let ny = y_ptr.get().wrapping_add(s.out(nb, nh));
                prefetch_rows(ny, t, s.d, hd);
                prefetch_block(p.as_ptr().wrapping_add(t * t), t);
            }
            // SAFETY: `p` is this task's own block; the y block (rows of
            // sequence bi, columns of head hi) is written by this task only.
            // Every product stays inside the [t, t] block and the head's rows.
            unsafe {
                // The keys as columns (`[hd, t]`), so that each row of
                // scores is made of whole vectors.
                let kt = transposed(kk, t, hd, kt);
                for (r0, r1) in causal_blocks(t) {
                    // Scores of rows r0..r1 against keys 0..r1, their
                    // softmax, and their share of the output.
                    let rows = &mut p[r0 * t..r1 * t];
                    small_matmul(r1 - r0, r1, hd, rows.as_mut_ptr(), t, q.sub(r0, 0), kt);
                    k::causal_softmax_rows(rows, t, r0, r1, scale);
                    let dst = y_ptr.get().add(s.out(bi, hi) + r0 * s.d);
                    small_matmul(r1 - r0, hd, r1, dst, s.d, View::rows(rows, t), v);
                }
            }
        })
    });
}

/// The backward of [`attention`]: from `dy` (`[N, D]`) to `dqkv`.
///
/// The blocks of rows go last to first: the keys' gradients of a block
/// sum over the queries from the block on, whose score gradients are then
/// all made. The score gradients live in one `[t, t]` buffer per task,
/// which stays in cache.
pub(super) fn attention_bwd(s: Dims, qkv: &[f32], att: &[f32], dy: &[f32], dqkv: &mut [f32]) {
    s.check(qkv.len(), att.len(), dy.len());
    assert!(dqkv.len() == qkv.len());
    let (t, hd) = (s.t, s.hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let dst = SharedMut(dqkv.as_mut_ptr());
    let src = Shared(View::rows(qkv, 3 * s.d));
    let dsrc = Shared(View::rows(dy, s.d));
    att.par_chunks(t * t).enumerate().for_each(|(i, p)| {
        SCRATCH.with_borrow_mut(|[vt, dp]| {
            let (bi, hi) = (i / s.h, i % s.h);
            let (q, kk, v) = s.heads_of(src, bi, hi);
            let dyv = dsrc.at(s.out(bi, hi));
            if i + 1 < s.b * s.h {
                // The next task's heads, rows of dy and of dqkv, and block
                // of att.
                let (nb, nh) = ((i + 1) / s.h, (i + 1) % s.h);
                let (nq, nk, nv) = s.heads_of(src, nb, nh);
                for part in [nq, nk, nv, dsrc.at(s.out(nb, nh))] {
                    prefetch_rows(part.ptr, t, part.rs, hd);
                }
                for part in 0..3 {
                    let at = dst.get().wrapping_add(s.qkv(nb, nh, part));
                    prefetch_rows(at, t, 3 * s.d, hd);
                }
                prefetch_block(att.as_ptr().wrapping_add((i + 1) * t * t), t);
            }
            let pv = View::rows(p, t);
            let row = 3 * s.d;
            dp.resize(t * t, 0.0);
            let ds = View::rows(dp, t);
            // SAFETY: this task alone writes head hi's columns of
            // sequence bi's rows in dqkv, and its own buffer `dp`. Every
            // product stays inside the [t, t] blocks and the head's rows.
            unsafe {
                let out = |part: usize, r0: usize| dst.get().add(s.qkv(bi, hi, part) + r0 * row);
                // Key rows r0..r1 of a gradient a^T b: summed over the
                // queries r0..t, the only ones that see those keys.
                let by_keys = |part: usize, (r0, r1): (usize, usize), a: View, b: View| {
                    let (m, kq) = (r1 - r0, t - r0);
                    let (a, b) = (a.t().sub(r0, r0), b.sub(r0, 0));
                    small_matmul(m, hd, kq, out(part, r0), row, a, b);
                };
                // The values as columns, for dP.
                let vt = transposed(v, t, hd, vt);
                for (r0, r1) in causal_blocks(t).rev() {
                    // dP = dY V^T, rows r0..r1 against keys 0..r1, and from
                    // it dS in place.
                    let rows = r0 * t..r1 * t;
                    let dpp = dp[rows.clone()].as_mut_ptr();
                    small_matmul(r1 - r0, r1, hd, dpp, t, dyv.sub(r0, 0), vt);
                    k::causal_softmax_bwd_rows(&p[rows.clone()], &mut dp[rows], t, r0, r1, scale);
                    // dQ = dS K, rows r0..r1 over keys 0..r1.
                    small_matmul(r1 - r0, hd, r1, out(0, r0), row, ds.sub(r0, 0), kk);
                    // dV = P^T dY and dK = dS^T Q.
                    by_keys(2, (r0, r1), pv, dyv);
                    by_keys(1, (r0, r1), ds, q);
                }
            }
        })
    });
}
