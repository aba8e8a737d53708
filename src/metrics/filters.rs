//! Filter-level sparsity of convolutional layers: a whole output channel
//! switched off, the unit Mehta, Kim & Theobalt (CVPR 2019) count.
//!
//! Per conv layer (a 4-D tensor `NAME.weight`, `[out, in, kh, kw]`), and in
//! total over all conv layers:
//! - `dead`: filters whose post-ReLU output is 0 at every position of every
//!   held-out image (from an evaluation pass, so not in the weights-only
//!   [`filter_measures`]; the training loop adds it);
//! - `small_norm`: filters whose L2 norm is below c x the median filter norm
//!   of their layer, for c in [`FILTER_NORM_REL`];
//! - `gamma_small`: with BatchNorm, filters whose BatchNorm scale has
//!   |gamma| < [`GAMMA_SMALL`]. The BatchNorm of `convK` is `bnK` (torch's
//!   names in this project's CNN).

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The values of a float tensor, as f64 (as `metrics::values`; this file
/// is a child of `metrics` and does not import its parent).
fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?)
}

/// Thresholds relative to the layer's median filter norm, with their keys.
pub const FILTER_NORM_REL: [(&str, f64); 2] = [("0.01", 0.01), ("0.1", 0.1)];

/// A BatchNorm scale below this in magnitude switches its filter off.
pub const GAMMA_SMALL: f64 = 1e-3;

/// Counts for one conv layer, or for all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterCounts {
    pub filters: usize,
    /// Dead on the held-out set (None where not measured: from weights alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead: Option<usize>,
    /// By key of [`FILTER_NORM_REL`]: norm < c x the layer's median norm.
    pub small_norm: BTreeMap<String, usize>,
    /// |gamma| < [`GAMMA_SMALL`] (None without BatchNorm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma_small: Option<usize>,
}

impl FilterCounts {
    fn frac(&self, n: usize) -> f64 {
        if self.filters == 0 {
            f64::NAN
        } else {
            n as f64 / self.filters as f64
        }
    }
    /// Fraction of dead filters (NaN when not measured).
    pub fn dead_frac(&self) -> f64 {
        self.dead.map_or(f64::NAN, |d| self.frac(d))
    }
    /// Fraction with norm < c x median, `key` one of [`FILTER_NORM_REL`]'s.
    pub fn small_norm_frac(&self, key: &str) -> f64 {
        self.small_norm.get(key).map_or(f64::NAN, |n| self.frac(*n))
    }
    /// Fraction with |gamma| < [`GAMMA_SMALL`] (NaN without BatchNorm).
    pub fn gamma_small_frac(&self) -> f64 {
        self.gamma_small.map_or(f64::NAN, |n| self.frac(n))
    }

    fn add(&mut self, o: &FilterCounts) {
        self.filters += o.filters;
        for (k, v) in &o.small_norm {
            *self.small_norm.entry(k.clone()).or_default() += v;
        }
        let sum = |a: Option<usize>, b: Option<usize>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.dead = sum(self.dead, o.dead);
        self.gamma_small = sum(self.gamma_small, o.gamma_small);
    }
}

/// Filter measures per conv layer (keyed by the layer's name, e.g.
/// `conv1`) and in total.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterMeasures {
    pub layers: BTreeMap<String, FilterCounts>,
    pub total: FilterCounts,
}

/// The median of non-empty `v` (the mean of the two middle values when
/// their count is even).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// The weight-only filter measures of named tensors (in any order); None
/// when there is no conv layer (no 4-D `NAME.weight`).
pub fn filter_measures(named: &[(String, Tensor)]) -> Result<Option<FilterMeasures>> {
    let by_name: BTreeMap<&str, &Tensor> = named.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut layers = BTreeMap::new();
    for (name, t) in &by_name {
        let Some(layer) = name.strip_suffix(".weight") else {
            continue;
        };
        if t.rank() != 4 || !t.dtype().is_float() {
            continue;
        }
        let filters = t.dim(0)?;
        let w = values(t)?;
        let per = w.len() / filters.max(1);
        let norms: Vec<f64> = w
            .chunks(per.max(1))
            .map(|f| f.iter().map(|x| x * x).sum::<f64>().sqrt())
            .collect();
        let mut counts = FilterCounts {
            filters,
            ..Default::default()
        };
        if filters > 0 {
            let med = median(&norms);
            for (key, c) in FILTER_NORM_REL {
                let n = norms.iter().filter(|x| **x < c * med).count();
                counts.small_norm.insert(key.to_string(), n);
            }
        }
        let bn = layer
            .strip_prefix("conv")
            .and_then(|k| by_name.get(format!("bn{k}.weight").as_str()));
        if let Some(g) = bn
            && g.rank() == 1
            && g.dim(0)? == filters
        {
            let g = values(g)?;
            counts.gamma_small = Some(g.iter().filter(|x| x.abs() < GAMMA_SMALL).count());
        }
        layers.insert(layer.to_string(), counts);
    }
    if layers.is_empty() {
        return Ok(None);
    }
    Ok(Some(FilterMeasures::from_layers(layers)))
}

impl FilterMeasures {
    fn from_layers(layers: BTreeMap<String, FilterCounts>) -> Self {
        let mut total: Option<FilterCounts> = None;
        for c in layers.values() {
            match &mut total {
                None => total = Some(c.clone()),
                Some(t) => t.add(c),
            }
        }
        Self {
            total: total.unwrap_or_default(),
            layers,
        }
    }

    /// Sets the dead-filter counts, one per conv layer in the model's order
    /// (`conv1`, `conv2`, ...). Layers are matched by that number, so that
    /// `conv10` follows `conv9`.
    pub fn with_dead(mut self, dead: &[usize]) -> Self {
        for (i, d) in dead.iter().enumerate() {
            if let Some(c) = self.layers.get_mut(&format!("conv{}", i + 1)) {
                c.dead = Some(*d);
            }
        }
        Self::from_layers(self.layers)
    }

    /// A text table: one row per layer, then the total.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<8} {:>7} {:>7} {:>11} {:>11} {:>10}\n",
            "filters", "count", "dead", "<.01median", "<.1median", "|gamma|<1e-3"
        );
        let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
        let rows = self
            .layers
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain([("[total]", &self.total)]);
        for (name, c) in rows {
            out += &format!(
                "{:<8} {:>7} {:>7} {:>11} {:>11} {:>10}\n",
                name,
                c.filters,
                opt(c.dead),
                opt(c.small_norm.get("0.01").copied()),
                opt(c.small_norm.get("0.1").copied()),
                opt(c.gamma_small)
            );
        }
        out.trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Four filters of 2 x 1 x 1 values with norms 5, 1, 0.05 and 0:
    /// median (0.05 + 1) / 2 = 0.525, so < 0.00525 is only the zero filter
    /// and < 0.0525 adds the 0.05 one.
    #[test]
    fn norms_below_a_fraction_of_the_median() {
        let w = t(
            vec![3.0, 4.0, 0.0, -1.0, 0.03, 0.04, 0.0, 0.0],
            &[4, 2, 1, 1],
        );
        let m = filter_measures(&[("conv1.weight".into(), w)])
            .unwrap()
            .unwrap();
        let c = &m.layers["conv1"];
        assert_eq!(c.filters, 4);
        assert_eq!(c.small_norm["0.01"], 1);
        assert_eq!(c.small_norm["0.1"], 2);
        assert_eq!(c.gamma_small, None);
        assert_eq!(c.small_norm_frac("0.1"), 0.5);
        assert!(c.dead_frac().is_nan());
    }

    /// Odd count: the median is the middle norm (2), so 0.019 < 0.02 counts
    /// and 0.021 does not: the threshold is strict and per layer.
    #[test]
    fn odd_count_median_and_per_layer_totals() {
        let a = t(vec![2.0, 0.019, 7.0], &[3, 1, 1, 1]);
        let b = t(vec![0.021, 2.0, 3.0], &[3, 1, 1, 1]);
        let m = filter_measures(&[
            ("conv2.weight".into(), b),
            ("conv1.weight".into(), a),
            ("fc1.weight".into(), t(vec![0.0; 4], &[2, 2])),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(m.layers.len(), 2, "the 2-D fc1 is not a conv layer");
        assert_eq!(m.layers["conv1"].small_norm["0.01"], 1);
        assert_eq!(m.layers["conv2"].small_norm["0.01"], 0);
        assert_eq!(m.total.filters, 6);
        assert_eq!(m.total.small_norm["0.01"], 1);
    }

    #[test]
    fn batchnorm_scales_below_1e_3_and_dead_counts() {
        let w = t(vec![1.0; 4], &[4, 1, 1, 1]);
        let g = t(vec![1.0, -9e-4, 1e-3, 0.0], &[4]);
        let m = filter_measures(&[("conv1.weight".into(), w), ("bn1.weight".into(), g)])
            .unwrap()
            .unwrap();
        assert_eq!(m.layers["conv1"].gamma_small, Some(2));
        assert_eq!(m.total.gamma_small_frac(), 0.5);
        let m = m.with_dead(&[3]);
        assert_eq!(m.layers["conv1"].dead, Some(3));
        assert_eq!(m.total.dead_frac(), 0.75);
    }

    #[test]
    fn no_conv_layer_no_measures() {
        let w = t(vec![0.0; 4], &[2, 2]);
        assert!(
            filter_measures(&[("fc0.weight".into(), w)])
                .unwrap()
                .is_none()
        );
    }
}
