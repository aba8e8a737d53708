//! CPU kernels for the hand-written Transformer step (`transformer/manual.rs`)
//! and the CNN's custom ops (`cnn.rs`): vectorisable f32 loops for exp,
//! GELU, causal softmax, LayerNorm, cross-entropy, 2 x 2 max-pool and the
//! BatchNorm + ReLU backward. The matrix products are in
//! [`matmul`](super::matmul).
//!
//! Every loop is compiled three times, plainly, for AVX2+FMA and for
//! AVX-512, and the CPU picks at run time ([`simd_fn!`]). No version
//! contracts `a * b + c` into a fused multiply-add, and each element goes
//! through the same operations whatever the vector width, so all three give
//! the same bits. Reductions keep
//! eight partial sums in a fixed order (so they vectorise without
//! reassociation, and are deterministic).

/// Defines `pub fn $name` that runs its body compiled for AVX-512 when the
/// CPU has it, else for AVX2+FMA when it has them, and plainly otherwise.
macro_rules! simd_fn {
    // One compiled variant `$v` of `imp`, called when the CPU has
    // `$feature`s (string literals, passed as tokens so that
    // `is_x86_feature_detected!` still sees literals).
    (@variant $v:ident, $enable:tt, [$($feature:tt),+], ($($a:ident : $t:ty),*) $(-> $r:ty)?) => {
        #[target_feature(enable = $enable)]
        #[allow(clippy::too_many_arguments)]
        fn $v($($a: $t),*) $(-> $r)? {
            imp($($a),*)
        }
        if $(std::arch::is_x86_feature_detected!($feature))&&+ {
            // SAFETY: the CPU has the features `$v` is compiled for,
            // checked just above.
            return unsafe { $v($($a),*) };
        }
    };
    ($(#[$m:meta])* pub fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                simd_fn!(@variant wide, "avx512f,avx512bw,avx512vl,avx2,fma",
                    ["avx512f", "avx512bw", "avx512vl", "fma"], ($($a: $t),*) $(-> $r)?);
                simd_fn!(@variant fast, "avx2,fma", ["avx2", "fma"], ($($a: $t),*) $(-> $r)?);
            }
            imp($($a),*)
        }
    };
}

pub(crate) use simd_fn;

const LANES: usize = 8;

#[inline(always)]
fn combine(acc: [f32; LANES], rest: f32) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + rest
}

/// Sum of `x` in a fixed order.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    // Whole chunks as arrays, so that each step is one 8-lane addition.
    let (chunks, rest) = x.as_chunks::<LANES>();
    let rest: f32 = rest.iter().sum();
    let mut acc = [0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    combine(acc, rest)
}

/// Dot product of `a` and `b` in a fixed order.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, ra) = a[..n].as_chunks::<LANES>();
    let (cb, rb) = b[..n].as_chunks::<LANES>();
    let rest: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    let mut acc = [0f32; LANES];
    for (ca, cb) in ca.iter().zip(cb) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    combine(acc, rest)
}

/// `e^x` within 2 ulp for x in [-87, 88] (Cephes' expf: x = n ln2 + r,
/// a degree-6 polynomial for e^r, 2^n from the exponent bits). Inputs
/// below -87 give about 1.6e-38 instead of a smaller number or 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick (vectorises, unlike round()):
    // `shifted` holds n in the low bits of its mantissa, so its bits are
    // 0x4B40_0000 + n for the |n| <= 127 that the clamp allows.
    let shifted = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    // 2^n from the exponent bits: (n + 127) << 23, with n read from
    // `shifted`'s bits in wrapping integer arithmetic (a float-to-int cast
    // would saturate, which does not vectorise).
    p * f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(0x4B40_0000 - 127)
            .wrapping_shl(23),
    )
}

/// GELU (the erf form, torch's default) and its derivative:
/// `(u Φ(u), Φ(u) + u φ(u))`. Φ comes from erfc by Numerical Recipes'
/// Chebyshev fit (relative error below 1.2e-7 everywhere, so the negative
/// tail is as accurate as the rest).
#[inline(always)]
pub fn gelu_and_grad(u: f32) -> (f32, f32) {
    let z = u.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    // erfc(z) = t e^(-z^2 + poly); Φ(-|u|) = erfc(z) / 2.
    let lower = 0.5 * t * exp(-z * z + poly);
    let cdf = if u >= 0.0 { 1.0 - lower } else { lower };
    // φ(u) = e^(-u^2/2) / sqrt(2π)
    let pdf = exp(-0.5 * u * u) * 0.398_942_3;
    (u * cdf, cdf + u * pdf)
}

simd_fn! {
    /// In place: `u <- gelu(u)`, and `du <- gelu'(u)` (kept for the backward).
    pub fn gelu_rows(u: &mut [f32], du: &mut [f32]) {
        for (u, du) in u.iter_mut().zip(du.iter_mut()) {
            let (y, d) = gelu_and_grad(*u);
            *u = y;
            *du = d;
        }
    }
}

simd_fn! {
    /// The backward of a ReLU over rows of `db.len()` columns: `dz = dh`
    /// where the output `h` is positive, else 0, and `db` += the column
    /// sums of `dz`, row by row (the bias gradient).
    pub fn relu_bwd_rows(dz: &mut [f32], dh: &[f32], h: &[f32], db: &mut [f32]) {
        let c = db.len();
        for ((dzr, dhr), hr) in dz.chunks_exact_mut(c).zip(dh.chunks_exact(c)).zip(h.chunks_exact(c)) {
            // Zipped slices of one length, so that the loop vectorises.
            for (((dz, &g), &hv), db) in dzr.iter_mut().zip(dhr).zip(hr).zip(db.iter_mut()) {
                let v = if hv > 0.0 { g } else { 0.0 };
                *dz = v;
                *db += v;
            }
        }
    }
}

simd_fn! {
    /// `a <- a * b`, elementwise.
    pub fn mul_rows(a: &mut [f32], b: &[f32]) {
        for (a, b) in a.iter_mut().zip(b) {
            *a *= b;
        }
    }
}

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

/// Lanes of the row passes that run in whole vectors (an AVX-512 register).
const WIDE: usize = 16;

/// `v > m ? v : m`: the larger, or `m` when `v` is NaN.
#[inline(always)]
fn pick(m: f32, v: f32) -> f32 {
    if v > m { v } else { m }
}

/// `f` on every element of `x` in whole vectors, then on the rest.
#[inline(always)]
fn each(x: &mut [f32], f: impl Fn(f32) -> f32) {
    let mut chunks = x.chunks_exact_mut(WIDE);
    for c in &mut chunks {
        for v in c.iter_mut() {
            *v = f(*v);
        }
    }
    for v in chunks.into_remainder() {
        *v = f(*v);
    }
}

/// [`sum`] of `x[..n]`, with the same additions in the same order, in
/// loops whose lengths depend on `x.len()` alone (so that the rows of a
/// causal softmax, `n` apart by one, do not each mispredict their loops'
/// ends): chunks past `n / 8` and the remainder's lanes past `n` add
/// -0.0, which changes no sum. `x` is read up to the remainder's whole
/// chunk; where that passes its end, this is [`sum`].
#[inline(always)]
fn sum_to(x: &[f32], n: usize) -> f32 {
    let full = n / LANES;
    if (full + 1) * LANES > x.len() {
        return sum(&x[..n]);
    }
    let mut acc = [0f32; LANES];
    for (c, chunk) in x.chunks_exact(LANES).enumerate() {
        let on = c < full;
        for i in 0..LANES {
            acc[i] += if on { chunk[i] } else { -0.0 };
        }
    }
    // The remainder in order, from `sum`'s own starting value.
    let mut rest = std::iter::empty::<&f32>().sum::<f32>();
    let tail = &x[full * LANES..(full + 1) * LANES];
    for (i, v) in tail.iter().enumerate() {
        rest += if full * LANES + i < n { *v } else { -0.0 };
    }
    combine(acc, rest)
}

/// The largest of `x`, whose length is a multiple of [`WIDE`], in lanes
/// (-inf when empty; NaNs skipped).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; WIDE];
    for c in x.chunks_exact(WIDE) {
        for l in 0..WIDE {
            acc[l] = pick(acc[l], c[l]);
        }
    }
    // By halves: the same value in any order, NaNs never picked.
    let mut width = WIDE;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] = pick(acc[l], acc[l + width]);
        }
    }
    acc[0]
}

/// Rows `first..` of a causal softmax (`s` holds them, each `t` long),
/// each as far as column `end` (`row[..n]`, the scores the query sees,
/// become `softmax(scale * row[..n])`, and `row[n..end]` zeros); the
/// columns past `end` are left as they are.
///
/// The passes run in whole vectors of [`WIDE`] lanes: the maximum over
/// the whole vectors inside `row[..n]` and over its last [`WIDE`]
/// elements (which overlap them, as a maximum may); exp over the masked
/// elements too, up to the next whole vector, whatever they hold (those
/// results are dropped); the sum over `row[..n]` alone, in [`sum`]'s
/// order ([`sum_to`]). So each probability has the bits of the plain
/// loop. Only the sign of a zero maximum may differ from
/// fold(f32::max)'s, which changes no result: `v * scale - max` is then
/// the same, or +-0 into `exp`, which gives 1 for both.
///
/// Each pass goes over [`WIDE`] rows before the next pass starts, so that
/// the rows' chains (maximum, exp, sum) overlap.
#[inline(always)]
fn causal_softmax_group(s: &mut [f32], t: usize, first: usize, end: usize, scale: f32) {
    const G: usize = WIDE;
    for (g, rows) in s.chunks_mut(G * t).enumerate() {
        let n_of = |i: usize| first + g * G + i + 1;
        let mut maxes = [0f32; G];
        for (i, row) in rows.chunks_exact(t).enumerate() {
            let n = n_of(i);
            maxes[i] = if n >= WIDE {
                pick(max_of(&row[..n - n % WIDE]), max_of(&row[n - WIDE..n]))
            } else {
                row[..n].iter().fold(f32::NEG_INFINITY, |m, &v| pick(m, v))
            } * scale;
        }
        for (i, row) in rows.chunks_exact_mut(t).enumerate() {
            let (n, max) = (n_of(i), maxes[i]);
            let padded = n.next_multiple_of(WIDE).min(end);
            each(&mut row[..padded], |v| exp(v * scale - max));
        }
        let mut invs = [0f32; G];
        for (i, row) in rows.chunks_exact(t).enumerate() {
            let n = n_of(i);
            let padded = n.next_multiple_of(WIDE).min(end);
            invs[i] = 1.0 / sum_to(&row[..padded], n);
        }
        for (i, row) in rows.chunks_exact_mut(t).enumerate() {
            let (n, inv) = (n_of(i), invs[i]);
            let padded = n.next_multiple_of(WIDE).min(end);
            for (j, v) in row[..padded].iter_mut().enumerate() {
                *v = if j < n { *v * inv } else { 0.0 };
            }
            row[padded..end].fill(0.0);
        }
    }
}

simd_fn! {
    /// In place over one `[t, t]` block of scores: `softmax(scale * s)` per
    /// row with a causal mask (row i sees columns 0..=i; the rest become 0).
    pub fn causal_softmax_block(s: &mut [f32], t: usize, scale: f32) {
        causal_softmax_group(s, t, 0, t, scale);
    }
}

simd_fn! {
    /// [`causal_softmax_block`] on rows `first..` of a `[t, t]` block
    /// (`s` holds those rows), where only columns `..end` are read
    /// afterwards: the masked columns are zeroed up to `end`, not `t`,
    /// and those past it are left as they are (and never read).
    pub fn causal_softmax_rows(s: &mut [f32], t: usize, first: usize, end: usize, scale: f32) {
        causal_softmax_group(s, t, first, end, scale);
    }
}

/// One row of [`causal_softmax_bwd_block`]: `dr[..n]` becomes `scale *
/// p * (dr - sum(dr * p))`, and `dr[n..end]` zeros; the elementwise pass
/// covers masked elements up to a whole vector, zeroed after.
#[inline(always)]
fn causal_softmax_bwd_row(pr: &[f32], dr: &mut [f32], n: usize, end: usize, scale: f32) {
    let d = dot(&pr[..n], &dr[..n]);
    let padded = n.next_multiple_of(WIDE).min(end);
    let (pr, dr_all) = (&pr[..padded], &mut dr[..padded]);
    let mut chunks = dr_all.chunks_exact_mut(WIDE);
    let mut pc = pr.chunks_exact(WIDE);
    for (c, p) in (&mut chunks).zip(&mut pc) {
        for j in 0..WIDE {
            c[j] = scale * p[j] * (c[j] - d);
        }
    }
    for (v, p) in chunks.into_remainder().iter_mut().zip(pc.remainder()) {
        *v = scale * p * (*v - d);
    }
    dr[n..end].fill(0.0);
}

simd_fn! {
    /// The backward of [`causal_softmax_block`], in place over `dp`:
    /// `ds = scale * p * (dp - sum(dp * p))` per row (0 where masked).
    pub fn causal_softmax_bwd_block(p: &[f32], dp: &mut [f32], t: usize, scale: f32) {
        for (i, (pr, dr)) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)).enumerate() {
            causal_softmax_bwd_row(pr, dr, i + 1, t, scale);
        }
    }
}

simd_fn! {
    /// [`causal_softmax_bwd_block`] on rows `first..` of the blocks (`p`
    /// and `dp` hold those rows), reading and writing columns `..end`
    /// only, as [`causal_softmax_rows`].
    pub fn causal_softmax_bwd_rows(
        p: &[f32], dp: &mut [f32], t: usize, first: usize, end: usize, scale: f32
    ) {
        for (i, (pr, dr)) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)).enumerate() {
            causal_softmax_bwd_row(&pr[..end], &mut dr[..end], first + i + 1, end, scale);
        }
    }
}

simd_fn! {
    /// Softmax cross-entropy of one row of logits against `target`, in place:
    /// the row becomes `weight * (softmax - onehot)`. Returns the loss.
    pub fn cross_entropy_row(row: &mut [f32], target: usize, weight: f32) -> f64 {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let picked = row[target] - max;
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let s = sum(row);
        let scale = weight / s;
        for v in row.iter_mut() {
            *v *= scale;
        }
        row[target] -= weight;
        (s.ln() - picked) as f64
    }
}

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
    let (mean, inv): (&[f32; C], &[f32; C]) = match (cols.mean.try_into(), cols.inv[..C].try_into())
    {
        (Ok(m), Ok(i)) => (m, i),
        _ => return bn_sums(z, o, g, cols, sdy, sdyx),
    };
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

    /// [`exp`]'s 2^n from `shifted`'s bits is the old saturating cast's
    /// 2^n bit for bit, on a dense sweep of the clamped range, its ends,
    /// the values beyond them, the infinities and NaN.
    #[test]
    fn exp_from_bits_equals_exp_by_the_cast() {
        fn by_cast(x: f32) -> f32 {
            let x = x.clamp(-87.0, 88.0);
            let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
            let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
            let z = r * r;
            let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r
                + 4.166_579_6e-2)
                * r
                + 0.166_666_65)
                * r
                + 0.5)
                * z
                + r
                + 1.0;
            p * f32::from_bits(((n as i32 + 127) as u32) << 23)
        }
        let n = 2_000_000;
        let sweep = (0..=n).map(|i| -87.5 + 176.0 * i as f32 / n as f32);
        let ends = [
            -87.0,
            88.0,
            -1e6,
            1e6,
            f32::NEG_INFINITY,
            f32::INFINITY,
            0.0,
            -0.0,
        ];
        for x in sweep.chain(ends) {
            assert_eq!(exp(x).to_bits(), by_cast(x).to_bits(), "x = {x}");
        }
        assert!(exp(f32::NAN).is_nan());
    }

    /// The dispatched loop (AVX-512 or AVX2 where the CPU has them) gives
    /// the bits of the formula evaluated one element at a time by plain
    /// code, on random inputs and the edges.
    #[test]
    fn gelu_rows_gives_the_bits_of_the_scalar_formula() {
        let mut rng = crate::rng::Rng::new(7);
        let mut u: Vec<f32> = (0..10_007).map(|_| 12.0 * rng.normal() as f32).collect();
        u.extend([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 1e6, -1e6]);
        let want: Vec<(u32, u32)> = u
            .iter()
            .map(|&x| {
                let (y, d) = std::hint::black_box(gelu_and_grad(std::hint::black_box(x)));
                (y.to_bits(), d.to_bits())
            })
            .collect();
        let mut du = vec![0f32; u.len()];
        gelu_rows(&mut u, &mut du);
        for (i, ((y, d), w)) in u.iter().zip(&du).zip(&want).enumerate() {
            assert_eq!((y.to_bits(), d.to_bits()), *w, "element {i}");
        }
    }

    /// The causal softmax and its backward, block and row versions, give
    /// the bits of the plain scalar loops on random scores (ties, signed
    /// zeros, a whole row of zeros, widths that are and are not multiples
    /// of 16); the row versions leave the columns past `end` as they were.
    #[test]
    fn causal_softmax_gives_the_bits_of_the_plain_loops() {
        fn plain(s: &mut [f32], t: usize, scale: f32) {
            for (i, row) in s.chunks_exact_mut(t).enumerate() {
                let (seen, masked) = row.split_at_mut(i + 1);
                let max = seen.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) * scale;
                for v in seen.iter_mut() {
                    *v = exp(*v * scale - max);
                }
                let inv = 1.0 / sum(seen);
                for v in seen.iter_mut() {
                    *v *= inv;
                }
                masked.fill(0.0);
            }
        }
        fn plain_bwd(p: &[f32], dp: &mut [f32], t: usize, scale: f32) {
            for (i, (pr, dr)) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)).enumerate() {
                let n = i + 1;
                let d = dot(&pr[..n], &dr[..n]);
                for j in 0..n {
                    dr[j] = scale * pr[j] * (dr[j] - d);
                }
                dr[n..].fill(0.0);
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut rng = crate::rng::Rng::new(21);
        for (t, scale) in [(128, 0.17677669), (37, 0.5), (16, 1.0), (5, 0.3)] {
            let mut s: Vec<f32> = rng.normals_f32(t * t).iter().map(|v| 4.0 * v).collect();
            // Ties, signed zeros, and a row of zeros (row 2 sees 3 columns).
            s[0] = -0.0;
            for j in 0..t.min(3) {
                s[2 * t + j] = if j % 2 == 0 { 0.0 } else { -0.0 };
            }
            if t > 9 {
                s[9 * t + 3] = s[9 * t + 7];
            }
            let mut want = s.clone();
            plain(&mut want, t, scale);
            let mut got = s.clone();
            causal_softmax_block(&mut got, t, scale);
            assert_eq!(bits(&got), bits(&want), "block, t = {t}");

            let dp = rng.normals_f32(t * t);
            let mut want_d = dp.clone();
            plain_bwd(&want, &mut want_d, t, scale);
            let mut got_d = dp.clone();
            causal_softmax_bwd_block(&want, &mut got_d, t, scale);
            assert_eq!(bits(&got_d), bits(&want_d), "backward block, t = {t}");

            // Rows first..last, read up to `end` (the end of their block).
            for (first, last) in [(0, t.min(16)), (t / 2, t)] {
                let end = last;
                let rows = first * t..last * t;
                let mut got = s.clone();
                causal_softmax_rows(&mut got[rows.clone()], t, first, end, scale);
                let mut got_d = dp.clone();
                causal_softmax_bwd_rows(
                    &want[rows.clone()],
                    &mut got_d[rows],
                    t,
                    first,
                    end,
                    scale,
                );
                for r in first..last {
                    let (a, b) = (r * t, r * t + end);
                    assert_eq!(
                        bits(&got[a..b]),
                        bits(&want[a..b]),
                        "rows, t = {t}, row {r}"
                    );
                    assert_eq!(bits(&got[b..(r + 1) * t]), bits(&s[b..(r + 1) * t]));
                    assert_eq!(bits(&got_d[a..b]), bits(&want_d[a..b]), "bwd rows, row {r}");
                    assert_eq!(bits(&got_d[b..(r + 1) * t]), bits(&dp[b..(r + 1) * t]));
                }
            }
        }
    }

    /// The ReLU backward gives the plain loop's bits: zeros where the
    /// output is 0 (or -0.0, or NaN), the gradient elsewhere, and the
    /// bias gradient summed in row order onto what `db` held.
    #[test]
    fn relu_bwd_rows_matches_the_plain_loop() {
        let mut rng = crate::rng::Rng::new(31);
        for (rows, c) in [(37, 50), (8, 16), (3, 1)] {
            let dh = rng.normals_f32(rows * c);
            let mut h: Vec<f32> = rng
                .normals_f32(rows * c)
                .iter()
                .map(|v| v.max(0.0))
                .collect();
            h[0] = -0.0;
            h[rows * c - 1] = f32::NAN;
            let db0 = rng.normals_f32(c);
            let (mut dz, mut want_dz) = (vec![0f32; rows * c], vec![0f32; rows * c]);
            let (mut db, mut want_db) = (db0.clone(), db0.clone());
            for r in 0..rows {
                for j in 0..c {
                    let v = if h[r * c + j] > 0.0 {
                        dh[r * c + j]
                    } else {
                        0.0
                    };
                    want_dz[r * c + j] = v;
                    want_db[j] += v;
                }
            }
            relu_bwd_rows(&mut dz, &dh, &h, &mut db);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dz), bits(&want_dz), "{rows} x {c}");
            assert_eq!(bits(&db), bits(&want_db), "{rows} x {c}");
        }
    }

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

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, e) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - e) / e).abs());
            x += 0.0137;
        }
        // 2 ulp of f32 is 2.4e-7 relative.
        assert!(worst < 2.4e-7, "worst relative error {worst}");
    }

    /// GELU and its derivative against f64 evaluations of the definition
    /// (erfc by its Taylor series and continued fraction). The bound: the
    /// fit's 1.2e-7 plus rounding, and, in the tails, f32's rounding of the
    /// exponent -u^2/2 (3 ulp of it, relative), which no f32 formula avoids.
    #[test]
    fn gelu_matches_erf_definition() {
        fn erfc64(x: f64) -> f64 {
            if x < 0.0 {
                return 2.0 - erfc64(-x);
            }
            // Numerical integration would be slow; use the continued
            // fraction for x > 2 and the Taylor series below.
            if x < 2.0 {
                let mut sum = 0.0;
                let mut term = x;
                let mut k = 0.0;
                while term.abs() > 1e-17 {
                    sum += term / (2.0 * k + 1.0);
                    k += 1.0;
                    term *= -x * x / k;
                }
                1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
            } else {
                let mut f = 0.0;
                for n in (1..60).rev() {
                    f = (n as f64 / 2.0) / (x + f);
                }
                (-x * x).exp() / std::f64::consts::PI.sqrt() / (x + f)
            }
        }
        let cdf = |u: f64| 0.5 * erfc64(-u / std::f64::consts::SQRT_2);
        let mut u = -9.0f32;
        while u < 9.0 {
            let (g, dg) = gelu_and_grad(u);
            let u64 = u as f64;
            let want = u64 * cdf(u64);
            let rel = 3e-7 + 3.6e-7 * u64 * u64 / 2.0;
            assert!(
                (g as f64 - want).abs() <= rel * want.abs(),
                "gelu({u}) = {g}, want {want}"
            );
            let pdf = (-0.5 * u64 * u64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let dwant = cdf(u64) + u64 * pdf;
            // A sum of two terms that cancel near u = -0.75: relative to
            // their sizes.
            let size = cdf(u64) + (u64 * pdf).abs();
            assert!(
                (dg as f64 - dwant).abs() <= rel * size,
                "gelu'({u}) = {dg}, want {dwant}"
            );
            u += 0.0173;
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
