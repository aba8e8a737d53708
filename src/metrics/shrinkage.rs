//! Shrinkage: the fraction of weights that training drove toward zero,
//! |w_end| <= c * |w_init| (STUDY.md, "Measures"; c in [`SHRINK`]).
//!
//! Unlike a threshold relative to the tensor's scale (|w| < c * RMS), it is
//! blind to weights that training did not touch: a weight that ends where it
//! started has |w_end| = |w_init| > c * |w_init| and is never counted,
//! whatever the other weights of its tensor do. Two cases are decided here:
//!
//! - a weight initialised at exactly 0 has no initial magnitude to shrink
//!   from: it counts as not shrunk (it stays in the denominator);
//! - a non-finite end value is not shrunk.
//!
//! So "shrunk" is exactly: w_init != 0 and |w_end| <= c * |w_init|. A weight
//! pruned or thresholded to exactly 0 from a non-zero start is shrunk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::io::nan_from_null;

/// Shrinkage factors, with their keys in records.
pub const SHRINK: [(&str, f64); 2] = [("0.1", 0.1), ("0.01", 0.01)];

/// Whether one weight is shrunk by factor `c` (see the module's rule).
pub fn is_shrunk(init: f64, end: f64, c: f64) -> bool {
    init != 0.0 && end.is_finite() && end.abs() <= c * init.abs()
}

/// How many of the pairs (`init[i]`, `end[i]`) are shrunk by factor `c`.
/// The slices are one tensor's values, in the same order.
pub fn shrunk_count(init: &[f64], end: &[f64], c: f64) -> usize {
    assert_eq!(init.len(), end.len(), "one initial value per final value");
    init.iter()
        .zip(end)
        .filter(|(i, e)| is_shrunk(**i, **e, c))
        .count()
}

/// The distance travelled from the initialisation relative to its size,
/// ||w − w_init||₂ / ||w_init||₂ over (initial, current) value pairs, one
/// pair of slices per tensor, pooled: 0 for weights that never moved, 1 for
/// a move as large as the initial weights themselves. NaN when the initial
/// weights are all zero (no scale to compare with).
pub fn relative_distance(parts: &[(&[f64], &[f64])]) -> f64 {
    let (mut moved, mut size) = (0.0, 0.0);
    for (i, e) in parts {
        assert_eq!(i.len(), e.len(), "one initial value per current value");
        for (a, b) in i.iter().zip(e.iter()) {
            moved += (b - a) * (b - a);
            size += a * a;
        }
    }
    if size == 0.0 {
        f64::NAN
    } else {
        (moved / size).sqrt()
    }
}

/// Shrinkage of a tensor or of a group of tensors (counts pooled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shrinkage {
    pub numel: usize,
    /// Keys of [`SHRINK`]: the fraction of the `numel` weights with
    /// |w_end| <= c * |w_init|.
    #[serde(deserialize_with = "frac_map")]
    pub frac: BTreeMap<String, f64>,
}

fn frac_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    #[derive(Deserialize)]
    struct F(#[serde(deserialize_with = "nan_from_null")] f64);
    let m: BTreeMap<String, F> = BTreeMap::deserialize(d)?;
    Ok(m.into_iter().map(|(k, F(v))| (k, v)).collect())
}

impl Shrinkage {
    /// Of (initial, final) value pairs, one pair of slices per tensor,
    /// pooled. No values: every fraction NaN (undefined, not 0).
    pub fn of_group(parts: &[(&[f64], &[f64])]) -> Self {
        let numel: usize = parts.iter().map(|(i, _)| i.len()).sum();
        let frac = SHRINK
            .iter()
            .map(|(k, c)| {
                let n: usize = parts.iter().map(|(i, e)| shrunk_count(i, e, *c)).sum();
                let f = if numel == 0 {
                    f64::NAN
                } else {
                    n as f64 / numel as f64
                };
                (k.to_string(), f)
            })
            .collect();
        Self { numel, frac }
    }

    /// The fraction for key `key` of [`SHRINK`] (NaN if absent).
    pub fn at(&self, key: &str) -> f64 {
        self.frac.get(key).copied().unwrap_or(f64::NAN)
    }
}

/// A run's shrinkage: every weight tensor (two or more dimensions) and the
/// weights pooled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShrinkageReport {
    pub tensors: BTreeMap<String, Shrinkage>,
    pub weights: Shrinkage,
}

impl ShrinkageReport {
    /// From named (initial, final) values of the weight tensors.
    pub fn of(named: &[(String, Vec<f64>, Vec<f64>)]) -> Self {
        let tensors = named
            .iter()
            .map(|(n, i, e)| (n.clone(), Shrinkage::of_group(&[(i, e)])))
            .collect();
        let parts: Vec<(&[f64], &[f64])> = named
            .iter()
            .map(|(_, i, e)| (i.as_slice(), e.as_slice()))
            .collect();
        Self {
            tensors,
            weights: Shrinkage::of_group(&parts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{rms, scale_rel_count};

    #[test]
    fn relative_distance_by_hand() {
        // Two tensors pooled: init (3, 4) and (0), now (3, 4) and (0): 0.
        let (a, b) = ([3.0, 4.0], [0.0]);
        assert_eq!(relative_distance(&[(&a, &a), (&b, &b)]), 0.0);
        // Now (0, 4) and (4): moved sqrt(9 + 16) = 5 over ||init|| = 5.
        assert_eq!(relative_distance(&[(&a, &[0.0, 4.0]), (&b, &[4.0])]), 1.0);
        // Halved everywhere: 0.5, whatever the scale.
        assert_eq!(relative_distance(&[(&[2.0, -6.0], &[1.0, -3.0])]), 0.5);
        assert!(relative_distance(&[(&b, &[1.0])]).is_nan());
    }

    #[test]
    fn shrunk_by_hand() {
        // init 1: end 0.1 is shrunk at c = 0.1 (<=), 0.1000001 is not.
        assert!(is_shrunk(1.0, 0.1, 0.1));
        assert!(!is_shrunk(1.0, 0.100_000_1, 0.1));
        assert!(is_shrunk(-2.0, 0.02, 0.01));
        assert!(!is_shrunk(-2.0, 0.03, 0.01));
        // Pruned to exactly 0 from a non-zero start: shrunk.
        assert!(is_shrunk(0.5, 0.0, 0.01));
        // Initialised at 0: never shrunk, even if it ends at 0.
        assert!(!is_shrunk(0.0, 0.0, 0.1));
        assert!(!is_shrunk(0.0, 1e-9, 0.1));
        // Non-finite ends are not shrunk.
        assert!(!is_shrunk(1.0, f64::NAN, 0.1));
        let init = [1.0, -1.0, 0.5, 0.0, 2.0];
        let end = [0.05, -0.2, 0.0, 0.0, 2.5];
        assert_eq!(shrunk_count(&init, &end, 0.1), 2);
        assert_eq!(shrunk_count(&init, &end, 0.01), 1);
        let s = Shrinkage::of_group(&[(&init, &end)]);
        assert_eq!(s.numel, 5);
        assert_eq!(s.at("0.1"), 0.4);
        assert_eq!(s.at("0.01"), 0.2);
    }

    #[test]
    fn weights_that_never_move_are_never_shrunk_whatever_the_others_do() {
        // Ten weights that keep their initial value, and ten that training
        // makes ten times larger: the RMS-relative measure finds some of the
        // untouched ones "near zero" (the threshold grew), shrinkage finds
        // none.
        let still: Vec<f64> = (1..=10).map(|k| 0.001 * k as f64).collect();
        let moved_init = vec![0.05; 10];
        let moved_end = vec![0.5; 10];
        let before: Vec<f64> = still.iter().chain(&moved_init).copied().collect();
        let after: Vec<f64> = still.iter().chain(&moved_end).copied().collect();
        // 0.01 * RMS before: about 3.5e-4 (none of the still weights below);
        // after: about 3.5e-3 (three of them, 0.001-0.003, below).
        assert_eq!(scale_rel_count(&before, rms(&before), 0.01), 0);
        assert_eq!(scale_rel_count(&after, rms(&after), 0.01), 3);
        let s = Shrinkage::of_group(&[(&before, &after)]);
        assert_eq!(s.at("0.1"), 0.0);
        assert_eq!(s.at("0.01"), 0.0);
        // The same with the still weights alone: nothing moved, nothing shrunk.
        let alone = Shrinkage::of_group(&[(&still, &still)]);
        assert_eq!(alone.frac.values().copied().collect::<Vec<_>>(), [0.0, 0.0]);
    }

    #[test]
    fn groups_pool_counts_and_empty_is_undefined() {
        let a = ([1.0, 1.0], [0.0, 1.0]);
        let b = ([1.0, 1.0, 1.0, 1.0], [0.05, 0.05, 0.05, 0.5]);
        let r = ShrinkageReport::of(&[
            ("a".into(), a.0.to_vec(), a.1.to_vec()),
            ("b".into(), b.0.to_vec(), b.1.to_vec()),
        ]);
        assert_eq!(r.tensors["a"].at("0.1"), 0.5);
        assert_eq!(r.tensors["b"].at("0.1"), 0.75);
        // Pooled: (1 + 3) / 6, not the mean of 0.5 and 0.75.
        assert_eq!(r.weights.at("0.1"), 4.0 / 6.0);
        assert_eq!(r.weights.at("0.01"), 1.0 / 6.0);
        assert!(Shrinkage::of_group(&[]).at("0.1").is_nan());
        assert!(r.weights.at("0.5").is_nan());
    }

    #[test]
    fn json_round_trip_keeps_nan_as_null() {
        let s = Shrinkage::of_group(&[]);
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("null"), "{j}");
        let back: Shrinkage = serde_json::from_str(&j).unwrap();
        assert!(back.at("0.1").is_nan());
    }
}
