//! Confirmatory hypotheses: declared in a study file before its runs
//! (`[[hypotheses]]`), tested from the run records as one family.
//!
//! A hypothesis names the claim it tests (C1-C4 of STUDY.md), a task, a
//! measure ([`measures`]), the comparison (two configurations `[a, b]`, or
//! `[a]` against the task's baseline) and the direction of a − b it expects
//! (`greater`, `less` or `two-sided`), and says `why` it is there. With
//! `task_b`, b is read from that task instead: a comparison of two tasks of
//! one study (e.g. two pruning methods for the same optimizer, `[a]` then
//! meaning a in `task` − a in `task_b`), paired by seed like the others.
//!
//! The test ([`test_family`]): the differences a − b paired by seed (runs
//! both finished), their mean with a two-sided 95 % Student-t interval, and
//! the paired t-test's p-value, one-sided for a directional hypothesis.
//! Holm's adjustment runs over the study's declared hypotheses alone (a
//! hypothesis that cannot be tested counts with p = 1, so the family is the
//! one declared). Verdicts ([`Verdict`]): confirmed when the Holm-adjusted p
//! is below 0.05 with the mean in the declared direction; contradicted when
//! the 95 % interval excludes 0 on the other side; otherwise not decided at
//! the n the runs give.

use serde::{Deserialize, Serialize};

use super::record::{Group, StudyRecord};
use super::stats::{self, Paired};
use crate::bail_usage;

mod measures;
pub use measures::{Measure, functional_sparsity, measure, measures};

/// The family-wise error rate of a study's confirmatory family.
pub const ALPHA: f64 = 0.05;

/// One `[[hypotheses]]` entry of a study file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hypothesis {
    pub id: String,
    /// C1, C2, C3 or C4 (STUDY.md), optionally with a remedy letter, e.g.
    /// `C3(b)`.
    pub claim: String,
    pub task: String,
    /// A key of [`measures`].
    pub measure: String,
    /// `[a, b]`: a − b; `[a]`: a − the task's baseline.
    pub comparison: Vec<String>,
    /// `greater` (a − b > 0), `less` or `two-sided`.
    pub direction: String,
    /// The task of b when it is not `task`: a comparison across tasks of
    /// the same study (e.g. two pruning methods), paired by seed, as seeds
    /// share the initialisation and batch order across tasks of one model
    /// and data. With `[a]`, b is the configuration `a` of this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_b: Option<String>,
    /// Why the hypothesis is in the confirmatory family.
    pub why: String,
}

impl Hypothesis {
    /// What the hypothesis tests, as a short hex digest of its id, claim,
    /// task, measure, comparison and direction (not `why`, whose wording may
    /// change). Every run a study trains records the fingerprints of the
    /// hypotheses its file declares at that moment
    /// ([`super::record::StudyRun::declared`]), so a hypothesis whose
    /// fingerprint is in every record it is tested on was declared before
    /// those runs: confirmatory in substance, not only in form.
    pub fn fingerprint(&self) -> String {
        let mut text = [
            self.id.as_str(),
            &self.claim,
            &self.task,
            &self.measure,
            &self.comparison.join("\u{1f}"),
            &self.direction,
        ]
        .join("\u{1e}");
        // `task_b` changes what b is; appended only when set, so the
        // fingerprints of hypotheses without it stay what their records hold.
        if let Some(tb) = &self.task_b {
            text.push('\u{1e}');
            text.push_str(tb);
        }
        format!("{:016x}", crate::rng::fnv1a(text.as_bytes()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Greater,
    Less,
    TwoSided,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "greater" => Some(Self::Greater),
            "less" => Some(Self::Less),
            "two-sided" => Some(Self::TwoSided),
            _ => None,
        }
    }

    /// The sign of a − b the hypothesis expects (0 for two-sided).
    pub fn sign(self) -> f64 {
        match self {
            Self::Greater => 1.0,
            Self::Less => -1.0,
            Self::TwoSided => 0.0,
        }
    }

    /// `>`, `<` or `≠`, for tables.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Greater => ">",
            Self::Less => "<",
            Self::TwoSided => "≠",
        }
    }
}

/// Checks a study's hypotheses: `labels(task)` gives a task's
/// configuration labels (None for an unknown task), `baseline(task)` its
/// baseline. Errors are one line naming the file, the hypothesis and the key.
pub fn check(
    file: &str,
    hyps: &[Hypothesis],
    labels: impl Fn(&str) -> Option<Vec<String>>,
    baseline: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let mut ids = std::collections::BTreeSet::new();
    for h in hyps {
        let id = &h.id;
        if id.trim().is_empty() {
            bail_usage!("{file}: a [[hypotheses]] entry has an empty `id`; give each one an id");
        }
        if !ids.insert(id.as_str()) {
            bail_usage!("{file}: two hypotheses have the id `{id}`; give each its own");
        }
        let c = h.claim.as_str();
        let known_claim = ["C1", "C2", "C3", "C4"]
            .iter()
            .any(|k| c == *k || (c.starts_with(k) && c[2..].starts_with('(') && c.ends_with(')')));
        if !known_claim {
            bail_usage!(
                "{file}: hypothesis `{id}`: `claim` = \"{c}\" is not a claim of STUDY.md; use C1, C2, C3 or C4 (a remedy as C3(b))"
            );
        }
        let Some(task_labels) = labels(&h.task) else {
            bail_usage!(
                "{file}: hypothesis `{id}`: `task` = \"{}\" is not a task of the study",
                h.task
            );
        };
        if measure(&h.measure).is_none() {
            let keys: Vec<&str> = measures().iter().map(|m| m.key).collect();
            bail_usage!(
                "{file}: hypothesis `{id}`: `measure` = \"{}\" is not a measure; use one of {}",
                h.measure,
                keys.join(", ")
            );
        }
        let b_labels = match &h.task_b {
            None => task_labels.clone(),
            Some(tb) => match labels(tb) {
                Some(l) => l,
                None => bail_usage!(
                    "{file}: hypothesis `{id}`: `task_b` = \"{tb}\" is not a task of the study"
                ),
            },
        };
        let across = h.task_b.as_ref().is_some_and(|tb| *tb != h.task);
        match h.comparison.len() {
            1 if !across && baseline(&h.task).is_none() => bail_usage!(
                "{file}: hypothesis `{id}`: `comparison` names one configuration, but task `{}` has no baseline; name two",
                h.task
            ),
            1 | 2 => {}
            n => bail_usage!(
                "{file}: hypothesis `{id}`: `comparison` names {n} configurations; give [a, b] (a − b) or [a] (a − the baseline)"
            ),
        }
        let tb = h.task_b.as_deref().unwrap_or(&h.task);
        let sides: Vec<(&String, &Vec<String>, &str)> = match h.comparison.as_slice() {
            [a] if across => vec![(a, &task_labels, &h.task), (a, &b_labels, tb)],
            [a] => vec![(a, &task_labels, &h.task)],
            [a, b] => vec![(a, &task_labels, &h.task), (b, &b_labels, tb)],
            _ => vec![],
        };
        for (l, known, t) in sides {
            if !known.contains(l) {
                bail_usage!(
                    "{file}: hypothesis `{id}`: `comparison` names \"{l}\", which is not a configuration of task `{t}`"
                );
            }
        }
        if !across && h.comparison.len() == 2 && h.comparison[0] == h.comparison[1] {
            bail_usage!(
                "{file}: hypothesis `{id}`: `comparison` compares \"{}\" with itself",
                h.comparison[0]
            );
        }
        if Direction::parse(&h.direction).is_none() {
            bail_usage!(
                "{file}: hypothesis `{id}`: `direction` = \"{}\" is not one of greater, less, two-sided",
                h.direction
            );
        }
        if h.why.trim().is_empty() {
            bail_usage!(
                "{file}: hypothesis `{id}`: `why` is empty; say why it is in the confirmatory family"
            );
        }
    }
    Ok(())
}

/// How a hypothesis came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Confirmed,
    Contradicted,
    /// Neither, with this many pairs.
    NotDecided(usize),
    /// No finished pair of runs.
    NoRuns,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Confirmed => write!(f, "confirmed"),
            Self::Contradicted => write!(f, "contradicted"),
            Self::NotDecided(n) => write!(f, "not decided at n = {n}"),
            Self::NoRuns => write!(f, "no runs"),
        }
    }
}

/// One hypothesis tested.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub hypothesis: Hypothesis,
    /// a and b of a − b.
    pub a: String,
    pub b: String,
    pub direction: Direction,
    pub percent: bool,
    pub measure_name: &'static str,
    /// The model and data, e.g. "MNIST MLP" ([`setting`]).
    pub setting: String,
    pub paired: Option<Paired>,
    /// The test's p-value: one-sided in the declared direction, or
    /// two-sided.
    pub p: Option<f64>,
    /// Holm-adjusted over the family.
    pub p_holm: f64,
    pub verdict: Verdict,
    /// Whether every run the test used was trained after the hypothesis was
    /// declared, as it reads now ([`Hypothesis::fingerprint`]); false when no
    /// run was used.
    pub declared_before: bool,
}

impl Outcome {
    /// "+1.23 [+0.45, +2.01]" in percentage points for fractions.
    pub fn effect(&self) -> String {
        let Some(p) = &self.paired else {
            return "–".into();
        };
        let (k, d) = if self.percent { (100.0, 2) } else { (1.0, 4) };
        if p.lo.is_finite() && p.hi.is_finite() {
            format!("{:+.d$} [{:+.d$}, {:+.d$}]", k * p.mean, k * p.lo, k * p.hi)
        } else {
            format!("{:+.d$}", k * p.mean)
        }
    }

    /// The unit of [`Outcome::effect`] (none when there is no effect).
    pub fn unit(&self) -> &'static str {
        if self.percent && self.paired.is_some() {
            "pp"
        } else {
            ""
        }
    }

    /// The verdict, with the sign found when a two-sided hypothesis is
    /// confirmed: "confirmed (a − b < 0)".
    pub fn verdict_text(&self) -> String {
        match (self.verdict, self.direction, &self.paired) {
            (Verdict::Confirmed, Direction::TwoSided, Some(p)) => format!(
                "confirmed (a − b {} 0)",
                if p.mean < 0.0 { "<" } else { ">" }
            ),
            (v, _, _) => v.to_string(),
        }
    }
}

/// The setting of a group's runs for summary tables: "MNIST MLP",
/// "Fashion-MNIST MLP", "CNN" (two conv blocks; "CNN (7 conv)" for
/// another depth), "Transformer" (character-level text) or "Transformer
/// (modadd)".
pub fn setting(r: &StudyRecord) -> String {
    let data = r.config.data.name();
    match &r.config.model {
        crate::models::ModelConfig::Cnn(c) if c.channels.len() == 2 => "CNN".into(),
        crate::models::ModelConfig::Cnn(c) => format!("CNN ({} conv)", c.channels.len()),
        m => match m.name() {
            "mlp" => match data {
                "mnist" => "MNIST MLP".into(),
                "fashion-mnist" => "Fashion-MNIST MLP".into(),
                d => format!("MLP ({d})"),
            },
            "transformer" if data == "text" => "Transformer".into(),
            "transformer" => format!("Transformer ({data})"),
            m => format!("{m} ({data})"),
        },
    }
}

/// The one-sided p-value of a paired test in direction `sign` (+1: the
/// mean is expected > 0), from its two-sided p and its mean; the two-sided
/// p itself for `sign` 0.
pub fn directional_p(two_sided: f64, mean: f64, sign: f64) -> f64 {
    if sign == 0.0 {
        two_sided
    } else if mean * sign > 0.0 {
        two_sided / 2.0
    } else {
        1.0 - two_sided / 2.0
    }
}

/// A p-value for tables: three decimals, or "< 0.001".
pub fn p_text(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// The verdict of a test: see the module's rules.
pub fn verdict(p: Option<&Paired>, p_holm: f64, direction: Direction) -> Verdict {
    let Some(p) = p else {
        return Verdict::NoRuns;
    };
    let sign = direction.sign();
    let in_direction = sign == 0.0 || p.mean * sign > 0.0;
    if p.p.is_some() && p_holm < ALPHA && in_direction {
        return Verdict::Confirmed;
    }
    if sign != 0.0 && p.lo.is_finite() && p.hi.is_finite() {
        let against = if sign > 0.0 { p.hi < 0.0 } else { p.lo > 0.0 };
        if against {
            return Verdict::Contradicted;
        }
    }
    Verdict::NotDecided(p.n)
}

/// Tests a study's hypotheses on its groups of runs (the report's
/// grouping), Holm over the family. `baselines`: (task, baseline label).
pub fn test_family(
    hyps: &[Hypothesis],
    groups: &[Group],
    baselines: &[(String, String)],
) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = hyps
        .iter()
        .map(|h| {
            let a = h.comparison[0].clone();
            let tb = h.task_b.clone().unwrap_or_else(|| h.task.clone());
            let across = tb != h.task;
            let b = h.comparison.get(1).cloned().unwrap_or_else(|| {
                if across {
                    return a.clone();
                }
                baselines
                    .iter()
                    .find(|(t, _)| *t == h.task)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default()
            });
            let direction = Direction::parse(&h.direction).unwrap_or(Direction::TwoSided);
            let m = measure(&h.measure);
            let find = |t: &str, l: &str| groups.iter().find(|g| g.task == t && g.label == l);
            let (ga, gb) = (find(&h.task, &a), find(&tb, &b));
            let setting = ga
                .or(gb)
                .and_then(|g| g.runs.first())
                .map(setting)
                .unwrap_or_default();
            let fingerprint = h.fingerprint();
            let declared = |r: &StudyRecord| {
                r.study
                    .as_ref()
                    .is_some_and(|s| s.declared.contains(&fingerprint))
            };
            let (d, before): (Vec<f64>, Vec<bool>) = match (&m, ga, gb) {
                (Some(m), Some(ga), Some(gb)) => ga
                    .done()
                    .filter_map(|r| {
                        let rb = gb.done().find(|x| x.seed == r.seed)?;
                        let d = (m.get)(r)? - (m.get)(rb)?;
                        Some((d, declared(r) && declared(rb)))
                    })
                    .unzip(),
                _ => (vec![], vec![]),
            };
            let declared_before = !before.is_empty() && before.iter().all(|&b| b);
            let paired = stats::paired(&d);
            let p = paired
                .as_ref()
                .and_then(|q| q.p.map(|two| directional_p(two, q.mean, direction.sign())));
            // Across tasks, each side names its task: "Adam (imp 90)".
            let (a, b) = if across {
                (format!("{a} ({})", h.task), format!("{b} ({tb})"))
            } else {
                (a, b)
            };
            Outcome {
                hypothesis: h.clone(),
                a,
                b,
                direction,
                percent: m.as_ref().is_some_and(|m| m.percent),
                measure_name: m.as_ref().map_or("?", |m| m.name),
                setting,
                paired,
                p,
                p_holm: 1.0,
                verdict: Verdict::NoRuns,
                declared_before,
            }
        })
        .collect();
    let ps: Vec<f64> = out.iter().map(|o| o.p.unwrap_or(1.0)).collect();
    for (o, adj) in out.iter_mut().zip(stats::holm(&ps)) {
        o.p_holm = adj;
        o.verdict = verdict(o.paired.as_ref(), adj, o.direction);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyp(id: &str) -> Hypothesis {
        Hypothesis {
            id: id.into(),
            claim: "C1".into(),
            task: "t".into(),
            measure: "shrinkage_0.01".into(),
            comparison: vec!["Adam".into(), "SGD".into()],
            direction: "less".into(),
            task_b: None,
            why: "the claim itself".into(),
        }
    }

    fn check_one(h: Hypothesis) -> String {
        let labels = |t: &str| (t == "t").then(|| vec!["Adam".to_string(), "SGD".to_string()]);
        let base = |_: &str| None;
        match check("s.toml", &[h], labels, base) {
            Ok(()) => String::new(),
            Err(e) => {
                assert!(crate::error::is_usage(&e));
                format!("{e:#}")
            }
        }
    }

    #[test]
    fn bad_declarations_name_the_hypothesis_and_the_key() {
        assert_eq!(check_one(hyp("h1")), "");
        let mut h = hyp("h1");
        h.task = "nope".into();
        assert!(check_one(h).contains("hypothesis `h1`: `task`"));
        let mut h = hyp("h2");
        h.measure = "sparsity".into();
        let e = check_one(h);
        assert!(
            e.contains("hypothesis `h2`: `measure`") && e.contains("shrinkage_0.1"),
            "{e}"
        );
        let mut h = hyp("h3");
        h.comparison = vec!["Adam".into(), "Lion".into()];
        assert!(check_one(h).contains("hypothesis `h3`: `comparison` names \"Lion\""));
        let mut h = hyp("h4");
        h.comparison = vec!["Adam".into()];
        assert!(check_one(h).contains("has no baseline"));
        let mut h = hyp("h5");
        h.direction = "up".into();
        assert!(check_one(h).contains("hypothesis `h5`: `direction`"));
        let mut h = hyp("h6");
        h.claim = "C7".into();
        assert!(check_one(h).contains("hypothesis `h6`: `claim`"));
        let mut h = hyp("h7");
        h.claim = "C3(b)".into();
        assert_eq!(check_one(h), "");
        let mut h = hyp("h8");
        h.why = " ".into();
        assert!(check_one(h).contains("hypothesis `h8`: `why`"));
        let labels = |_: &str| Some(vec!["Adam".to_string(), "SGD".to_string()]);
        let e = check("s.toml", &[hyp("x"), hyp("x")], labels, |_: &str| None).unwrap_err();
        assert!(format!("{e}").contains("two hypotheses have the id `x`"));
    }

    #[test]
    fn the_fingerprint_follows_what_is_tested_not_why() {
        let h = hyp("f");
        let mut reworded = h.clone();
        reworded.why = "another reason".into();
        assert_eq!(h.fingerprint(), reworded.fingerprint());
        let mut other_task = h.clone();
        other_task.task_b = Some("u".into());
        assert_ne!(h.fingerprint(), other_task.fingerprint());
        let mut other_measure = h.clone();
        other_measure.measure = "shrinkage_0.1".into();
        assert_ne!(h.fingerprint(), other_measure.fingerprint());
    }

    #[test]
    fn comparisons_across_tasks_are_checked_against_each_task() {
        let labels = |t: &str| match t {
            "t" => Some(vec!["Adam".to_string(), "SGD".to_string()]),
            "u" => Some(vec!["Adam".to_string()]),
            _ => None,
        };
        let run = |h: Hypothesis| match check("s.toml", &[h], labels, |_: &str| None) {
            Ok(()) => String::new(),
            Err(e) => format!("{e:#}"),
        };
        // [a] across tasks: a in `task` against a in `task_b`; no baseline
        // needed, and "Adam" against "Adam" is not a comparison with itself.
        let mut h = hyp("x1");
        h.task_b = Some("u".into());
        h.comparison = vec!["Adam".into()];
        assert_eq!(run(h.clone()), "");
        h.comparison = vec!["Adam".into(), "Adam".into()];
        assert_eq!(run(h.clone()), "");
        // b is looked up in task_b, which has no SGD.
        h.comparison = vec!["Adam".into(), "SGD".into()];
        assert!(
            run(h.clone()).contains("names \"SGD\", which is not a configuration of task `u`"),
            "{}",
            run(h)
        );
        let mut h = hyp("x2");
        h.task_b = Some("nope".into());
        assert!(run(h).contains("hypothesis `x2`: `task_b` = \"nope\" is not a task"));
        // task_b equal to task is the plain comparison.
        let mut h = hyp("x3");
        h.task_b = Some("t".into());
        h.comparison = vec!["Adam".into(), "Adam".into()];
        assert!(run(h).contains("with itself"));
    }

    /// Groups of one task and label whose runs (seeds 0 and 1, from the
    /// committed smoke study) have the given test accuracies.
    fn group(task: &str, label: &str, accs: [f64; 2]) -> Group {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/smoke/runs/");
        let runs = [
            "teacher--adam--s0--2d97402b.json",
            "teacher--adam--s1--2d9b2fce.json",
        ]
        .iter()
        .zip(accs)
        .map(|(f, acc)| {
            let text = std::fs::read_to_string(format!("{dir}{f}")).unwrap();
            let mut r: StudyRecord = serde_json::from_str(&text).unwrap();
            r.run.r#final.as_mut().unwrap().test_acc = acc;
            r
        })
        .collect();
        Group {
            task: task.into(),
            label: label.into(),
            order: (0, 0),
            optimizer: "adam".into(),
            runs,
        }
    }

    #[test]
    fn across_tasks_pairs_the_same_seeds_of_two_tasks() {
        let groups = vec![
            group("t", "Adam", [0.90, 0.80]),
            group("t", "SGD", [0.50, 0.50]),
            group("u", "Adam", [0.85, 0.78]),
        ];
        let mut h = hyp("x");
        h.measure = "test_acc".into();
        h.comparison = vec!["Adam".into()];
        h.task_b = Some("u".into());
        h.direction = "greater".into();
        let baselines = vec![("t".to_string(), "SGD".to_string())];
        let o = &test_family(&[h.clone()], &groups, &baselines)[0];
        // d = 0.90 - 0.85, 0.80 - 0.78: not the baseline SGD of task t.
        assert_eq!((o.a.as_str(), o.b.as_str()), ("Adam (t)", "Adam (u)"));
        let p = o.paired.as_ref().unwrap();
        assert_eq!(p.n, 2);
        assert!((p.mean - 0.035).abs() < 1e-12, "{p:?}");
        // Without task_b, [a] is against the task's baseline.
        h.task_b = None;
        let o = &test_family(&[h], &groups, &baselines)[0];
        assert_eq!((o.a.as_str(), o.b.as_str()), ("Adam", "SGD"));
        assert!((o.paired.as_ref().unwrap().mean - 0.35).abs() < 1e-12);
    }

    #[test]
    fn one_sided_p_and_verdicts_by_hand() {
        // d = 1, 2, 3: two-sided p = 0.0741799 (scipy ttest_1samp).
        let p = stats::paired(&[1.0, 2.0, 3.0]).unwrap();
        let two = p.p.unwrap();
        assert!((directional_p(two, p.mean, 1.0) - 0.037_089_950_114).abs() < 1e-10);
        assert!((directional_p(two, p.mean, -1.0) - (1.0 - 0.037_089_950_114)).abs() < 1e-10);
        assert_eq!(directional_p(two, p.mean, 0.0), two);
        // Alone in its family (Holm = the p itself): confirmed one-sided
        // (0.037 < 0.05) though the two-sided test would not be.
        assert_eq!(
            verdict(
                Some(&p),
                directional_p(two, p.mean, 1.0),
                Direction::Greater
            ),
            Verdict::Confirmed
        );
        assert_eq!(
            verdict(Some(&p), two, Direction::TwoSided),
            Verdict::NotDecided(3)
        );
        // Declared `less`: the interval [-0.48, +4.48] holds 0, so not
        // contradicted; d = 0.9, 1, 1.1 gives [+0.75, +1.25]: contradicted.
        assert!(p.lo < 0.0);
        assert_eq!(
            verdict(Some(&p), directional_p(two, p.mean, -1.0), Direction::Less),
            Verdict::NotDecided(3)
        );
        let q = stats::paired(&[0.9, 1.0, 1.1]).unwrap();
        assert!(q.lo > 0.7 && q.hi < 1.3, "{q:?}");
        let pq = directional_p(q.p.unwrap(), q.mean, -1.0);
        assert!(pq > 0.99);
        assert_eq!(
            verdict(Some(&q), pq, Direction::Less),
            Verdict::Contradicted
        );
        // In a family of four, Holm multiplies the smallest p by 4: 0.148.
        assert_eq!(
            verdict(Some(&p), 4.0 * 0.037, Direction::Greater),
            Verdict::NotDecided(3)
        );
        assert_eq!(verdict(None, 1.0, Direction::Less), Verdict::NoRuns);
        // One pair: no test, no interval.
        let one = stats::paired(&[5.0]).unwrap();
        assert_eq!(
            verdict(Some(&one), 1.0, Direction::Less),
            Verdict::NotDecided(1)
        );
        assert_eq!(Verdict::NotDecided(5).to_string(), "not decided at n = 5");
    }
}
