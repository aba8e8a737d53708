//! LayerNorm's rows (the Transformer's), forward and backward.

use super::basics::{LANES, combine, sum};

/// Mean and 1/sqrt(var + eps) of a row (torch's biased variance).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let inv_d = 1.0 / x.len() as f32;
    let mu = sum(x) * inv_d;
    let mut acc = [0f32; LANES];
    let (chunks, rest) = x.as_chunks::<LANES>();
    let rest: f32 = rest.iter().map(|v| (v - mu) * (v - mu)).sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += (c[i] - mu) * (c[i] - mu);
        }
    }
    (mu, 1.0 / (combine(acc, rest) * inv_d + eps).sqrt())
}

simd_fn! {
    /// [`row_stats`] of every row of `x` (width `d`).
    pub fn layer_norm_stats(x: &[f32], d: usize, eps: f32, mean: &mut [f32], rstd: &mut [f32]) {
        for ((xr, m), r) in x.chunks_exact(d).zip(mean.iter_mut()).zip(rstd.iter_mut()) {
            (*m, *r) = row_stats(xr, eps);
        }
    }
}

simd_fn! {
    /// LayerNorm of rows of `x` (width `w.len()`, torch's biased variance):
    /// writes `out`, and each row's mean and 1/sqrt(var + eps).
    pub fn layer_norm_rows(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) {
        let d = w.len();
        for (((xr, yr), m), r) in x
            .chunks_exact(d)
            .zip(out.chunks_exact_mut(d))
            .zip(mean.iter_mut())
            .zip(rstd.iter_mut())
        {
            let (mu, rs) = row_stats(xr, eps);
            // Zipped slices, so that the loop vectorises (indexing `w[j]`
            // and `b[j]` kept a bounds check per element).
            for (((y, &xv), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *y = (xv - mu) * rs * wv + bv;
            }
            *m = mu;
            *r = rs;
        }
    }
}

simd_fn! {
    /// The backward of [`layer_norm_rows`]: adds the input gradient to `dx`
    /// (the residual stream's gradient), and this block of rows' weight and
    /// bias gradients to `dw` and `db`. `scratch` holds one row.
    pub fn layer_norm_bwd_rows(
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        w: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        scratch: &mut [f32],
    ) {
        let d = w.len();
        let inv_d = 1.0 / d as f32;
        for ((((xr, dyr), dxr), &mu), &rs) in x
            .chunks_exact(d)
            .zip(dy.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
            .zip(mean)
            .zip(rstd)
        {
            // Zipped slices of one length, so that the loops vectorise
            // (indexing `dw[j]` and the like kept a bounds check in each).
            let (xhat, dw, db) = (&mut scratch[..d], &mut dw[..d], &mut db[..d]);
            for ((((h, &xv), &g), dw), db) in xhat.iter_mut().zip(xr).zip(dyr).zip(dw).zip(db) {
                *h = (xv - mu) * rs;
                *dw += g * *h;
                *db += g;
            }
            let (mut s1, mut s2) = ([0f32; LANES], [0f32; LANES]);
            let (cy, ry) = dyr.as_chunks::<LANES>();
            let (cw, rw) = w.as_chunks::<LANES>();
            let (ch, rh) = xhat.as_chunks::<LANES>();
            for ((y, w), h) in cy.iter().zip(cw).zip(ch) {
                for i in 0..LANES {
                    let g = y[i] * w[i];
                    s1[i] += g;
                    s2[i] += g * h[i];
                }
            }
            let (mut r1, mut r2) = (0f32, 0f32);
            for ((&y, &w), &h) in ry.iter().zip(rw).zip(rh) {
                let g = y * w;
                r1 += g;
                r2 += g * h;
            }
            let m1 = combine(s1, r1) * inv_d;
            let m2 = combine(s2, r2) * inv_d;
            for (((dx, &g), &wv), &h) in dxr.iter_mut().zip(dyr).zip(w).zip(&*xhat) {
                *dx += rs * (g * wv - m1 - h * m2);
            }
        }
    }
}
