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
//!
//! Here: the macro, GELU, the MLP's ReLU backward
//! and cross-entropy; [`basics`] (the fixed-order sum and dot, exp); by
//! layer kind: [`norm`] (LayerNorm), [`softmax`]
//! (the causal softmax) and [`cnn`] (BatchNorm + ReLU backward, max-pool).

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

mod basics;
mod cnn;
mod norm;
mod softmax;

pub use basics::{dot, exp, sum};

pub use cnn::{
    BnColumns, Pixels, bn_relu_bwd_dz, bn_relu_bwd_sums, max_pool_2x2, max_pool_2x2_bwd,
};
pub use norm::{layer_norm_bwd_rows, layer_norm_rows, layer_norm_stats};
pub use softmax::{
    causal_softmax_block, causal_softmax_bwd_block, causal_softmax_bwd_rows, causal_softmax_rows,
};

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
}
