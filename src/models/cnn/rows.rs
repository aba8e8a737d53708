//! Row kernels of the hand-written CNN step (`manual.rs`) on rows `[M,
//! C]`: compiled plainly and for AVX2+FMA, picked at run time, without
//! fused multiply-adds ([`kernels::simd_fn`](crate::models::kernels)).

use crate::models::kernels::simd_fn;

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
