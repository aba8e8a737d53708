//! Row passes of the hand-written CNN step (`manual.rs`) on rows `[M,
//! C]`: the patches of one image and their adjoint, the linear layers,
//! BatchNorm's column statistics, torch's flattening; and the elementwise
//! kernels, compiled plainly and for AVX2+FMA, picked at run time, without
//! fused multiply-adds ([`kernels::simd_fn`](crate::models::kernels)).

use rayon::prelude::*;

use crate::models::kernels::simd_fn;
use crate::models::linear as dense;

simd_fn! {
    /// `acc <- acc + x`, elementwise.
    pub fn add_rows(acc: &mut [f32], x: &[f32]) {
        for (a, v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
}

simd_fn! {
    /// Per column of rows `x` (`[M, C]`, C = `out.len()`): the sum in f64,
    /// in row order, into `out`.
    pub fn col_sums_f64(x: &[f32], out: &mut [f64]) {
        let c = out.len();
        for row in x.chunks_exact(c) {
            for (a, v) in out.iter_mut().zip(row) {
                *a += *v as f64;
            }
        }
    }
}

simd_fn! {
    /// Per column of rows `x`: the sum of squared deviations from `mean`
    /// in f64, in row order, into `out`.
    pub fn col_sq_dev_f64(x: &[f32], mean: &[f64], out: &mut [f64]) {
        let c = out.len();
        let mean = &mean[..c];
        for row in x.chunks_exact(c) {
            for j in 0..c {
                let d = row[j] as f64 - mean[j];
                out[j] += d * d;
            }
        }
    }
}

simd_fn! {
    /// `out = max(gain * z + shift, 0)` per column of rows `z`.
    pub fn scale_shift_relu(z: &[f32], gain: &[f32], shift: &[f32], out: &mut [f32]) {
        let c = gain.len();
        let shift = &shift[..c];
        for (o, z) in out.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
            for j in 0..c {
                o[j] = (gain[j] * z[j] + shift[j]).max(0.0);
            }
        }
    }
}

simd_fn! {
    /// In place: `x <- max(x, 0)`.
    pub fn relu(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

simd_fn! {
    /// In place: `d <- d` where `out > 0`, else 0 (ReLU's backward by its
    /// output).
    pub fn relu_bwd(d: &mut [f32], out: &[f32]) {
        for (d, o) in d.iter_mut().zip(out) {
            *d = if *o > 0.0 { *d } else { 0.0 };
        }
    }
}

/// The 3 x 3, padding 1 patches of one image's rows `x` (`[S * S, c]`)
/// into `out` (`[S * S, 9 c + 1]`, `(ky, kx, c)` then a 1), every entry
/// written.
pub(super) fn im2col_image(x: &[f32], side: usize, c: usize, out: &mut [f32]) {
    let kk = 9 * c + 1;
    for (row, o) in out.chunks_exact_mut(kk).enumerate() {
        let (y, x0) = (row / side, row % side);
        for ky in 0..3 {
            for kx in 0..3 {
                let dst = &mut o[(ky * 3 + kx) * c..(ky * 3 + kx + 1) * c];
                let (sy, sx) = (y + ky, x0 + kx);
                if sy == 0 || sy > side || sx == 0 || sx > side {
                    dst.fill(0.0);
                } else {
                    let src = (sy - 1) * side + sx - 1;
                    dst.copy_from_slice(&x[src * c..(src + 1) * c]);
                }
            }
        }
        o[kk - 1] = 1.0;
    }
}

/// The adjoint of [`im2col_image`] for one image: each pixel's gradient
/// `dx` (`[S * S, c]`) is the sum of its patch entries in `dcols` (`[S *
/// S, 9 c]`, no ones column), every entry written.
pub(super) fn col2im_image(dcols: &[f32], side: usize, c: usize, dx: &mut [f32]) {
    let kk = 9 * c;
    for (src, d) in dx.chunks_exact_mut(c).enumerate() {
        let (sy, sx) = (src / side, src % side);
        let mut first = true;
        // Output pixel (y, x) reads source (y + ky - 1, x + kx - 1).
        for ky in 0..3 {
            let y = sy + 1;
            if y < ky || y - ky >= side {
                continue;
            }
            for kx in 0..3 {
                let x = sx + 1;
                if x < kx || x - kx >= side {
                    continue;
                }
                let row = (y - ky) * side + (x - kx);
                let at = row * kk + (ky * 3 + kx) * c;
                let part = &dcols[at..at + c];
                if first {
                    d.copy_from_slice(part);
                    first = false;
                } else {
                    add_rows(d, part);
                }
            }
        }
        if first {
            d.fill(0.0);
        }
    }
}

/// `out[rows, fout] = b + x[rows, fin] · wᵀ`, `w` as torch's `[fout, fin]`.
pub(super) fn linear(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32]) {
    for row in out.chunks_exact_mut(b.len()) {
        row.copy_from_slice(b);
    }
    dense::add_x_wt(out, x, w, b.len());
}

/// Gradients of a linear layer with weights `w [fout, fin]` from `dout
/// [rows, fout]` and its input `x [rows, fin]`: `gw = doutᵀ · x`, `gb` the
/// column sums, and, when asked, `dx = dout · w`.
pub(super) fn linear_bwd(
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    gw: &mut [f32],
    gb: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let fout = gb.len();
    dense::grads(dout, x, w, fout, gw, dx);
    gb.fill(0.0);
    for row in dout.chunks_exact(fout) {
        add_rows(gb, row);
    }
}

/// Per column of `x` (`[M, c]`, in blocks of `block` rows, one partial
/// each, added in block order): the mean and the biased variance, in f64.
pub(super) fn column_stats(
    x: &[f32],
    c: usize,
    block: usize,
    parts: &mut Vec<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let m = x.len() / c;
    let blocks = x.len().div_ceil(block * c);
    let reduce = |parts: &mut Vec<f64>, f: &(dyn Fn(&[f32], &mut [f64]) + Sync)| {
        parts.clear();
        parts.resize(blocks * c, 0.0);
        parts
            .par_chunks_mut(c)
            .zip(x.par_chunks(block * c))
            .for_each(|(p, rows)| f(rows, p));
        let mut total = vec![0f64; c];
        for p in parts.chunks_exact(c) {
            for (t, v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
        total
    };
    let mean: Vec<f64> = reduce(parts, &|rows, p| col_sums_f64(rows, p))
        .into_iter()
        .map(|s| s / m as f64)
        .collect();
    let var = reduce(parts, &|rows, p| col_sq_dev_f64(rows, &mean, p))
        .into_iter()
        .map(|s| s / m as f64)
        .collect();
    (mean, var)
}

/// Pooled rows `[N * S * S, c]` to torch's flattening `[N, c * S * S]`.
pub(super) fn flatten(x: &[f32], s2: usize, c: usize, out: &mut [f32]) {
    out.par_chunks_mut(c * s2)
        .zip(x.par_chunks(s2 * c))
        .for_each(|(o, img)| {
            for (p, row) in img.chunks_exact(c).enumerate() {
                for (j, v) in row.iter().enumerate() {
                    o[j * s2 + p] = *v;
                }
            }
        });
}

/// The adjoint of [`flatten`].
pub(super) fn unflatten(d: &[f32], s2: usize, c: usize, out: &mut [f32]) {
    out.par_chunks_mut(s2 * c)
        .zip(d.par_chunks(c * s2))
        .for_each(|(o, img)| {
            for (p, row) in o.chunks_exact_mut(c).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = img[j * s2 + p];
                }
            }
        });
}
