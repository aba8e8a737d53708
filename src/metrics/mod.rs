//! Sparsity measures of weight tensors (STUDY.md, "Measures").
//!
//! Everything here works on plain numbers; nothing knows about optimizers.
//! Per tensor, and for groups of tensors treated as one vector:
//! exact-zero fraction, near-zero fractions |w| < 1e-4, 1e-3, 1e-2, the
//! relative near-zero fraction |w| < 0.01 * max|w|, the scale-relative
//! near-zero fractions |w| < c * RMS(w) of each tensor, L1, L2, Hoyer and
//! Gini. Also the breakdowns of a run's end: first-layer weights by how
//! often their input pixel is active, and weights by their accumulated
//! gradient. Shrinkage (`shrinkage`) compares the weights with their
//! initial values.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::io::nan_from_null;

pub mod filters;
pub mod shrinkage;
pub use filters::{FilterCounts, FilterMeasures, filter_measures};
pub use shrinkage::{Shrinkage, ShrinkageReport};

/// Whether a named tensor is a buffer rather than a parameter (BatchNorm's
/// running statistics, by torch's names): saved in checkpoints, never
/// measured as a weight or a bias.
pub fn is_buffer(name: &str) -> bool {
    [".running_mean", ".running_var", ".num_batches_tracked"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Absolute near-zero thresholds, with their keys in records.
pub const NEAR_ZERO: [(&str, f64); 3] = [("1e-4", 1e-4), ("1e-3", 1e-3), ("1e-2", 1e-2)];

/// The relative threshold: |w| < REL * max|w| of the same tensor (or group).
pub const REL: f64 = 0.01;

/// Scale-relative thresholds, with their keys in records: |w| < c * RMS(w)
/// of the tensor the value belongs to.
pub const SCALE_REL: [(&str, f64); 3] = [("0.01", 0.01), ("0.03", 0.03), ("0.1", 0.1)];

/// sqrt(mean w^2) over the finite values of `values` (0 when there are
/// none). Values too large to square are scaled by the max first.
pub fn rms(values: &[f64]) -> f64 {
    let finite = || values.iter().filter(|v| v.is_finite());
    let k = finite().count();
    if k == 0 {
        return 0.0;
    }
    let r = (finite().map(|v| v * v).sum::<f64>() / k as f64).sqrt();
    if r.is_finite() {
        return r;
    }
    let max = finite().fold(0.0, |m: f64, v| m.max(v.abs()));
    max * (finite().map(|v| (v / max) * (v / max)).sum::<f64>() / k as f64).sqrt()
}

/// How many of `values` lie below `c * rms` (strict), where `rms` is the
/// RMS of the tensor they belong to. When it is 0 (an all-zero tensor)
/// every finite value counts; a non-finite value never does.
pub fn scale_rel_count(values: &[f64], rms: f64, c: f64) -> usize {
    if rms == 0.0 {
        values.iter().filter(|v| v.is_finite()).count()
    } else {
        values.iter().filter(|v| v.abs() < c * rms).count()
    }
}

/// The measures of one vector of numbers.
///
/// NaN and infinite values are counted in `nonfinite` and in `numel`. The
/// fractions are over all `numel` values, a non-finite value counting as
/// neither zero nor near zero. L1, L2, Hoyer and Gini are over the finite
/// values only; over no finite values at all (a tensor of NaNs) they are
/// undefined: NaN, written `null` in JSON and `-` in tables, never the
/// "maximally sparse" 1 of an all-zero tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    pub numel: usize,
    /// NaN and infinite values (0 in records written before it existed).
    #[serde(default)]
    pub nonfinite: usize,
    #[serde(deserialize_with = "nan_from_null")]
    pub exact_zero_frac: f64,
    /// Keys "1e-4", "1e-3", "1e-2": fraction with |w| < the key.
    pub near_zero_frac: BTreeMap<String, f64>,
    /// Fraction with |w| < 0.01 * max|w| (max over the finite values).
    #[serde(deserialize_with = "nan_from_null")]
    pub rel_near_zero_frac: f64,
    /// Keys "0.01", "0.03", "0.1": fraction with |w| < c * RMS(w), RMS =
    /// sqrt(mean w^2) over the finite values of w's own tensor (every value
    /// of an all-zero tensor counts). For a group each tensor uses its own
    /// RMS and the counts are pooled. Empty in records written before it
    /// existed.
    #[serde(default)]
    pub scale_rel_near_zero_frac: BTreeMap<String, f64>,
    #[serde(deserialize_with = "nan_from_null")]
    pub l1: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub l2: f64,
    /// (sqrt(n) - L1/L2) / (sqrt(n) - 1) over the n finite values: 0 for
    /// equal magnitudes, 1 for one non-zero. Defined as 1 for an all-zero
    /// vector and 0 for n = 1.
    #[serde(deserialize_with = "nan_from_null")]
    pub hoyer: f64,
    /// Hurley & Rickard's Gini index over the finite values: sort |c|
    /// ascending, G = 1 - 2 sum_k (c_k/L1) (N - k + 1/2)/N. Defined as 1 for
    /// an all-zero vector.
    #[serde(deserialize_with = "nan_from_null")]
    pub gini: f64,
}

impl Measures {
    /// Measures of `values`, one tensor (see the type for how non-finite
    /// values count).
    pub fn of(values: &[f64]) -> Self {
        Self::of_group(&[values])
    }

    /// Measures of a group of tensors: everything over their values as one
    /// vector, except the scale-relative fractions, for which each tensor
    /// uses its own RMS and the counts are pooled.
    pub fn of_group(parts: &[&[f64]]) -> Self {
        let mut counts = [0usize; SCALE_REL.len()];
        for part in parts {
            let r = rms(part);
            for (n, (_, c)) in counts.iter_mut().zip(SCALE_REL) {
                *n += scale_rel_count(part, r, c);
            }
        }
        let concat;
        let values: &[f64] = if let [one] = parts {
            one
        } else {
            concat = parts.concat();
            concat.as_slice()
        };
        let n = values.len();
        let mut abs: Vec<f64> = values
            .iter()
            .map(|v| v.abs())
            .filter(|v| v.is_finite())
            .collect();
        let nonfinite = n - abs.len();
        let nf = n.max(1) as f64;
        let exact = values.iter().filter(|v| **v == 0.0).count();
        let near_zero_frac = NEAR_ZERO
            .iter()
            .map(|(k, t)| {
                (
                    k.to_string(),
                    abs.iter().filter(|a| **a < *t).count() as f64 / nf,
                )
            })
            .collect();
        let max = abs.iter().cloned().fold(0.0, f64::max);
        let rel = abs.iter().filter(|a| **a < REL * max).count() as f64 / nf;
        let mut l1: f64 = abs.iter().sum();
        let mut l2 = abs.iter().map(|a| a * a).sum::<f64>().sqrt();
        // Huge finite values can overflow the sums; Hoyer and Gini are
        // ratios, so they are then taken over the values scaled by the max.
        let (ratio_abs, r1, r2) = if l1.is_finite() && l2.is_finite() {
            (None, l1, l2)
        } else {
            let scaled: Vec<f64> = abs.iter().map(|a| a / max).collect();
            let s1 = scaled.iter().sum();
            let s2 = scaled.iter().map(|a| a * a).sum::<f64>().sqrt();
            (Some(scaled), s1, s2)
        };
        let k = abs.len();
        let mut hoyer = if r2 == 0.0 {
            1.0
        } else if k <= 1 {
            0.0
        } else {
            let sn = (k as f64).sqrt();
            (sn - r1 / r2) / (sn - 1.0)
        };
        let mut gini = if r1 == 0.0 {
            1.0
        } else {
            let mut c = ratio_abs.unwrap_or_else(|| std::mem::take(&mut abs));
            c.sort_by(f64::total_cmp);
            let nn = c.len() as f64;
            let s: f64 = c
                .iter()
                .enumerate()
                .map(|(i, c)| (c / r1) * ((nn - (i as f64 + 1.0) + 0.5) / nn))
                .sum();
            1.0 - 2.0 * s
        };
        if k == 0 {
            // No finite value, or no value at all (a zero-sized tensor):
            // nothing to measure, neither sparse nor dense.
            (l1, l2, hoyer, gini) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        }
        Self {
            numel: n,
            nonfinite,
            exact_zero_frac: exact as f64 / nf,
            near_zero_frac,
            rel_near_zero_frac: rel,
            scale_rel_near_zero_frac: SCALE_REL
                .iter()
                .zip(counts)
                .map(|((k, _), c)| (k.to_string(), c as f64 / nf))
                .collect(),
            l1,
            l2,
            hoyer,
            gini,
        }
    }

    /// The near-zero fraction at a threshold key ("1e-3", ...).
    pub fn near(&self, key: &str) -> f64 {
        self.near_zero_frac.get(key).copied().unwrap_or(f64::NAN)
    }

    /// The scale-relative near-zero fraction at a key ("0.01", ...); NaN in
    /// records written before it existed.
    pub fn scale_rel(&self, key: &str) -> f64 {
        self.scale_rel_near_zero_frac
            .get(key)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// Measures of a whole model: per tensor, weights (tensors with two or more
/// dimensions) and biases (fewer) apart, and everything as one vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeasures {
    pub tensors: BTreeMap<String, Measures>,
    pub weights: Measures,
    pub biases: Measures,
    pub total: Measures,
}

/// The values of a float tensor, as f64.
pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?)
}

/// Measures of named tensors. Non-float tensors and buffers
/// ([`is_buffer`]) are skipped.
pub fn measure_tensors(named: &[(String, Tensor)]) -> Result<ModelMeasures> {
    let mut tensors = BTreeMap::new();
    let mut parts = vec![];
    for (name, t) in named {
        if !t.dtype().is_float() || is_buffer(name) {
            continue;
        }
        let v = values(t)?;
        tensors.insert(name.clone(), Measures::of(&v));
        parts.push((t.rank() >= 2, v));
    }
    let group = |keep: &dyn Fn(bool) -> bool| {
        let g: Vec<&[f64]> = parts
            .iter()
            .filter(|(w, _)| keep(*w))
            .map(|(_, v)| v.as_slice())
            .collect();
        Measures::of_group(&g)
    };
    Ok(ModelMeasures {
        tensors,
        weights: group(&|w| w),
        biases: group(&|w| !w),
        total: group(&|_| true),
    })
}

/// The magnitude at or below which `frac` of `abs_sorted` (ascending
/// magnitudes) lies: pruning every |w| <= it removes at least that fraction.
/// `None` when nothing is to be pruned.
pub fn prune_threshold(abs_sorted: &[f64], frac: f64) -> Option<f64> {
    let k = (frac * abs_sorted.len() as f64).floor() as usize;
    if k == 0 {
        None
    } else {
        Some(abs_sorted[k - 1])
    }
}

/// Histogram of log10|w| for the magnitude plots: `bins` counts over
/// [lo, hi) in steps of `width`, plus exact zeros and values outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogHistogram {
    pub lo: f64,
    pub width: f64,
    pub counts: Vec<u64>,
    pub zeros: u64,
    pub below: u64,
    pub above: u64,
}

impl LogHistogram {
    pub fn of(values: &[f64], lo: f64, hi: f64, width: f64) -> Self {
        let nbins = ((hi - lo) / width).round() as usize;
        let mut h = Self {
            lo,
            width,
            counts: vec![0; nbins],
            zeros: 0,
            below: 0,
            above: 0,
        };
        for v in values {
            let a = v.abs();
            if a == 0.0 {
                h.zeros += 1;
                continue;
            }
            let l = a.log10();
            if l < lo {
                h.below += 1;
            } else if l >= hi || !l.is_finite() {
                h.above += 1;
            } else {
                let i = (((l - lo) / width) as usize).min(nbins - 1);
                h.counts[i] += 1;
            }
        }
        h
    }
}

/// Dead ReLU units: per hidden layer, the units whose output is zero on
/// every example seen. Feed it each batch's post-ReLU activations `[B, units]`.
#[derive(Default)]
pub struct DeadUnits {
    /// Running max of each unit's activation, per layer.
    max: Vec<Vec<f64>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadUnitsReport {
    /// Dead units per hidden layer.
    pub per_layer: Vec<usize>,
    /// Units per hidden layer.
    pub units: Vec<usize>,
    pub dead: usize,
    pub total: usize,
    pub frac: f64,
}

impl DeadUnits {
    pub fn add(&mut self, layers: &[Tensor]) -> Result<()> {
        for (i, h) in layers.iter().enumerate() {
            let m: Vec<f64> = h.max(0)?.to_dtype(DType::F64)?.to_vec1()?;
            if self.max.len() <= i {
                self.max.push(m);
            } else {
                for (a, b) in self.max[i].iter_mut().zip(m) {
                    *a = a.max(b);
                }
            }
        }
        Ok(())
    }

    /// Splits off the first `n` layers (the CNN's conv filters): returns
    /// them, keeping the rest.
    pub fn split_first(&mut self, n: usize) -> DeadUnits {
        let n = n.min(self.max.len());
        DeadUnits {
            max: self.max.drain(..n).collect(),
        }
    }

    pub fn report(&self) -> DeadUnitsReport {
        let per_layer: Vec<usize> = self
            .max
            .iter()
            .map(|l| l.iter().filter(|m| **m <= 0.0).count())
            .collect();
        let units: Vec<usize> = self.max.iter().map(|l| l.len()).collect();
        let dead: usize = per_layer.iter().sum();
        let total: usize = units.iter().sum();
        DeadUnitsReport {
            per_layer,
            units,
            dead,
            total,
            frac: if total == 0 {
                0.0
            } else {
                dead as f64 / total as f64
            },
        }
    }
}

/// The absolute threshold of the breakdowns below: |w| < 1e-3.
const BREAKDOWN_NEAR: f64 = 1e-3;
/// The scale-relative threshold of the breakdowns: |w| < 0.01 * RMS.
const BREAKDOWN_SCALE_REL: f64 = 0.01;

/// Sums of one bucket of weights, turned into fractions and means.
#[derive(Default)]
struct BucketSums {
    n: usize,
    exact: usize,
    near: usize,
    scale_rel: usize,
    abs: f64,
    change: f64,
}

impl BucketSums {
    /// Adds a weight `w` of a tensor whose RMS is `rms`, which moved by
    /// `change` during training.
    fn add(&mut self, w: f64, rms: f64, change: f64) {
        self.n += 1;
        self.exact += (w == 0.0) as usize;
        self.near += (w.abs() < BREAKDOWN_NEAR) as usize;
        self.scale_rel += scale_rel_count(&[w], rms, BREAKDOWN_SCALE_REL);
        self.abs += w.abs();
        self.change += change;
    }

    /// `x / n`, NaN (null in JSON) for an empty bucket.
    fn frac(&self, x: f64) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            x / self.n as f64
        }
    }
}

/// The activity buckets of input pixels, by the fraction of training
/// images in which the pixel is > 0.
pub const ACTIVITY_BUCKETS: [&str; 4] = ["never", "<=0.1%", "<=3%", ">3%"];

/// First-layer weights of one activity bucket: the weights `fc0.weight[:, j]`
/// of the pixels j in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityBucket {
    /// "never" (the pixel is 0 in every training image), "<=0.1%" (> 0 in at
    /// most 0.1 % of them), "<=3%", ">3%".
    pub bucket: String,
    pub pixels: usize,
    pub weights: usize,
    /// Fraction of the bucket's weights == 0 (null for an empty bucket; so
    /// are the others).
    #[serde(deserialize_with = "nan_from_null")]
    pub exact_zero_frac: f64,
    /// Fraction with |w| < 1e-3.
    #[serde(deserialize_with = "nan_from_null")]
    pub near_zero_frac: f64,
    /// Fraction with |w| < 0.01 * RMS of the whole first-layer weight.
    #[serde(deserialize_with = "nan_from_null")]
    pub scale_rel_near_zero_frac: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub mean_abs: f64,
}

/// For each input feature (column of `x`, `[N, D]`), in how many rows it
/// is > 0. Reads `x` in chunks of rows.
pub fn active_counts(x: &Tensor) -> Result<Vec<u64>> {
    let (n, d) = x.dims2()?;
    let mut counts = vec![0u64; d];
    let chunk = 1024;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let rows: Vec<f32> = x
            .narrow(0, start, len)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        for row in rows.chunks_exact(d) {
            for (c, v) in counts.iter_mut().zip(row) {
                *c += (*v > 0.0) as u64;
            }
        }
        start += len;
    }
    Ok(counts)
}

/// The bucket (index into [`ACTIVITY_BUCKETS`]) of a pixel active in
/// `active` of `n` images; exact integer comparisons.
pub fn activity_bucket(active: u64, n: u64) -> usize {
    if active == 0 {
        0
    } else if active * 1000 <= n {
        1
    } else if active * 100 <= 3 * n {
        2
    } else {
        3
    }
}

/// The first layer's weights `w` (`[hidden, inputs]`, row-major) bucketed
/// by their input's activity: `active[j]` of `n` training images have
/// pixel j > 0. Every bucket is listed, empty ones with null measures.
pub fn activity_breakdown(active: &[u64], n: u64, w: &[f64], inputs: usize) -> Vec<ActivityBucket> {
    assert_eq!(active.len(), inputs, "one count per input");
    assert_eq!(w.len() % inputs.max(1), 0, "weights are [hidden, inputs]");
    let r = rms(w);
    let bucket: Vec<usize> = active.iter().map(|a| activity_bucket(*a, n)).collect();
    let mut sums: Vec<BucketSums> = ACTIVITY_BUCKETS
        .iter()
        .map(|_| Default::default())
        .collect();
    let mut pixels = [0usize; ACTIVITY_BUCKETS.len()];
    for b in &bucket {
        pixels[*b] += 1;
    }
    for row in w.chunks_exact(inputs) {
        for (v, b) in row.iter().zip(&bucket) {
            sums[*b].add(*v, r, 0.0);
        }
    }
    ACTIVITY_BUCKETS
        .iter()
        .zip(sums)
        .zip(pixels)
        .map(|((name, s), pixels)| ActivityBucket {
            bucket: name.to_string(),
            pixels,
            weights: s.n,
            exact_zero_frac: s.frac(s.exact as f64),
            near_zero_frac: s.frac(s.near as f64),
            scale_rel_near_zero_frac: s.frac(s.scale_rel as f64),
            mean_abs: s.frac(s.abs),
        })
        .collect()
}

/// Weights of one gradient bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradBucket {
    /// "no gradient" (sum over steps of |g| exactly 0), then "q1" (the
    /// smallest fifth of the rest by accumulated |g|) to "q5".
    pub bucket: String,
    pub count: usize,
    /// The smallest and largest accumulated |g| in the bucket (null when
    /// it is empty; so are the measures below).
    #[serde(deserialize_with = "nan_from_null")]
    pub grad_min: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub grad_max: f64,
    /// Mean |w| at the end.
    #[serde(deserialize_with = "nan_from_null")]
    pub mean_abs: f64,
    /// Mean |w_end - w_start|.
    #[serde(deserialize_with = "nan_from_null")]
    pub mean_abs_change: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub exact_zero_frac: f64,
    /// Fraction with |w| < 1e-3 at the end.
    #[serde(deserialize_with = "nan_from_null")]
    pub near_zero_frac: f64,
    /// Fraction with |w| < 0.01 * RMS of its own tensor at the end.
    #[serde(deserialize_with = "nan_from_null")]
    pub scale_rel_near_zero_frac: f64,
}

/// One weight tensor for [`gradient_buckets`]: the sum over steps of |g|
/// per element, the weights at the start and at the end (same lengths).
pub struct GradTensor<'a> {
    pub grad_sum: &'a [f64],
    pub start: &'a [f64],
    pub end: &'a [f64],
}

/// The buckets' labels: no gradient, then quintiles.
pub const GRAD_BUCKETS: [&str; 6] = ["no gradient", "q1", "q2", "q3", "q4", "q5"];

/// All weights of `tensors`, pooled, bucketed by accumulated |g|: those
/// with none (exactly 0), then five buckets of the rest by sorted rank
/// (ascending accumulated |g|, ties in tensor and element order; quintile
/// q holds ranks [q m/5, (q+1) m/5) of m). Every bucket is listed.
pub fn gradient_buckets(tensors: &[GradTensor]) -> Vec<GradBucket> {
    let rmss: Vec<f64> = tensors.iter().map(|t| rms(t.end)).collect();
    // (accumulated |g|, tensor, element) of every weight with a gradient.
    let mut ranked = vec![];
    let mut none = BucketSums::default();
    for (ti, t) in tensors.iter().enumerate() {
        assert!(t.grad_sum.len() == t.start.len() && t.start.len() == t.end.len());
        for (i, g) in t.grad_sum.iter().enumerate() {
            if *g == 0.0 {
                none.add(t.end[i], rmss[ti], (t.end[i] - t.start[i]).abs());
            } else {
                ranked.push((*g, ti, i));
            }
        }
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let bucket = |name: &str, s: BucketSums, range: Option<(f64, f64)>| {
        let (lo, hi) = range.unwrap_or((f64::NAN, f64::NAN));
        GradBucket {
            bucket: name.to_string(),
            count: s.n,
            grad_min: lo,
            grad_max: hi,
            mean_abs: s.frac(s.abs),
            mean_abs_change: s.frac(s.change),
            exact_zero_frac: s.frac(s.exact as f64),
            near_zero_frac: s.frac(s.near as f64),
            scale_rel_near_zero_frac: s.frac(s.scale_rel as f64),
        }
    };
    let none_range = (none.n > 0).then_some((0.0, 0.0));
    let mut out = vec![bucket(GRAD_BUCKETS[0], none, none_range)];
    let m = ranked.len();
    for q in 0..5 {
        let part = &ranked[q * m / 5..(q + 1) * m / 5];
        let mut s = BucketSums::default();
        for &(_, ti, i) in part {
            let t = &tensors[ti];
            s.add(t.end[i], rmss[ti], (t.end[i] - t.start[i]).abs());
        }
        let range = part.first().zip(part.last()).map(|(a, b)| (a.0, b.0));
        out.push(bucket(GRAD_BUCKETS[q + 1], s, range));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_vector() {
        // [0, 0, 3, 4]: L1 7, L2 5, Hoyer (2 - 7/5)/(2 - 1) = 0.6.
        // Gini: sorted (0, 0, 3, 4); terms k=3: 3/7 * 1.5/4, k=4: 4/7 * 0.5/4;
        // sum 6.5/28, G = 1 - 13/28 = 15/28.
        let m = Measures::of(&[0.0, 3.0, 0.0, -4.0]);
        assert_eq!(m.numel, 4);
        assert_eq!(m.exact_zero_frac, 0.5);
        assert!(close(m.l1, 7.0) && close(m.l2, 5.0));
        assert!(close(m.hoyer, 0.6), "{}", m.hoyer);
        assert!(close(m.gini, 15.0 / 28.0), "{}", m.gini);
    }

    #[test]
    fn near_zero_thresholds_are_strict() {
        // max 0.5, so the relative threshold is 0.005; 5e-3 is not below it.
        let m = Measures::of(&[1e-5, -5e-4, 5e-3, 0.5]);
        assert_eq!(m.near("1e-4"), 0.25);
        assert_eq!(m.near("1e-3"), 0.5);
        assert_eq!(m.near("1e-2"), 0.75);
        assert_eq!(m.rel_near_zero_frac, 0.5);
        assert_eq!(m.exact_zero_frac, 0.0);
        assert_eq!(Measures::of(&[1e-4]).near("1e-4"), 0.0);
    }

    #[test]
    fn extremes_of_hoyer_and_gini() {
        // Equal magnitudes: both 0. One non-zero of N: Hoyer 1, Gini 1 - 1/N.
        let eq = Measures::of(&[1.0, -1.0, 1.0, 1.0]);
        assert!(close(eq.hoyer, 0.0) && close(eq.gini, 0.0));
        let one = Measures::of(&[0.0, 0.0, 0.0, 2.0]);
        assert!(close(one.hoyer, 1.0) && close(one.gini, 0.75));
        let zeros = Measures::of(&[0.0; 3]);
        assert_eq!(
            (zeros.hoyer, zeros.gini, zeros.exact_zero_frac),
            (1.0, 1.0, 1.0)
        );
        assert_eq!(Measures::of(&[3.0]).hoyer, 0.0);
    }

    #[test]
    fn non_finite_values_are_counted_and_left_out_of_the_norms() {
        // The finite values are [3, 0, -4]: L1 7, L2 5, Hoyer over n = 3.
        let m = Measures::of(&[f64::NAN, 3.0, 0.0, -4.0, f64::INFINITY]);
        assert_eq!((m.numel, m.nonfinite), (5, 2));
        assert!(close(m.l1, 7.0) && close(m.l2, 5.0));
        let s3 = 3f64.sqrt();
        assert!(close(m.hoyer, (s3 - 1.4) / (s3 - 1.0)), "{}", m.hoyer);
        // Fractions are over all five values; NaN is not near zero.
        assert_eq!(m.exact_zero_frac, 0.2);
        assert_eq!(m.near("1e-4"), 0.2);
        // No finite value: the measures are undefined, not "maximally sparse".
        let nan = Measures::of(&[f64::NAN; 4]);
        assert_eq!((nan.numel, nan.nonfinite), (4, 4));
        assert!(nan.l1.is_nan() && nan.l2.is_nan() && nan.hoyer.is_nan() && nan.gini.is_nan());
        assert_eq!(nan.exact_zero_frac, 0.0);
        // No value at all (a zero-sized tensor): undefined too.
        let empty = Measures::of(&[]);
        assert_eq!(empty.numel, 0);
        assert!(empty.l1.is_nan() && empty.hoyer.is_nan() && empty.gini.is_nan());
        // Written as null in JSON, and read back.
        let json = serde_json::to_string(&nan).unwrap();
        assert!(json.contains("\"nonfinite\":4") && json.contains("\"hoyer\":null"));
        let back: Measures = serde_json::from_str(&json).unwrap();
        assert!(back.hoyer.is_nan() && back.nonfinite == 4);
        // Sums that overflow leave the ratios defined.
        let huge = Measures::of(&[1e300, 1e300, 0.0]);
        assert!(huge.l2.is_infinite());
        assert!(close(huge.hoyer, Measures::of(&[1.0, 1.0, 0.0]).hoyer));
        assert!(close(huge.gini, Measures::of(&[1.0, 1.0, 0.0]).gini));
    }

    #[test]
    fn gini_is_scale_invariant_and_rises_with_concentration() {
        let a = Measures::of(&[1.0, 2.0, 3.0, 4.0]);
        let b = Measures::of(&[10.0, 20.0, 30.0, 40.0]);
        assert!(close(a.gini, b.gini));
        // Robin Hood: moving mass from rich to poor lowers Gini.
        let c = Measures::of(&[1.5, 2.0, 3.0, 3.5]);
        assert!(c.gini < a.gini);
    }

    #[test]
    fn model_groups_split_weights_and_biases() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[0f32, 1.0], [2.0, 0.0]], &dev).unwrap();
        let b = Tensor::new(&[0f32, 5.0], &dev).unwrap();
        let ids = Tensor::new(&[1u32, 2], &dev).unwrap();
        let m = measure_tensors(&[("w".into(), w), ("b".into(), b), ("ids".into(), ids)]).unwrap();
        assert_eq!(m.tensors.len(), 2);
        assert_eq!(m.weights.numel, 4);
        assert_eq!(m.biases.numel, 2);
        assert_eq!(m.total.numel, 6);
        assert_eq!(m.total.exact_zero_frac, 0.5);
        assert!(close(m.total.l1, 8.0));
        // The relative threshold of the total uses the max over all tensors (5).
        assert!(close(m.total.rel_near_zero_frac, 0.5));
    }

    #[test]
    fn prune_threshold_and_histogram() {
        let sorted = [0.1, 0.2, 0.3, 0.4];
        assert_eq!(prune_threshold(&sorted, 0.5), Some(0.2));
        assert_eq!(prune_threshold(&sorted, 0.1), None);
        assert_eq!(prune_threshold(&sorted, 0.99), Some(0.3));
        let h = LogHistogram::of(&[0.0, 1e-9, 0.05, 0.5, -0.5, 20.0], -8.0, 1.0, 1.0);
        assert_eq!((h.zeros, h.below, h.above), (1, 1, 1));
        assert_eq!(h.counts.len(), 9);
        assert_eq!(h.counts[6], 1); // log10(0.05) = -1.3 -> bin [-2, -1)
        assert_eq!(h.counts[7], 2); // log10(0.5) = -0.3 -> bin [-1, 0)
    }

    #[test]
    fn dead_units_are_zero_on_every_example() {
        let dev = Device::Cpu;
        let mut d = DeadUnits::default();
        d.add(&[Tensor::new(&[[0f32, 1.0, 0.0], [0.0, 0.0, 0.0]], &dev).unwrap()])
            .unwrap();
        d.add(&[Tensor::new(&[[0f32, 0.0, 2.0]], &dev).unwrap()])
            .unwrap();
        let r = d.report();
        assert_eq!(r.per_layer, [1]);
        assert_eq!((r.dead, r.total), (1, 3));
    }

    #[test]
    fn scale_relative_near_zero_of_one_tensor() {
        // [3, -4, 0.02, 0.3]: mean w^2 = (9 + 16 + 0.0004 + 0.09)/4 =
        // 6.2726, RMS 2.50452..., thresholds 0.025, 0.075, 0.250: below
        // them 1 (0.02), 1, 1 (0.3 is not below 0.25).
        let m = Measures::of(&[3.0, -4.0, 0.02, 0.3]);
        assert!(close(rms(&[3.0, -4.0, 0.02, 0.3]), 6.2726f64.sqrt()));
        assert_eq!(m.scale_rel("0.01"), 0.25);
        assert_eq!(m.scale_rel("0.03"), 0.25);
        assert_eq!(m.scale_rel("0.1"), 0.25);
        // [1, 1, 1, 1, 0.05, 0.02, 0.005, 0]: mean w^2 = (4 + 0.0025 +
        // 0.0004 + 0.000025)/8 = 0.500365625, RMS 0.70736..., thresholds
        // 0.00707, 0.0212, 0.0707: 2, 3, 4 of 8 below (strict).
        let v = [1.0, 1.0, -1.0, 1.0, 0.05, -0.02, 0.005, 0.0];
        let m = Measures::of(&v);
        assert_eq!(m.scale_rel("0.01"), 0.25);
        assert_eq!(m.scale_rel("0.03"), 0.375);
        assert_eq!(m.scale_rel("0.1"), 0.5);
        // Strict: |w| equal to c * RMS is not below it. 7 ones and 33
        // elevens: mean w^2 = (7 + 33 * 121)/40 = 100, RMS 10, 0.1 * RMS = 1.
        let mut eq = vec![1.0; 7];
        eq.extend([11.0; 33]);
        assert_eq!(rms(&eq), 10.0);
        assert_eq!(Measures::of(&eq).scale_rel("0.1"), 0.0);
        // An all-zero tensor counts wholly; NaN never counts, and the RMS is
        // over the finite values.
        let z = Measures::of(&[0.0; 5]);
        assert_eq!(
            z.scale_rel_near_zero_frac.values().collect::<Vec<_>>(),
            [&1.0; 3]
        );
        assert_eq!(Measures::of(&[0.0, f64::NAN]).scale_rel("0.01"), 0.5);
        assert_eq!(
            Measures::of(&[f64::NAN, 3.0, 0.0]).scale_rel("0.01"),
            1.0 / 3.0
        );
        // Values too large to square: the RMS is still finite.
        let big = Measures::of(&[1e300, 1e300, 1e296]);
        assert_eq!(big.scale_rel("0.01"), 1.0 / 3.0);
        // Keys, and records written before the field read back with none.
        assert_eq!(
            m.scale_rel_near_zero_frac.keys().collect::<Vec<_>>(),
            ["0.01", "0.03", "0.1"]
        );
        let mut json: serde_json::Value = serde_json::to_value(&m).unwrap();
        json.as_object_mut()
            .unwrap()
            .remove("scale_rel_near_zero_frac");
        let old: Measures = serde_json::from_value(json).unwrap();
        assert!(old.scale_rel_near_zero_frac.is_empty() && old.scale_rel("0.01").is_nan());
    }

    #[test]
    fn scale_relative_near_zero_of_a_group_pools_counts_with_own_rms() {
        let dev = Device::Cpu;
        // Two weights with scales 100 apart, and an all-zero bias.
        // a = [1, 1, 1, 0.005]: RMS sqrt(3.000025/4) = 0.866..., thresholds
        //   0.00866, 0.026, 0.0866: 1, 1, 1 below.
        // b = [0.01, 0.01, 0.01, 0.00005, 0.0005, 0]: mean w^2 =
        //   (3e-4 + 2.5e-9 + 2.5e-7)/6, RMS 0.0070728..., thresholds
        //   7.07e-5, 2.12e-4, 7.07e-4: 2 (5e-5, 0), 2, 3 (+5e-4) below.
        // Pooled over the weights (10): 3, 3, 4. With the biases' 3 zeros,
        // all of which count (13): 6, 6, 7.
        let a = Tensor::new(&[[1f32, 1.0], [1.0, 0.005]], &dev).unwrap();
        let b = Tensor::new(&[[0.01f64, 0.01, 0.01], [0.00005, 0.0005, 0.0]], &dev).unwrap();
        let bias = Tensor::new(&[0f32, 0.0, 0.0], &dev).unwrap();
        let m =
            measure_tensors(&[("a".into(), a), ("b".into(), b), ("bias".into(), bias)]).unwrap();
        assert_eq!(
            (
                m.tensors["a"].scale_rel("0.01"),
                m.tensors["a"].scale_rel("0.1")
            ),
            (0.25, 0.25)
        );
        let tb = &m.tensors["b"];
        assert_eq!(
            (
                tb.scale_rel("0.01"),
                tb.scale_rel("0.03"),
                tb.scale_rel("0.1")
            ),
            (2.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0)
        );
        assert_eq!(m.tensors["bias"].scale_rel("0.01"), 1.0);
        let w = &m.weights;
        assert_eq!(
            (w.scale_rel("0.01"), w.scale_rel("0.03"), w.scale_rel("0.1")),
            (0.3, 0.3, 0.4)
        );
        assert_eq!(m.biases.scale_rel("0.1"), 1.0);
        let t = &m.total;
        assert_eq!(
            (t.scale_rel("0.01"), t.scale_rel("0.03"), t.scale_rel("0.1")),
            (6.0 / 13.0, 6.0 / 13.0, 7.0 / 13.0)
        );
        // The concatenated values alone would say otherwise: one RMS for
        // both weights puts all of b below 0.1 * RMS.
        let mut cat = vec![1.0, 1.0, 1.0, 0.005];
        cat.extend([0.01, 0.01, 0.01, 0.00005, 0.0005, 0.0]);
        assert_eq!(Measures::of(&cat).scale_rel("0.1"), 0.7);
        // Everything else of a group is as over the concatenation.
        let mut g = Measures::of_group(&[&cat[..4], &cat[4..]]);
        let mut c = Measures::of(&cat);
        g.scale_rel_near_zero_frac.clear();
        c.scale_rel_near_zero_frac.clear();
        assert_eq!(g, c);
    }

    #[test]
    fn input_activity_buckets_first_layer_columns() {
        let dev = Device::Cpu;
        // 4 images of 5 pixels: pixel 0 never > 0, pixel 1 once (25 %),
        // pixel 2 always, pixel 3 negative only (never > 0), pixel 4 twice.
        let x = Tensor::new(
            &[
                [0f32, 0.5, 1.0, -1.0, 0.0],
                [0.0, 0.0, 0.2, -0.5, 0.3],
                [0.0, 0.0, 0.1, 0.0, 0.9],
                [0.0, 0.0, 0.4, -0.1, 0.0],
            ],
            &dev,
        )
        .unwrap();
        let active = active_counts(&x).unwrap();
        assert_eq!(active, [0, 1, 4, 0, 2]);
        // Bucket edges, exactly: 0.1 % of 2000 is 2, 3 % of 2000 is 60.
        assert_eq!(
            [0, 1, 2, 3, 60, 61, 2000].map(|a| activity_bucket(a, 2000)),
            [0, 1, 1, 2, 2, 3, 3]
        );
        // Counts over 2000 images: pixel 0: 0 (never), 1: 2 (<=0.1%),
        // 2: 2000, 3: 0 (never), 4: 50 (<=3%).
        let active = [0, 2, 2000, 0, 50];
        // fc0.weight [2, 5]; mean w^2 = (0 + 0 + 1 + 4 + 0.0004 + 0 + 1e-6
        // + 1 + 1e-4 + 0.0025)/10 = 0.6003, RMS 0.7748, threshold 0.0077.
        let w = [
            0.0, 0.0, 1.0, -2.0, 0.02, //
            0.0, 0.001, 1.0, 0.01, -0.05,
        ];
        let b = activity_breakdown(&active, 2000, &w, 5);
        let names: Vec<&str> = b.iter().map(|b| b.bucket.as_str()).collect();
        assert_eq!(names, ["never", "<=0.1%", "<=3%", ">3%"]);
        assert_eq!(
            b.iter().map(|b| (b.pixels, b.weights)).collect::<Vec<_>>(),
            [(2, 4), (1, 2), (1, 2), (1, 2)]
        );
        // never: w = [0, -2, 0, 0.01]: 2 exact zeros, 2 below 1e-3, 2 below
        // 0.0077, mean |w| 0.5025.
        assert_eq!(b[0].exact_zero_frac, 0.5);
        assert_eq!(b[0].near_zero_frac, 0.5);
        assert_eq!(b[0].scale_rel_near_zero_frac, 0.5);
        assert!(close(b[0].mean_abs, 2.01 / 4.0));
        // <=0.1%: [0, 0.001]: one exact zero, 1e-3 is not below 1e-3, both
        // below 0.0077.
        assert_eq!(
            (
                b[1].exact_zero_frac,
                b[1].near_zero_frac,
                b[1].scale_rel_near_zero_frac
            ),
            (0.5, 0.5, 1.0)
        );
        assert!(close(b[1].mean_abs, 0.0005));
        // <=3%: [0.02, -0.05]; >3%: [1, 1].
        assert_eq!(
            (b[2].near_zero_frac, b[2].scale_rel_near_zero_frac),
            (0.0, 0.0)
        );
        assert!(close(b[2].mean_abs, 0.035) && close(b[3].mean_abs, 1.0));
        // An empty bucket has null measures.
        let e = activity_breakdown(&[5, 5], 10, &[1.0, 2.0], 2);
        assert_eq!((e[0].pixels, e[0].weights), (0, 0));
        assert!(e[0].mean_abs.is_nan());
        let json = serde_json::to_string(&e[0]).unwrap();
        assert!(json.contains("\"mean_abs\":null"), "{json}");
        let back: ActivityBucket = serde_json::from_str(&json).unwrap();
        assert!(back.mean_abs.is_nan());
    }

    #[test]
    fn gradient_buckets_by_accumulated_gradient() {
        // Tensor a (RMS 1 at the end: [1, -1, 1, 1]), tensor b (end
        // [0.001, 0.0001, 0, 0.002, 0.5, 0.5], RMS ~0.2887, threshold
        // 0.002887).
        let a = GradTensor {
            grad_sum: &[0.0, 5.0, 1.0, 3.0],
            start: &[1.0, 0.0, 0.5, 1.0],
            end: &[1.0, -1.0, 1.0, 1.0],
        };
        let b = GradTensor {
            grad_sum: &[0.0, 2.0, 4.0, 2.0, 6.0, 7.0],
            start: &[0.001, 0.1, 0.0, 0.0, 0.5, 0.0],
            end: &[0.001, 0.0001, 0.0, 0.002, 0.5, 0.5],
        };
        let g = gradient_buckets(&[a, b]);
        let names: Vec<&str> = g.iter().map(|b| b.bucket.as_str()).collect();
        assert_eq!(names, GRAD_BUCKETS);
        // No gradient: a[0] (end 1) and b[0] (end 0.001, near 1e-3? no:
        // strict; below 0.002887 yes), unchanged.
        let n = &g[0];
        assert_eq!((n.count, n.grad_min, n.grad_max), (2, 0.0, 0.0));
        assert_eq!(
            (n.mean_abs_change, n.exact_zero_frac, n.near_zero_frac),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(n.scale_rel_near_zero_frac, 0.5);
        assert!(close(n.mean_abs, 1.001 / 2.0));
        // The other 8 by (|g| sum, tensor, element): a2 (1), b1 (2), b3 (2),
        // a3 (3), b2 (4), a1 (5), b4 (6), b5 (7); quintiles of 8 take ranks
        // [0, 1), [1, 3), [3, 4), [4, 6), [6, 8).
        assert_eq!(
            g[1..].iter().map(|b| b.count).collect::<Vec<_>>(),
            [1, 2, 1, 2, 2]
        );
        assert_eq!(g.iter().map(|b| b.count).sum::<usize>(), 10);
        assert_eq!((g[1].grad_min, g[1].grad_max), (1.0, 1.0));
        assert!(close(g[1].mean_abs_change, 0.5) && close(g[1].mean_abs, 1.0));
        // q2: b1 (0.0001, moved 0.0999) and b3 (0.002, moved 0.002): both
        // below 1e-3? 0.0001 yes, 0.002 no; both below 0.002887.
        let q2 = &g[2];
        assert_eq!((q2.grad_min, q2.grad_max), (2.0, 2.0));
        assert_eq!((q2.near_zero_frac, q2.scale_rel_near_zero_frac), (0.5, 1.0));
        assert!(close(q2.mean_abs_change, (0.0999 + 0.002) / 2.0));
        // q4: b2 (end 0, exact zero) and a1.
        assert_eq!((g[4].grad_min, g[4].grad_max), (4.0, 5.0));
        assert_eq!(g[4].exact_zero_frac, 0.5);
        assert_eq!((g[5].grad_min, g[5].grad_max), (6.0, 7.0));
        // Empty buckets are listed with null measures.
        let e = gradient_buckets(&[GradTensor {
            grad_sum: &[1.0, 2.0],
            start: &[0.0, 0.0],
            end: &[1.0, 1.0],
        }]);
        assert_eq!(
            e.iter().map(|b| b.count).collect::<Vec<_>>(),
            [0, 0, 0, 1, 0, 1]
        );
        assert!(e[0].grad_min.is_nan() && e[1].mean_abs.is_nan());
        let back: GradBucket =
            serde_json::from_str(&serde_json::to_string(&e[0]).unwrap()).unwrap();
        assert!(back.mean_abs.is_nan() && back.count == 0);
    }
}
