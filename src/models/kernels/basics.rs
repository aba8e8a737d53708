//! What the other kernels build on: sums and dot products in a fixed
//! order (eight partial sums), and a vectorisable exp.

pub(super) const LANES: usize = 8;

#[inline(always)]
pub(super) fn combine(acc: [f32; LANES], rest: f32) -> f32 {
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
