//! The first convolution of a network on one-channel (grey) images,
//! straight from the pixels: its patch matrix (`im2col`, 10 entries a
//! pixel: 9 taps and the bias's 1) is never made.
//!
//! Both kernels make the sums the patch-matrix path makes, so the bits do
//! not change:
//! - the forward, `z[pixel, o]`, sums the 10 patch entries times the weights
//!   from +0.0 in patch order, one fused multiply-add each, as
//!   `small_matmul` and gemm do for a product of depth 10;
//! - the weight gradient, `dwb[o, q] = Σ_rows dz[row, o] · patch[row, q]`,
//!   is a product of depth `rows` whose sides (`c`, 10) are at most 64, so
//!   gemm sums it in slices of 512 rows, each from +0.0 in row order, and
//!   adds the slices in order to the output (`gemm_common::gemm`'s small
//!   path: `kc = k.min(512)`, whatever the CPU's caches). The kernel makes
//!   the same slices.
//!
//! Outside the image a tap is 0.0, as in the patch matrix. Tested against
//! that path bit for bit (`tests` below), on random images and gradients.

/// Whether the direct kernels serve a layer with `c_in` input and `c`
/// output channels: one input channel, the outputs in whole AVX-512
/// vectors (16 lanes), on a CPU with AVX-512F.
pub(super) fn applies(c_in: usize, c: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        c_in == 1 && c > 0 && c.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (c_in, c);
        false
    }
}

/// gemm's slice of `k` for a product whose two sides are at most 64.
const SLICE: usize = 512;

/// The image with a border of zeros (`[side + 2, side + 2]`) into `pad`:
/// tap `q` of pixel `(y, x)` is then `pad[(y + q / 3) * (side + 2) + x + q %
/// 3]`, with no test for the edges.
fn padded(img: &[f32], side: usize, pad: &mut Vec<f32>) {
    let w = side + 2;
    pad.clear();
    pad.resize(w * w, 0.0);
    for (y, row) in img.chunks_exact(side).enumerate() {
        pad[(y + 1) * w + 1..(y + 1) * w + 1 + side].copy_from_slice(row);
    }
}

/// The 10 patch entries of pixel `pix` (9 taps, 0.0 outside the image,
/// then the bias's 1.0), from the padded image.
#[inline(always)]
fn patch(pad: &[f32], side: usize, pix: usize) -> [f32; 10] {
    let w = side + 2;
    let at = (pix / side) * w + pix % side;
    let mut v = [1.0; 10];
    for ky in 0..3 {
        v[3 * ky..3 * ky + 3].copy_from_slice(&pad[at + ky * w..at + ky * w + 3]);
    }
    v
}

/// The forward of one image: `z` (`[side * side, c]`) from its pixels
/// `img` (`[side * side]`) and `wt` (`[10, c]`: the weights in patch
/// order, then the bias). `pad` is scratch, kept by the caller.
///
/// # Panics
/// When the sizes disagree, or on a CPU without AVX-512F (see [`applies`]).
pub(super) fn forward_image(
    img: &[f32],
    side: usize,
    wt: &[f32],
    c: usize,
    z: &mut [f32],
    pad: &mut Vec<f32>,
) {
    let hw = side * side;
    assert!(img.len() == hw && wt.len() == 10 * c && z.len() == hw * c && c.is_multiple_of(16));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        padded(img, side, pad);
        // SAFETY: the CPU has AVX-512F; the sizes are checked above.
        return unsafe { forward_avx512(pad, side, wt, c, z) };
    }
    panic!("first::forward_image needs AVX-512F (first::applies says when)");
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_avx512(pad: &[f32], side: usize, wt: &[f32], c: usize, z: &mut [f32]) {
    use std::arch::x86_64::*;
    // Pixels in groups of P: P independent chains of 10 multiply-adds.
    const P: usize = 8;
    let hw = side * side;
    let mut pix = 0;
    while pix < hw {
        let np = P.min(hw - pix);
        let vals: [[f32; 10]; P] = std::array::from_fn(|i| {
            if i < np {
                patch(pad, side, pix + i)
            } else {
                [0.0; 10]
            }
        });
        for j in (0..c).step_by(16) {
            // SAFETY (block): `wt` holds 10 x c and `z` hw x c (checked by
            // the caller); j + 16 <= c, and only the np pixels that exist
            // are stored.
            unsafe {
                let mut acc = [_mm512_setzero_ps(); P];
                for (q, _) in vals[0].iter().enumerate() {
                    let w = _mm512_loadu_ps(wt.as_ptr().add(q * c + j));
                    for (acc, v) in acc.iter_mut().zip(&vals) {
                        *acc = _mm512_fmadd_ps(_mm512_set1_ps(v[q]), w, *acc);
                    }
                }
                for (i, acc) in acc.iter().enumerate().take(np) {
                    _mm512_storeu_ps(z.as_mut_ptr().add((pix + i) * c + j), *acc);
                }
            }
        }
        pix += np;
    }
}

/// The weight gradient `dwb` (`[c, 10]`, overwritten: the 9 taps, then the
/// bias) from the images `x` (`[n, side * side]`) and the gradient of the
/// convolution's output `dz` (`[n * side * side, c]`). Blocks of 16 output
/// channels run on rayon's threads.
///
/// # Panics
/// As [`forward_image`].
pub(super) fn weight_grad(x: &[f32], side: usize, dz: &[f32], c: usize, dwb: &mut [f32]) {
    use rayon::prelude::*;
    let rows = x.len();
    assert!(
        dz.len() == rows * c
            && dwb.len() == c * 10
            && c.is_multiple_of(16)
            && rows.is_multiple_of(side * side)
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // 16 output channels (160 entries of dwb, whole rows) per task.
        dwb.par_chunks_mut(16 * 10)
            .enumerate()
            // SAFETY: the CPU has AVX-512F; the sizes are checked above.
            .for_each(|(b, out)| unsafe { weight_grad_avx512(x, side, dz, c, 16 * b, out) });
        return;
    }
    panic!("first::weight_grad needs AVX-512F (first::applies says when)");
}

/// Rows `o0..o0 + 16` of the weight gradient, into `out` (`[16, 10]`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_avx512(
    x: &[f32],
    side: usize,
    dz: &[f32],
    c: usize,
    o0: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hw = side * side;
    let rows = x.len();
    let mut lanes = [0f32; 16];
    let (mut pad, mut padded_img) = (Vec::new(), usize::MAX);
    let mut start = 0;
    while start < rows {
        let end = (start + SLICE).min(rows);
        // SAFETY (block): `dz` holds rows x c and o0 + 16 <= c.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 10];
            for r in start..end {
                let (img, pix) = (r / hw, r % hw);
                if img != padded_img {
                    padded(&x[img * hw..(img + 1) * hw], side, &mut pad);
                    padded_img = img;
                }
                let v = patch(&pad, side, pix);
                let d = _mm512_loadu_ps(dz.as_ptr().add(r * c + o0));
                for (acc, v) in acc.iter_mut().zip(v) {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(v), d, *acc);
                }
            }
            // The slice's sums into the output: the first slice writes,
            // the next ones add (one rounding each), as gemm does.
            for (q, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(lanes.as_mut_ptr(), *acc);
                for (o, s) in lanes.iter().enumerate() {
                    let dst = &mut out[o * 10 + q];
                    *dst = if start == 0 { *s } else { *dst + *s };
                }
            }
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::matmul::{View, matmul, small_matmul};
    use crate::rng::Rng;

    /// The patch matrix of one image, as `rows::im2col_image` makes it.
    fn patches(img: &[f32], side: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; side * side * 10];
        super::super::rows::im2col_image(img, side, 1, &mut out);
        out
    }

    /// Both kernels give the bits of the patch-matrix path: im2col, then
    /// `small_matmul` (forward) and one gemm call over the batch (weight
    /// gradient, as `manual.rs` makes it), on random images and gradients,
    /// at odd and even sides, 16 to 64 channels, and batches whose rows
    /// are not a multiple of the 512-row slice.
    #[test]
    fn direct_first_layer_gives_the_bits_of_the_patch_path() {
        if !applies(1, 16) {
            eprintln!("skipped: this CPU has no AVX-512F (the kernels serve only such CPUs)");
            return;
        }
        let mut rng = Rng::new(21);
        for (n, side, c) in [(3, 28, 32), (5, 13, 16), (2, 7, 64), (9, 28, 16)] {
            let hw = side * side;
            // Non-negative and signed pixels, some exactly zero.
            let mut x = rng.normals_f32(n * hw);
            for v in x.iter_mut().step_by(7) {
                *v = 0.0;
            }
            let wb = rng.normals_f32(c * 10);
            let mut wt = vec![0f32; 10 * c];
            for o in 0..c {
                for q in 0..10 {
                    wt[q * c + o] = wb[o * 10 + q];
                }
            }
            let cols: Vec<f32> = x
                .chunks_exact(hw)
                .flat_map(|img| patches(img, side))
                .collect();
            for (img, cols) in x.chunks_exact(hw).zip(cols.chunks_exact(hw * 10)) {
                let mut ours = vec![f32::NAN; hw * c];
                let mut want = vec![f32::NAN; hw * c];
                forward_image(img, side, &wt, c, &mut ours, &mut Vec::new());
                // SAFETY: the sizes are those of the buffers.
                unsafe {
                    small_matmul(
                        hw,
                        c,
                        10,
                        want.as_mut_ptr(),
                        c,
                        View::rows(cols, 10),
                        View::rows(&wt, c),
                    )
                };
                let same = ours
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "forward, n {n} side {side} c {c}");
            }
            let rows = n * hw;
            let dz = rng.normals_f32(rows * c);
            let mut ours = vec![f32::NAN; c * 10];
            let mut want = vec![f32::NAN; c * 10];
            weight_grad(&x, side, &dz, c, &mut ours);
            // SAFETY: as above.
            unsafe {
                matmul(
                    c,
                    10,
                    rows,
                    want.as_mut_ptr(),
                    10,
                    false,
                    View::rows(&dz, c).t(),
                    View::rows(&cols, 10),
                    gemm::Parallelism::None,
                )
            };
            for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "weight gradient, n {n} side {side} c {c}, entry {i}: {a} vs {b}"
                );
            }
        }
    }
}
