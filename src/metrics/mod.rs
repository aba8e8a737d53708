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
pub use shrinkage::{Shrinkage, ShrinkageReport, relative_distance};

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
mod tests;
