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
    /// in row order, onto `out`.
    pub fn col_sums_f64(x: &[f32], out: &mut [f64]) {
        // The usual widths with the sums in registers (arrays of a known
        // size) instead of loaded and stored for every row: the same
        // additions in the same order.
        match out.len() {
            16 => sums_fixed::<16>(x, out),
            32 => sums_fixed::<32>(x, out),
            64 => sums_fixed::<64>(x, out),
            c => {
                for row in x.chunks_exact(c) {
                    for (a, v) in out.iter_mut().zip(row) {
                        *a += *v as f64;
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// Per column of rows `x`: the sum of squared deviations from `mean`
    /// in f64, in row order, onto `out`.
    pub fn col_sq_dev_f64(x: &[f32], mean: &[f64], out: &mut [f64]) {
        let c = out.len();
        let mean = &mean[..c];
        match c {
            16 => sq_dev_fixed::<16>(x, mean, out),
            32 => sq_dev_fixed::<32>(x, mean, out),
            64 => sq_dev_fixed::<64>(x, mean, out),
            _ => {
                for row in x.chunks_exact(c) {
                    for j in 0..c {
                        let d = row[j] as f64 - mean[j];
                        out[j] += d * d;
                    }
                }
            }
        }
    }
}

/// [`col_sums_f64`] for `C` columns, with the sums in an array of `C`
/// while the rows go by.
#[inline(always)]
fn sums_fixed<const C: usize>(x: &[f32], out: &mut [f64]) {
    let mut acc: [f64; C] = std::array::from_fn(|j| out[j]);
    let (rows, _) = x.as_chunks::<C>();
    for row in rows {
        for j in 0..C {
            acc[j] += row[j] as f64;
        }
    }
    out[..C].copy_from_slice(&acc);
}

/// [`col_sq_dev_f64`] for `C` columns, likewise.
#[inline(always)]
fn sq_dev_fixed<const C: usize>(x: &[f32], mean: &[f64], out: &mut [f64]) {
    let mean: [f64; C] = std::array::from_fn(|j| mean[j]);
    let mut acc: [f64; C] = std::array::from_fn(|j| out[j]);
    let (rows, _) = x.as_chunks::<C>();
    for row in rows {
        for j in 0..C {
            let d = row[j] as f64 - mean[j];
            acc[j] += d * d;
        }
    }
    out[..C].copy_from_slice(&acc);
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
        // The taps kx = lo..hi of a row of the kernel fall inside the image
        // (source pixels x0 - 1 + kx), and are contiguous in both the
        // source row and the patch: one copy per kernel row.
        let lo = usize::from(x0 == 0);
        let hi = if x0 + 1 < side { 3 } else { 2 };
        for ky in 0..3 {
            let dst = &mut o[ky * 3 * c..(ky + 1) * 3 * c];
            let sy = y + ky;
            if sy == 0 || sy > side {
                dst.fill(0.0);
                continue;
            }
            let src = &x[((sy - 1) * side + x0 + lo - 1) * c..][..(hi - lo) * c];
            dst[..lo * c].fill(0.0);
            dst[hi * c..].fill(0.0);
            if c == 1 {
                // A few floats: element by element (a copy call costs more).
                for (d, s) in dst[lo..hi].iter_mut().zip(src) {
                    *d = *s;
                }
            } else {
                dst[lo * c..hi * c].copy_from_slice(src);
            }
        }
        o[kk - 1] = 1.0;
    }
}

simd_fn! {
    /// The adjoint of [`im2col_image`] for one image: each pixel's gradient
    /// `dx` (`[S * S, c]`) is the sum of its patch entries in `dcols` (`[S *
    /// S, 9 c]`, no ones column), every entry written.
    ///
    /// The patch rows are read once, in order from the last, and each tap
    /// added to its pixel: a pixel then receives its taps in increasing
    /// `(ky, kx)`, the order of the sum written per pixel, and starting
    /// from -0.0, which `x + -0.0` returns exactly (even for x = -0.0), so
    /// every sum has the bits of "the first tap, plus the others in order"
    /// (tested against that form). Dispatched once per image, the
    /// additions inlined.
    pub fn col2im_image(dcols: &[f32], side: usize, c: usize, dx: &mut [f32]) {
        let kk = 9 * c;
        dx.fill(-0.0);
        for (row, taps) in dcols.chunks_exact(kk).enumerate().rev() {
            let (y, x) = (row / side, row % side);
            // Tap (ky, kx) of output pixel (y, x) reads source pixel
            // (y + ky - 1, x + kx - 1).
            for ky in 0..3 {
                let sy = y + ky;
                if sy == 0 || sy > side {
                    continue;
                }
                for kx in 0..3 {
                    let sx = x + kx;
                    if sx == 0 || sx > side {
                        continue;
                    }
                    let at = ((sy - 1) * side + sx - 1) * c;
                    let t = (ky * 3 + kx) * c;
                    for (a, v) in dx[at..at + c].iter_mut().zip(&taps[t..t + c]) {
                        *a += v;
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// BatchNorm's column sums and squared deviations, for the widths with
    /// the sums in registers (16, 32, 64) and another (24), give the plain
    /// loops' bits onto what `out` held.
    #[test]
    fn column_sums_match_the_plain_loops() {
        let mut rng = Rng::new(51);
        for c in [16usize, 32, 64, 24] {
            let m = 203;
            let x = rng.normals_f32(m * c);
            let mean: Vec<f64> = rng.normals_f32(c).iter().map(|&v| v as f64).collect();
            let start: Vec<f64> = rng.normals_f32(c).iter().map(|&v| v as f64).collect();
            let (mut want_s, mut want_q) = (start.clone(), start.clone());
            for row in x.chunks_exact(c) {
                for j in 0..c {
                    want_s[j] += row[j] as f64;
                    let d = row[j] as f64 - mean[j];
                    want_q[j] += d * d;
                }
            }
            let (mut s, mut q) = (start.clone(), start.clone());
            col_sums_f64(&x, &mut s);
            col_sq_dev_f64(&x, &mean, &mut q);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&s), bits(&want_s), "sums, c = {c}");
            assert_eq!(bits(&q), bits(&want_q), "squared deviations, c = {c}");
        }
    }

    /// The adjoint of im2col written per pixel: its first tap copied, the
    /// others added in increasing (ky, kx) (the form `col2im_image` had).
    fn col2im_gather(dcols: &[f32], side: usize, c: usize, dx: &mut [f32]) {
        let kk = 9 * c;
        for (src, d) in dx.chunks_exact_mut(c).enumerate() {
            let (sy, sx) = (src / side + 1, src % side + 1);
            let mut first = true;
            for ky in 0..3 {
                for kx in 0..3 {
                    if sy < ky || sy - ky >= side || sx < kx || sx - kx >= side {
                        continue;
                    }
                    let at = ((sy - ky) * side + sx - kx) * kk + (ky * 3 + kx) * c;
                    for (a, v) in d.iter_mut().zip(&dcols[at..at + c]) {
                        *a = if first { *v } else { *a + v };
                    }
                    first = false;
                }
            }
        }
    }

    /// Fresh random patch gradients, with signed zeros among them (the
    /// case where starting a sum from -0.0 and from the first tap could
    /// differ): the scattered sum has the bits of the per-pixel one.
    #[test]
    fn col2im_gives_the_bits_of_the_per_pixel_sum() {
        let mut rng = Rng::new(11);
        for (side, c) in [(1, 1), (2, 3), (5, 1), (7, 16), (14, 5), (28, 16)] {
            let dcols: Vec<f32> = (0..side * side * 9 * c)
                .map(|_| match rng.below(8) {
                    0 => 0.0,
                    1 => -0.0,
                    _ => (rng.normal() * 10f64.powi(rng.below(7) as i32 - 3)) as f32,
                })
                .collect();
            let (mut want, mut got) = (vec![1f32; side * side * c], vec![1f32; side * side * c]);
            col2im_gather(&dcols, side, c, &mut want);
            col2im_image(&dcols, side, c, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "side {side}, c {c}");
        }
        // Every tap -0.0: each pixel's sum is -0.0.
        let (side, c) = (4, 2);
        let dcols = vec![-0.0f32; side * side * 9 * c];
        let mut got = vec![1f32; side * side * c];
        col2im_image(&dcols, side, c, &mut got);
        assert!(got.iter().all(|v| v.to_bits() == (-0.0f32).to_bits()));
    }

    /// The patches copied one tap at a time, each tap's source pixel
    /// checked on its own (the form `im2col_image` had).
    fn im2col_per_tap(x: &[f32], side: usize, c: usize, out: &mut [f32]) {
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

    /// `im2col_image` writes every entry as the tap-by-tap form, on fresh
    /// random images (sides 1 and 2, odd and even, one and many channels),
    /// over a buffer full of NaN.
    #[test]
    fn im2col_equals_the_tap_by_tap_form() {
        let mut rng = Rng::new(13);
        for (side, c) in [
            (1, 1),
            (1, 4),
            (2, 1),
            (2, 3),
            (5, 1),
            (7, 16),
            (14, 5),
            (28, 1),
        ] {
            let x = rng.normals_f32(side * side * c);
            let n = side * side * (9 * c + 1);
            let (mut want, mut got) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            im2col_per_tap(&x, side, c, &mut want);
            im2col_image(&x, side, c, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "side {side}, c {c}");
        }
    }
}
