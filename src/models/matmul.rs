//! Matrix products over strided views ([`View`]), with the `gemm` crate
//! (which Candle's own matmul uses), for the hand-written CNN and
//! Transformer steps and the CNN's custom ops: [`matmul`], cut across
//! threads so that every element is the same sum whatever the threads, and
//! [`small_matmul`], the attention's small products with `gemm`'s bits.

use gemm::Parallelism;
use rayon::prelude::*;

/// A matrix operand: a pointer to element (0, 0) and its row and column
/// strides, in elements.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: a `View` only describes memory; it is read in `unsafe` calls
// whose callers vouch for it (see [`matmul`]).
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// A row-major matrix starting at `data[0]`, with row stride `rs`;
    /// `.t()` gives its transpose.
    pub fn rows(data: &[f32], rs: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs,
            cs: 1,
        }
    }
    pub fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
    /// The same matrix from element (`r`, `c`) on (its lower-right part).
    /// The pointer is only computed here; [`matmul`]'s caller vouches for
    /// what it reads.
    pub fn sub(self, r: usize, c: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(r * self.rs + c * self.cs),
            ..self
        }
    }
}

/// The `[rows, cols]` matrix `v` transposed into `out` (`[cols, rows]`),
/// and a view of it (for [`small_matmul`], whose right operand needs
/// contiguous rows).
///
/// # Safety
/// `v` must be readable at every element of its `rows` x `cols`.
pub unsafe fn transposed(v: View, rows: usize, cols: usize, out: &mut Vec<f32>) -> View {
    out.resize(rows * cols, 0.0);
    let done = {
        #[cfg(target_arch = "x86_64")]
        {
            if v.cs == 1 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F; `out` holds rows x cols;
                // the caller vouches for `v`.
                unsafe { transpose_blocks_avx512(v, rows, cols, out) }
            } else {
                (0, 0)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (0, 0)
        }
    };
    // The elements the 16 x 16 blocks did not cover (all of them without
    // AVX-512): rows past `done.0`, and columns past `done.1`.
    for (c, dst) in out.chunks_exact_mut(rows).enumerate() {
        let first = if c < done.1 { done.0 } else { 0 };
        for (j, o) in dst.iter_mut().enumerate().skip(first) {
            // SAFETY: j < rows and c < cols; the caller vouches for `v`.
            *o = unsafe { *v.ptr.add(j * v.rs + c * v.cs) };
        }
    }
    View::rows(out, rows)
}

/// The whole 16 x 16 blocks of [`transposed`] (for `v.cs == 1`), each
/// through registers: 16 rows in, 16 columns out. Returns the rows and
/// columns covered, `(rows - rows % 16, cols - cols % 16)`.
///
/// # Safety
/// As [`transposed`], with `out.len() == rows * cols`, on a CPU with
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_blocks_avx512(
    v: View,
    rows: usize,
    cols: usize,
    out: &mut [f32],
) -> (usize, usize) {
    use std::arch::x86_64::*;
    let (rb, cb) = (rows - rows % 16, cols - cols % 16);
    for j0 in (0..rb).step_by(16) {
        for c0 in (0..cb).step_by(16) {
            // SAFETY: rows j0..j0+16 and columns c0..c0+16 are inside
            // `v` (the caller's) and inside `out` (rows x cols).
            unsafe {
                let mut r: [__m512; 16] =
                    std::array::from_fn(|i| _mm512_loadu_ps(v.ptr.add((j0 + i) * v.rs + c0)));
                // Pairs of rows interleaved, then pairs of pairs, then
                // 128-bit lanes twice: a 16 x 16 transpose.
                let mut t = [_mm512_setzero_ps(); 16];
                for i in 0..8 {
                    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
                }
                for i in 0..4 {
                    let (a, b) = (4 * i, 4 * i + 2);
                    r[4 * i] = _mm512_shuffle_ps::<0x44>(t[a], t[b]);
                    r[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[a], t[b]);
                    r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[a + 1], t[b + 1]);
                    r[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[a + 1], t[b + 1]);
                }
                for h in 0..2 {
                    for i in 0..4 {
                        let (a, b) = (8 * h + i, 8 * h + i + 4);
                        t[8 * h + i] = _mm512_shuffle_f32x4::<0x88>(r[a], r[b]);
                        t[8 * h + i + 4] = _mm512_shuffle_f32x4::<0xDD>(r[a], r[b]);
                    }
                }
                for i in 0..8 {
                    r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
                    r[i + 8] = _mm512_shuffle_f32x4::<0xDD>(t[i], t[i + 8]);
                }
                for (i, col) in r.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add((c0 + i) * rows + j0), *col);
                }
            }
        }
    }
    (rb, cb)
}

/// Whether to split a matrix product across threads: over the current rayon
/// pool's threads (RAYON_NUM_THREADS, else all cores), like Candle's own
/// products, without reading the environment each time.
pub fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`, with `dst` row-major at row stride
/// `dst_rs`; adds to `dst` when `accumulate`.
///
/// With `par` over several threads, a large product is cut into as many
/// blocks of rows (or of columns, whichever side is longer) as threads, each
/// computed by one thread on its own (see [`split`]): `gemm`'s own threading
/// meets its threads once per 512-long slice of `k` and packs the left
/// operand on the calling thread alone, so a weight gradient (`k` = the
/// batch's rows) did not get faster on two threads. Every element is the
/// same sum in the same order either way, so the bits do not depend on the
/// threads (tested in `split_products_keep_the_bits`).
///
/// # Safety
/// `dst` must be valid for writes, and `a` and `b` for reads, at every
/// element the shapes and strides address, and `dst` must not overlap them
/// or be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    par: Parallelism,
) {
    let threads = match par {
        Parallelism::None => 1,
        Parallelism::Rayon(0) => rayon::current_num_threads(),
        Parallelism::Rayon(t) => t,
    };
    let Some(cut) = split(m, n, k, threads) else {
        // SAFETY: forwarded from the caller.
        return unsafe { gemm_once(m, n, k, dst, dst_rs, accumulate, a, b, par) };
    };
    let len = if cut.rows { m } else { n };
    let dst = SendPtr(dst);
    (0..len.div_ceil(cut.block)).into_par_iter().for_each(|i| {
        let dst = &dst;
        let start = i * cut.block;
        let size = cut.block.min(len - start);
        // SAFETY: each block writes its own rows (columns) of `dst`; the
        // caller vouches for the rest.
        unsafe {
            if cut.rows {
                gemm_once(
                    size,
                    n,
                    k,
                    dst.0.add(start * dst_rs),
                    dst_rs,
                    accumulate,
                    a.sub(start, 0),
                    b,
                    Parallelism::None,
                )
            } else {
                gemm_once(
                    m,
                    size,
                    k,
                    dst.0.add(start),
                    dst_rs,
                    accumulate,
                    a,
                    b.sub(0, start),
                    Parallelism::None,
                )
            }
        }
    });
}

/// `dst[m, n] = a[m, k] · b[k, n]` for the attention's small products
/// (32 x 32 x 128 and the like), where `gemm`'s set-up per call (dispatch,
/// packing, buffers) cost more than the sums, and for the thin
/// convolutions' (784 x 16 x 145), where gemm's tile is mostly empty: `b`'s rows must be contiguous
/// (`b.cs == 1`); `dst` row-major at row stride `dst_rs`.
///
/// Each element is summed as `gemm`'s microkernels sum it when `k` fits one
/// of its slices (at most 512): from +0.0, one fused multiply-add per term,
/// in increasing `k`. So the bits are [`matmul`]'s (tested on random
/// operands); without AVX-512 it is [`matmul`].
///
/// # Safety
/// As [`matmul`].
pub unsafe fn small_matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: View,
    b: View,
) {
    assert!(
        k <= 512 && b.cs == 1,
        "small_matmul: k = {k} (at most 512), b.cs = {}",
        b.cs
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the rest is the caller's.
        return unsafe { small_matmul_avx512(m, n, k, dst, dst_rs, a, b) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { matmul(m, n, k, dst, dst_rs, false, a, b, Parallelism::None) }
}

/// [`small_matmul`] with AVX-512: tiles of 8 rows x 32 columns (16
/// accumulators), then at most one strip of 8 x 16, the edges one element
/// at a time (the same sums).
///
/// # Safety
/// As [`small_matmul`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn small_matmul_avx512(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: View,
    b: View,
) {
    use std::arch::x86_64::*;
    const R: usize = 8;
    const W: usize = 16;
    // SAFETY (whole body): every address is an element of the operands'
    // shapes, which the caller vouches for.
    unsafe {
        let at = |i: usize, p: usize| *a.ptr.add(i * a.rs + p * a.cs);
        let one = |i: usize, j: usize| {
            let mut acc = 0f32;
            for p in 0..k {
                acc = at(i, p).mul_add(*b.ptr.add(p * b.rs + j), acc);
            }
            *dst.add(i * dst_rs + j) = acc;
        };
        let mut i = 0;
        while i + R <= m {
            let mut j = 0;
            while j + 2 * W <= n {
                let mut acc = [[_mm512_setzero_ps(); 2]; R];
                for p in 0..k {
                    let row = b.ptr.add(p * b.rs + j);
                    let (b0, b1) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(W)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(at(i + r, p));
                        acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let out = dst.add((i + r) * dst_rs + j);
                    _mm512_storeu_ps(out, acc[0]);
                    _mm512_storeu_ps(out.add(W), acc[1]);
                }
                j += 2 * W;
            }
            // A 16-column strip (the thin convolutions' 16 channels):
            // 8 accumulators, one vector of b per term.
            if j + W <= n {
                let mut acc = [_mm512_setzero_ps(); R];
                for p in 0..k {
                    let b0 = _mm512_loadu_ps(b.ptr.add(p * b.rs + j));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(_mm512_set1_ps(at(i + r, p)), b0, *acc);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(dst.add((i + r) * dst_rs + j), *acc);
                }
                j += W;
            }
            for r in i..i + R {
                for q in j..n {
                    one(r, q);
                }
            }
            i += R;
        }
        for r in i..m {
            for q in 0..n {
                one(r, q);
            }
        }
    }
}

struct SendPtr(*mut f32);
// SAFETY: the blocks of [`matmul`] write disjoint parts of the destination.
unsafe impl Sync for SendPtr {}

/// How [`matmul`] cuts a product across threads: rows or columns, in blocks
/// of `block`.
#[derive(Debug, PartialEq)]
pub(crate) struct Cut {
    pub rows: bool,
    pub block: usize,
}

/// Below this many multiply-adds a product runs on one thread (gemm's own
/// threshold is 48 x 48 x 256 for each 512-long slice of `k`).
const SPLIT_WORK: usize = 48 * 48 * 256;

/// The cut [`matmul`] makes for `threads`, or `None` for one `gemm` call.
///
/// It keeps every element's sum as one call would make it: gemm sums `k` in
/// slices (of 512 when both sides of the product are at most 64, else of
/// `k / ceil(k / 512)`: `gemm_common::gemm::gemm_basic_generic`), and each
/// slice in order, whatever the rows and columns around it. So a cut must
/// not make a block "small" (both sides at most 64) out of a product that
/// was not, and no block may be a single row or column (gemm's matrix-vector
/// path sums in another order).
pub(crate) fn split(m: usize, n: usize, k: usize, threads: usize) -> Option<Cut> {
    if threads < 2 || m.saturating_mul(n).saturating_mul(k) < SPLIT_WORK {
        return None;
    }
    // The longer side first; the other where that one cannot be cut.
    let cut = |rows: bool| {
        let (len, other) = if rows { (m, n) } else { (n, m) };
        // Blocks of whole 16-float vectors.
        let block = len.div_ceil(threads).next_multiple_of(16);
        if block >= len {
            return None;
        }
        let last = len - (len.div_ceil(block) - 1) * block;
        let small = |side: usize| side <= 64 && other <= 64;
        if last < 2 || (k > 512 && !small(len) && small(last)) {
            return None;
        }
        Some(Cut { rows, block })
    };
    cut(m >= n).or_else(|| cut(m < n))
}

/// One `gemm` call for [`matmul`].
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_once(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    par: Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.ptr,
            a.cs as isize,
            a.rs as isize,
            b.ptr,
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A product cut across threads gives the bits of one single-threaded
    /// `gemm` call, and of `gemm`'s own threading, on random operands: the
    /// shapes of the CNN's and the Transformer's products (weight gradients
    /// with `k` over 512 among them, where `gemm` slices `k` differently for
    /// small products), plain and transposed operands, with and without
    /// accumulation, on 2 and 3 threads.
    #[test]
    fn split_products_keep_the_bits() {
        let mut rng = Rng::new(11);
        // (m, n, k): CNN conv and weight-gradient shapes, the Transformer's
        // linear layers, and shapes at the edges of `split`'s rules.
        let shapes = [
            (64, 289, 3000),
            (32, 10, 6000),
            (3000, 64, 289),
            (384, 128, 1024),
            (1024, 384, 128),
            (128, 3136, 64),
            (64, 128, 3136),
            (100, 40, 2000),
            (80, 40, 2000),
            (70, 64, 1100),
            (130, 2, 700),
            (2, 130, 700),
        ];
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            let (a, b, init) = (
                rng.normals_f32(m * k),
                rng.normals_f32(k * n),
                rng.normals_f32(m * n),
            );
            // a as [m, k] row-major or as the transpose of [k, m]; b likewise.
            let trans = i % 2 == 1;
            let av = if trans {
                View::rows(&a, m).t()
            } else {
                View::rows(&a, k)
            };
            let bv = if trans {
                View::rows(&b, k).t()
            } else {
                View::rows(&b, n)
            };
            let accumulate = i % 3 == 0;
            let run = |par: Parallelism, ours: bool| {
                let mut d = init.clone();
                // SAFETY: `d` is m x n, `a` and `b` hold m x k and k x n.
                unsafe {
                    if ours {
                        matmul(m, n, k, d.as_mut_ptr(), n, accumulate, av, bv, par)
                    } else {
                        gemm_once(m, n, k, d.as_mut_ptr(), n, accumulate, av, bv, par)
                    }
                }
                d.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let one = run(Parallelism::None, true);
            let same = |x: &[u32], what: &str| {
                let at = x.iter().zip(&one).position(|(a, b)| a != b);
                assert!(at.is_none(), "{m}x{n}x{k} {what}: element {at:?} differs");
            };
            same(&run(Parallelism::None, false), "one gemm call");
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let (cut, theirs) = pool.install(|| {
                    (
                        run(Parallelism::Rayon(threads), true),
                        run(Parallelism::Rayon(threads), false),
                    )
                });
                same(&cut, &format!("cut on {threads} threads"));
                same(&theirs, &format!("gemm's threads, {threads}"));
            }
        }
    }

    /// `transposed` is the transpose, element for element: row-major
    /// sources with row strides wider than the matrix (the attention's
    /// heads), sides that are and are not multiples of 16, and a source
    /// that is itself a transposed view (column stride above 1).
    #[test]
    fn transposed_gives_the_transpose() {
        let mut rng = Rng::new(13);
        for (rows, cols, rs) in [
            (128, 32, 384),
            (37, 20, 50),
            (16, 16, 16),
            (33, 48, 49),
            (5, 3, 3),
        ] {
            let data = rng.normals_f32(rows * rs);
            let mut out = vec![f32::NAN; 7];
            // Row-major, and column-major (element (j, c) at j + c * rows).
            let column_major = View::rows(&data, rows).t();
            for v in [View::rows(&data, rs), column_major] {
                // SAFETY: every (j, c) of rows x cols is inside `data`.
                let t = unsafe { transposed(v, rows, cols, &mut out) };
                assert_eq!(out.len(), rows * cols);
                assert!(t.rs == rows && t.cs == 1);
                for c in 0..cols {
                    for j in 0..rows {
                        let want = data[j * v.rs + c * v.cs];
                        assert_eq!(
                            out[c * rows + j].to_bits(),
                            want.to_bits(),
                            "{rows}x{cols} ({j}, {c})"
                        );
                    }
                }
            }
        }
    }

    /// `small_matmul` gives `matmul`'s bits on random operands: the
    /// attention's shapes and strides, and edges (rows not a multiple of 8,
    /// columns not a multiple of 32, k = 0, 1 and 512).
    #[test]
    fn small_matmul_gives_the_bits_of_gemm() {
        let mut rng = Rng::new(12);
        let shapes = [
            (32, 32, 32),
            (32, 128, 32),
            (32, 32, 128),
            (32, 32, 96),
            (7, 45, 33),
            (11, 31, 512),
            (5, 64, 1),
            (9, 70, 0),
            (64, 96, 17),
            (40, 16, 145),
            (13, 48, 289),
            (17, 50, 10),
        ];
        for (m, n, k) in shapes {
            // a as the transpose of a wider buffer (strided both ways), b
            // and dst with rows wider than n.
            let a = rng.normals_f32(k.max(1) * (m + 3));
            let av = View::rows(&a, m + 3).t();
            let bs = n + 5;
            let b = rng.normals_f32(k.max(1) * bs);
            let cs = n + 2;
            let mut ours = vec![f32::NAN; m * cs];
            let mut want = ours.clone();
            // SAFETY: the extents are those of the buffers above.
            unsafe {
                small_matmul(m, n, k, ours.as_mut_ptr(), cs, av, View::rows(&b, bs));
                let none = Parallelism::None;
                matmul(
                    m,
                    n,
                    k,
                    want.as_mut_ptr(),
                    cs,
                    false,
                    av,
                    View::rows(&b, bs),
                    none,
                )
            }
            for i in 0..m {
                for j in 0..n {
                    let (x, y) = (ours[i * cs + j], want[i * cs + j]);
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "{m}x{n}x{k} at ({i}, {j}): {x} vs {y}"
                    );
                }
            }
        }
    }

    /// The cuts `matmul` makes: big products in one block per thread, none
    /// for one thread or a small product, and none that would turn a block
    /// into a "small" product (both sides at most 64) when `k` is over 512.
    #[test]
    fn split_cuts_only_where_the_sums_stay() {
        assert_eq!(
            split(64, 289, 12544, 2),
            Some(Cut {
                rows: false,
                block: 160
            })
        );
        assert_eq!(
            split(4096, 384, 128, 2),
            Some(Cut {
                rows: true,
                block: 2048
            })
        );
        assert_eq!(split(4096, 384, 128, 1), None);
        assert_eq!(split(16, 16, 16, 2), None);
        // 100 rows in blocks of 64 and 36: 36 x 40 would be small; the
        // 40 columns are cut instead (100 x 32 and 100 x 8 are not small).
        assert_eq!(
            split(100, 40, 2000, 2),
            Some(Cut {
                rows: false,
                block: 32
            })
        );
        // 80 rows would give 48 + 32 (32 x 40 is small): the columns.
        assert_eq!(
            split(80, 40, 2000, 2),
            Some(Cut {
                rows: false,
                block: 32
            })
        );
        // The CNN's hidden layer (64 x 128 x 3136): 128 columns would give
        // two small blocks, so the rows are cut.
        assert_eq!(
            split(64, 128, 3136, 2),
            Some(Cut {
                rows: true,
                block: 32
            })
        );
        // The same with k at most 512 is cut (one slice of k either way).
        assert!(split(100, 40, 512, 2).is_some());
        // Small products stay small when cut.
        assert!(split(64, 64, 4096, 2).is_some());
    }

    #[test]
    fn matmul_of_strided_views_matches_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        // a is [m, k] row-major; b is stored as [n, k], used transposed.
        let mut dst = vec![1f32; m * n];
        unsafe {
            matmul(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                n,
                true,
                View::rows(&a, k),
                View::rows(&b, k).t(),
                Parallelism::None,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum::<f32>();
                assert!((dst[i * n + j] - want).abs() < 1e-6);
            }
        }
    }
}
