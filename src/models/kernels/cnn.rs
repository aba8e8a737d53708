//! The CNN's BatchNorm + ReLU backward and its 2 x 2 max-pool.

/// Per-column vectors of BatchNorm's backward (train mode, rows `[M, C]`,
/// `C` = the slices' length): the batch mean, 1 / sqrt(var + eps), and
/// gamma / sqrt(var + eps).
pub struct BnColumns<'a> {
    pub mean: &'a [f32],
    pub inv: &'a [f32],
    pub gain: &'a [f32],
}

simd_fn! {
    /// BatchNorm + ReLU backward, first pass: per column, the sums over rows
    /// of `dy` and `dy * xhat` (each column in row order, in f64), where `dy`
    /// is the output gradient `g` where the output `o` is positive, else 0,
    /// and `xhat = (z - mean) * inv`.
    pub fn bn_relu_bwd_sums(
        z: &[f32], o: &[f32], g: &[f32], cols: &BnColumns, sdy: &mut [f64], sdyx: &mut [f64]
    ) {
        let c = cols.mean.len();
        // The usual widths with the sums in registers (arrays of a known
        // size) instead of loaded and stored for every row.
        match c {
            16 => bn_sums_fixed::<16>(z, o, g, cols, sdy, sdyx),
            32 => bn_sums_fixed::<32>(z, o, g, cols, sdy, sdyx),
            64 => bn_sums_fixed::<64>(z, o, g, cols, sdy, sdyx),
            _ => bn_sums(z, o, g, cols, &mut sdy[..c], &mut sdyx[..c]),
        }
    }
}

/// [`bn_relu_bwd_sums`] onto `sdy` and `sdyx` (each `cols.mean.len()`
/// long): each column's terms added in row order.
/// One entry's terms of [`bn_relu_bwd_sums`]: `dy` (the gradient `g`
/// where the output `o` is positive, else 0) and `dy * xhat`, in f64.
#[inline(always)]
fn bn_terms(z: f32, o: f32, g: f32, mean: f32, inv: f32) -> (f64, f64) {
    let on = o > 0.0;
    let xhat = (z - mean) * inv;
    let dy = if on { g } else { 0.0 };
    let dyx = if on { g * xhat } else { 0.0 };
    (dy as f64, dyx as f64)
}

#[inline(always)]
fn bn_sums(z: &[f32], o: &[f32], g: &[f32], cols: &BnColumns, sdy: &mut [f64], sdyx: &mut [f64]) {
    let c = cols.mean.len();
    let (mean, inv) = (&cols.mean[..c], &cols.inv[..c]);
    let (sdy, sdyx) = (&mut sdy[..c], &mut sdyx[..c]);
    for ((zr, or), gr) in z
        .chunks_exact(c)
        .zip(o.chunks_exact(c))
        .zip(g.chunks_exact(c))
    {
        for j in 0..c {
            let (dy, dyx) = bn_terms(zr[j], or[j], gr[j], mean[j], inv[j]);
            sdy[j] += dy;
            sdyx[j] += dyx;
        }
    }
}

/// [`bn_sums`] for `C` columns, with the sums in local arrays: the same
/// additions in the same order.
#[inline(always)]
fn bn_sums_fixed<const C: usize>(
    z: &[f32],
    o: &[f32],
    g: &[f32],
    cols: &BnColumns,
    sdy: &mut [f64],
    sdyx: &mut [f64],
) {
    // `C` is the columns' number (the caller dispatches on it).
    let mean: &[f32; C] = cols.mean.try_into().expect("C columns");
    let inv: &[f32; C] = cols.inv[..C].try_into().expect("C columns");
    let mut a: [f64; C] = std::array::from_fn(|j| sdy[j]);
    let mut b: [f64; C] = std::array::from_fn(|j| sdyx[j]);
    let (zc, _) = z.as_chunks::<C>();
    let (oc, _) = o.as_chunks::<C>();
    let (gc, _) = g.as_chunks::<C>();
    for ((zr, or), gr) in zc.iter().zip(oc).zip(gc) {
        for j in 0..C {
            let (dy, dyx) = bn_terms(zr[j], or[j], gr[j], mean[j], inv[j]);
            a[j] += dy;
            b[j] += dyx;
        }
    }
    sdy[..C].copy_from_slice(&a);
    sdyx[..C].copy_from_slice(&b);
}
simd_fn! {
    /// BatchNorm + ReLU backward, second pass: `dz = gain * (dy - (sdy +
    /// xhat * sdyx) / M)` per entry, with the first pass's sums (as f32)
    /// and `inv_m` = 1 / M.
    pub fn bn_relu_bwd_dz(
        z: &[f32], o: &[f32], g: &[f32], cols: &BnColumns, sdy: &[f32], sdyx: &[f32], inv_m: f32,
        dz: &mut [f32]
    ) {
        let c = cols.mean.len();
        let (mean, inv, gain) = (&cols.mean[..c], &cols.inv[..c], &cols.gain[..c]);
        let (sdy, sdyx) = (&sdy[..c], &sdyx[..c]);
        let rows = z.chunks_exact(c).zip(o.chunks_exact(c)).zip(g.chunks_exact(c));
        for (((zr, or), gr), dzr) in rows.zip(dz.chunks_exact_mut(c)) {
            for j in 0..c {
                let dy = if or[j] > 0.0 { gr[j] } else { 0.0 };
                let xhat = (zr[j] - mean[j]) * inv[j];
                dzr[j] = gain[j] * (dy - (sdy[j] + xhat * sdyx[j]) * inv_m);
            }
        }
    }
}

/// The shape of rows `[N * H * W, C]`: one row per pixel (n, y, x).
#[derive(Clone, Copy, Debug)]
pub struct Pixels {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Pixels {
    /// Calls `f(window, out_row)` for every 2 x 2, stride 2 window: its
    /// four input rows in row-major order, and its output row (odd last
    /// rows and columns belong to no window).
    #[inline(always)]
    fn windows(self, mut f: impl FnMut([usize; 4], usize)) {
        let Self { n, h, w, .. } = self;
        let (oh, ow) = (h / 2, w / 2);
        for img in 0..n {
            for py in 0..oh {
                for px in 0..ow {
                    let top = (img * h + 2 * py) * w + 2 * px;
                    f(
                        [top, top + 1, top + w, top + w + 1],
                        (img * oh + py) * ow + px,
                    );
                }
            }
        }
    }
}

simd_fn! {
    /// 2 x 2 max-pool, stride 2, of rows `x` to rows `out` (`[N * (H / 2) *
    /// (W / 2), C]`), and in `winners` each output's position in its window
    /// (0..4, as f32): the first maximum in row-major order, as torch's, or
    /// the last NaN.
    pub fn max_pool_2x2(x: &[f32], p: Pixels, out: &mut [f32], winners: &mut [f32]) {
        let c = p.c;
        p.windows(|win, o| {
            let best = &mut out[o * c..(o + 1) * c];
            let k = &mut winners[o * c..(o + 1) * c];
            best.copy_from_slice(&x[win[0] * c..(win[0] + 1) * c]);
            k.fill(0.0);
            for (r, &row) in win.iter().enumerate().skip(1) {
                let src = &x[row * c..(row + 1) * c];
                for ((b, k), &v) in best.iter_mut().zip(k.iter_mut()).zip(src) {
                    let take = v > *b || v.is_nan();
                    *b = if take { v } else { *b };
                    *k = if take { r as f32 } else { *k };
                }
            }
        });
    }
}
simd_fn! {
    /// The backward of [`max_pool_2x2`]: each input pixel gets its window's
    /// output gradient `g` where it was the winner, else 0 (windows do not
    /// overlap). `dx` must be zero where no window reaches (odd edges).
    pub fn max_pool_2x2_bwd(g: &[f32], winners: &[f32], p: Pixels, dx: &mut [f32]) {
        let Pixels { n, h, w, c } = p;
        let (oh, ow) = (h / 2, w / 2);
        for img in 0..n {
            for py in 0..oh {
                for px in 0..ow {
                    let o = (img * oh + py) * ow + px;
                    let (go, k) = (&g[o * c..(o + 1) * c], &winners[o * c..(o + 1) * c]);
                    let top = (img * h + 2 * py) * w + 2 * px;
                    for (r, row) in [top, top + 1, top + w, top + w + 1].into_iter().enumerate() {
                        let dst = &mut dx[row * c..(row + 1) * c];
                        let r = r as f32;
                        for j in 0..c {
                            // `0.0 + g`, as a scatter-add into zeros: -0.0
                            // becomes 0.0.
                            dst[j] = if k[j] == r { 0.0 + go[j] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BatchNorm + ReLU backward sums, for the widths with the sums in
    /// registers (16, 32, 64) and another (24), give the plain loop's bits
    /// onto what the sums held, with some outputs exactly 0.
    #[test]
    fn bn_relu_bwd_sums_match_the_plain_loop() {
        let mut rng = crate::rng::Rng::new(41);
        for c in [16usize, 32, 64, 24] {
            let m = 301;
            let z = rng.normals_f32(m * c);
            let o: Vec<f32> = z.iter().map(|v| v.max(0.0)).collect();
            let g = rng.normals_f32(m * c);
            let (mean, inv, gain) = (rng.normals_f32(c), rng.normals_f32(c), rng.normals_f32(c));
            let cols = BnColumns {
                mean: &mean,
                inv: &inv,
                gain: &gain,
            };
            let start: Vec<f64> = rng.normals_f32(2 * c).iter().map(|&v| v as f64).collect();
            let (mut want_a, mut want_b) = (start[..c].to_vec(), start[c..].to_vec());
            for r in 0..m {
                for j in 0..c {
                    let i = r * c + j;
                    let on = o[i] > 0.0;
                    let xhat = (z[i] - mean[j]) * inv[j];
                    want_a[j] += if on { g[i] } else { 0.0 } as f64;
                    want_b[j] += if on { g[i] * xhat } else { 0.0 } as f64;
                }
            }
            let (mut a, mut b) = (start[..c].to_vec(), start[c..].to_vec());
            bn_relu_bwd_sums(&z, &o, &g, &cols, &mut a, &mut b);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                (bits(&a), bits(&b)),
                (bits(&want_a), bits(&want_b)),
                "c = {c}"
            );
        }
    }

    /// The max-pool kernels against a plain per-window definition, on odd
    /// sides (the last row and column belong to no window), with ties
    /// (values from a small set) and NaNs: the first maximum wins, or the
    /// last NaN, and the gradient goes to the winner only.
    #[test]
    fn max_pool_matches_its_definition_with_ties_nans_and_odd_sides() {
        let p = Pixels {
            n: 2,
            h: 5,
            w: 7,
            c: 11,
        };
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let len = p.n * p.h * p.w * p.c;
        let x: Vec<f32> = (0..len)
            .map(|_| match next() % 13 {
                0 => f32::NAN,
                v => (v % 4) as f32 - 1.5,
            })
            .collect();
        let outs = p.n * (p.h / 2) * (p.w / 2) * p.c;
        let g: Vec<f32> = (0..outs).map(|i| i as f32 + 1.0).collect();
        let (mut y, mut k) = (vec![0f32; outs], vec![0f32; outs]);
        max_pool_2x2(&x, p, &mut y, &mut k);
        let mut dx = vec![0f32; len];
        max_pool_2x2_bwd(&g, &k, p, &mut dx);
        let mut want_dx = vec![0f32; len];
        let mut nans = 0;
        for img in 0..p.n {
            for py in 0..p.h / 2 {
                for px in 0..p.w / 2 {
                    for ci in 0..p.c {
                        let at = |dy: usize, dx: usize| {
                            ((img * p.h + 2 * py + dy) * p.w + 2 * px + dx) * p.c + ci
                        };
                        let idx = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                        let mut best = 0;
                        for r in 1..4 {
                            if x[idx[r]] > x[idx[best]] || x[idx[r]].is_nan() {
                                best = r;
                            }
                        }
                        let o = ((img * (p.h / 2) + py) * (p.w / 2) + px) * p.c + ci;
                        nans += x[idx[best]].is_nan() as usize;
                        assert_eq!(y[o].to_bits(), x[idx[best]].to_bits(), "output {o}");
                        assert_eq!(k[o], best as f32, "winner of output {o}");
                        want_dx[idx[best]] = g[o];
                    }
                }
            }
        }
        assert!(nans > 0, "the input has windows won by a NaN");
        assert_eq!(dx, want_dx);
    }
}
