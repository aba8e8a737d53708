//! Sparsity measures of weight tensors (STUDY.md, "Measures").
//!
//! Everything here works on plain numbers; nothing knows about optimizers.
//! Per tensor, and for groups of tensors treated as one vector:
//! exact-zero fraction, near-zero fractions |w| < 1e-4, 1e-3, 1e-2, the
//! relative near-zero fraction |w| < 0.01 * max|w|, L1, L2, Hoyer and Gini.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::train::nan_from_null;

/// Absolute near-zero thresholds, with their keys in records.
pub const NEAR_ZERO: [(&str, f64); 3] = [("1e-4", 1e-4), ("1e-3", 1e-3), ("1e-2", 1e-2)];

/// The relative threshold: |w| < REL * max|w| of the same tensor (or group).
pub const REL: f64 = 0.01;

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
    /// Measures of `values` (see the type for how non-finite values count).
    pub fn of(values: &[f64]) -> Self {
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
        if k == 0 && n > 0 {
            // No finite value: nothing to measure.
            (l1, l2, hoyer, gini) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        }
        Self {
            numel: n,
            nonfinite,
            exact_zero_frac: exact as f64 / nf,
            near_zero_frac,
            rel_near_zero_frac: rel,
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

/// Measures of named tensors. Non-float tensors are skipped.
pub fn measure_tensors(named: &[(String, Tensor)]) -> Result<ModelMeasures> {
    let mut tensors = BTreeMap::new();
    let (mut w, mut b, mut all) = (vec![], vec![], vec![]);
    for (name, t) in named {
        if !t.dtype().is_float() {
            continue;
        }
        let v = values(t)?;
        tensors.insert(name.clone(), Measures::of(&v));
        if t.rank() >= 2 { &mut w } else { &mut b }.extend_from_slice(&v);
        all.extend(v);
    }
    Ok(ModelMeasures {
        tensors,
        weights: Measures::of(&w),
        biases: Measures::of(&b),
        total: Measures::of(&all),
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
}
