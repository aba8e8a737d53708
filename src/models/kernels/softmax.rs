//! The causal softmax of the attention's scores, forward and backward,
//! in whole vectors with the bits of the plain per-row loops.

use super::basics::{LANES, combine, dot, exp, sum};

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
        // Up to the next whole vector within `end`.
        let padded_of = |n: usize| n.next_multiple_of(WIDE).min(end);
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
            let padded = padded_of(n);
            each(&mut row[..padded], |v| exp(v * scale - max));
        }
        let mut invs = [0f32; G];
        for (i, row) in rows.chunks_exact(t).enumerate() {
            let n = n_of(i);
            let padded = padded_of(n);
            invs[i] = 1.0 / sum_to(&row[..padded], n);
        }
        for (i, row) in rows.chunks_exact_mut(t).enumerate() {
            let (n, inv) = (n_of(i), invs[i]);
            let padded = padded_of(n);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
