//! Tests of the parent module (kept apart so the module file holds only its code).

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
    let m = measure_tensors(&[("a".into(), a), ("b".into(), b), ("bias".into(), bias)]).unwrap();
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
    let back: GradBucket = serde_json::from_str(&serde_json::to_string(&e[0]).unwrap()).unwrap();
    assert!(back.mean_abs.is_nan() && back.count == 0);
}
