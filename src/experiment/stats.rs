//! Statistics for study reports: the mean and sample standard deviation,
//! Student's t distribution (through the regularised incomplete beta
//! function), paired-difference confidence intervals and tests, and Holm's
//! step-down adjustment for many comparisons.

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let sd = if xs.len() > 1 {
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((m, sd))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error < 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (Numerical
/// Recipes' `betacf`, modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b).
pub fn beta_inc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Two-sided p-value of Student's t statistic `t` with `df` degrees of
/// freedom: P(|T| >= |t|).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    beta_inc(df / 2.0, 0.5, df / (df + t * t))
}

/// The quantile t_{1 - alpha/2, df}: the half-width factor of a two-sided
/// (1 - alpha) confidence interval.
pub fn t_critical(alpha: f64, df: f64) -> f64 {
    // t_two_sided_p falls from 1 to 0 as t grows: bisect.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while t_two_sided_p(hi, df) > alpha {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_two_sided_p(mid, df) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The mean of `xs` and the half-width of its 95 % confidence interval,
/// t_{0.975, n-1} · sd / √n with the sample standard deviation. None for
/// fewer than two values or a non-finite result.
pub fn ci95(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.len() < 2 {
        return None;
    }
    let (m, sd) = mean_std(xs)?;
    let half = t_critical(0.05, (xs.len() - 1) as f64) * sd / (xs.len() as f64).sqrt();
    (m.is_finite() && half.is_finite()).then_some((m, half))
}

/// A paired comparison: the mean of the differences, its 95 % confidence
/// interval, and the two-sided paired t-test's p-value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    pub n: usize,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    /// None with fewer than two pairs.
    pub p: Option<f64>,
}

/// The paired comparison of differences `d` (one per shared seed).
pub fn paired(d: &[f64]) -> Option<Paired> {
    let n = d.len();
    if n == 0 {
        return None;
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Some(Paired {
            n,
            mean,
            lo: f64::NAN,
            hi: f64::NAN,
            p: None,
        });
    }
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let se = sd / (n as f64).sqrt();
    let df = (n - 1) as f64;
    let half = t_critical(0.05, df) * se;
    let p = if se > 0.0 {
        t_two_sided_p(mean / se, df)
    } else if mean == 0.0 {
        1.0
    } else {
        // Every pair differs by the same amount: no spread to test against.
        0.0
    };
    Some(Paired {
        n,
        mean,
        lo: mean - half,
        hi: mean + half,
        p: Some(p),
    })
}

/// Holm's step-down adjustment of p-values (controls the family-wise error
/// rate): sort ascending, multiply the i-th smallest (0-based) by m - i,
/// keep the sequence monotone, cap at 1. Returned in the input's order.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]).then(a.cmp(&b)));
    let mut out = vec![0.0; m];
    let mut running = 0.0f64;
    for (i, &k) in order.iter().enumerate() {
        running = running.max(((m - i) as f64 * p[k]).min(1.0));
        out[k] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[2.0]), Some((2.0, 0.0)));
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn t_quantiles_match_tables() {
        // Standard two-sided 95 % critical values.
        for (df, want) in [
            (1.0, 12.706_204_736),
            (2.0, 4.302_652_730),
            (4.0, 2.776_445_105),
            (9.0, 2.262_157_163),
            (29.0, 2.045_229_642),
        ] {
            let got = t_critical(0.05, df);
            assert!((got - want).abs() < 1e-6, "df {df}: {got} vs {want}");
        }
    }

    #[test]
    fn p_values_match_tables() {
        // scipy.stats.t.sf(t, df) * 2.
        for (t, df, want) in [
            (2.0, 4.0, 0.116_116_523_516),
            (1.0, 1.0, 0.5),
            (3.0, 10.0, 0.013_343_655_022),
            (0.0, 5.0, 1.0),
        ] {
            let got = t_two_sided_p(t, df);
            assert!((got - want).abs() < 1e-9, "t {t} df {df}: {got} vs {want}");
        }
    }

    #[test]
    fn paired_interval_by_hand() {
        // d = 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2*sqrt(3) = 3.4641, df 2.
        let p = paired(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((p.n, p.mean), (3, 2.0));
        let half = 4.302_652_730 / 3f64.sqrt();
        assert!((p.lo - (2.0 - half)).abs() < 1e-8 && (p.hi - (2.0 + half)).abs() < 1e-8);
        // scipy.stats.ttest_1samp([1, 2, 3], 0).pvalue = 0.07417990022744854
        assert!(
            (p.p.unwrap() - 0.074_179_900_227).abs() < 1e-10,
            "{:?}",
            p.p
        );
        assert_eq!(paired(&[0.5, 0.5]).unwrap().p, Some(0.0));
        assert_eq!(paired(&[0.0, 0.0]).unwrap().p, Some(1.0));
        assert_eq!(paired(&[1.0]).unwrap().p, None);
        assert!(paired(&[]).is_none());
    }

    #[test]
    fn holm_by_hand() {
        // m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5.
        let adj = holm(&[0.03, 0.5, 0.01, 0.02]);
        let want = [0.06, 0.5, 0.04, 0.06];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
    }

    #[test]
    fn ci95_matches_t_tables() {
        // n = 3, sd = 1: t_{0.975,2} / sqrt(3).
        let (m, h) = ci95(&[-1.0, 0.0, 1.0]).unwrap();
        assert_eq!(m, 0.0);
        assert!((h - 4.302_652_729_9 / 3f64.sqrt()).abs() < 1e-9, "{h}");
        // n = 2: sd = sqrt(2), so the half-width is t_{0.975,1} = 12.706.
        let (m, h) = ci95(&[1.0, 3.0]).unwrap();
        assert_eq!(m, 2.0);
        assert!((h - 12.706_204_7).abs() < 1e-6, "{h}");
        assert_eq!(ci95(&[5.0]), None);
        assert_eq!(ci95(&[]), None);
        assert_eq!(ci95(&[1.0, f64::NAN]), None);
        // Many degrees of freedom: t_{0.975,40} = 2.021075, t_{0.975,100} =
        // 1.983972, falling towards the normal quantile 1.959964.
        let t975 = |df: usize| t_critical(0.05, df as f64);
        assert!((t975(40) - 2.021_075).abs() < 2e-6, "{}", t975(40));
        assert!((t975(100) - 1.983_972).abs() < 2e-6, "{}", t975(100));
        assert!((t975(31) - 2.039_513).abs() < 2e-6, "{}", t975(31));
        assert!((1..200).all(|d| t975(d) > t975(d + 1)));
    }
}
