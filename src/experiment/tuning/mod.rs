//! Choosing a learning rate from an lr-grid study, and saying how sure the
//! choice is.
//!
//! A study that declares `[tuning]` (a [`Tuning`]) runs each configuration
//! over a grid of learning rates (`lrs`) and several seeds, evaluated on
//! held-out training data. For every task and configuration the report
//! then takes, per learning rate, a [`Criterion`] of each run, its mean over
//! seeds and the standard error of that mean; the winner is the learning
//! rate with the best mean among those where every seed finished. Its
//! margin over each neighbouring learning rate on the grid is the mean of
//! the differences paired by seed (seeds share the initialisation and the
//! batch order across learning rates), with the standard error of that
//! mean; a margin smaller than [`NOISE_SES`] standard errors is *within
//! noise*, and the tables say so.
//!
//! One seed's last evaluation cannot rank learning rates: at a constant
//! learning rate the final iterate swings by several points from one
//! evaluation to the next (SGD at lr 0.3 on the Fashion-MNIST MLP: 74.8,
//! 84.5, 82.4, 84.9, 86.4 % after epochs 1-5). The default criterion,
//! [`Criterion::LastEpochAccuracy`], averages the evaluations of the last
//! epoch, a sample of the final iterate's accuracy at the same learning
//! rate, and the seeds average the rest.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::record::Group;
use super::stats::{mean_std, t_critical};
use crate::train::{RunRecord, Status};

/// A winner's margin over a neighbour is within noise below this many
/// standard errors of the paired difference.
pub const NOISE_SES: f64 = 2.0;

/// What a tuning study ranks learning rates by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// The mean held-out accuracy over the evaluations after the start of
    /// the last epoch (with `eval_every` a quarter epoch: five of them,
    /// the end of training included).
    #[default]
    LastEpochAccuracy,
    /// The held-out accuracy at the last evaluation (one number a run).
    FinalAccuracy,
}

impl Criterion {
    /// The criterion of one run; None unless the run finished with at least
    /// one evaluation after step 0.
    pub fn value(self, r: &RunRecord) -> Option<f64> {
        if r.status != Status::Done {
            return None;
        }
        let evals: Vec<_> = r.history.iter().filter(|p| p.step > 0).collect();
        let last = evals.last()?;
        let v = match self {
            Criterion::FinalAccuracy => last.test_acc,
            Criterion::LastEpochAccuracy => {
                let from = last.epoch - 1.0;
                let xs: Vec<f64> = evals
                    .iter()
                    .filter(|p| p.epoch > from + 1e-9)
                    .map(|p| p.test_acc)
                    .collect();
                mean_std(&xs)?.0
            }
        };
        v.is_finite().then_some(v)
    }

    /// Both criteria are accuracies.
    pub fn higher_is_better(self) -> bool {
        true
    }

    /// What the criterion is, for a table's caption.
    pub fn describe(self) -> &'static str {
        match self {
            Criterion::LastEpochAccuracy => {
                "the mean held-out accuracy over the evaluations in the last epoch"
            }
            Criterion::FinalAccuracy => "the held-out accuracy at the last evaluation",
        }
    }
}

/// A study's `[tuning]` section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    #[serde(default)]
    pub criterion: Criterion,
}

/// One run's criterion, with its place in the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub task: String,
    /// The configuration's label without its ` lr=...` suffix.
    pub config: String,
    pub lr: f64,
    pub seed: u64,
    /// None for a run that diverged, failed or has no evaluation.
    pub value: Option<f64>,
}

/// The label of an lr-grid row without its ` lr=...` suffix.
pub fn base_label(label: &str) -> &str {
    label.rsplit_once(" lr=").map_or(label, |(b, _)| b)
}

/// Every run of `groups` as a [`Sample`], in the groups' order.
pub fn samples(groups: &[Group], c: Criterion) -> Vec<Sample> {
    groups
        .iter()
        .flat_map(|g| {
            g.runs.iter().map(move |r| Sample {
                task: g.task.clone(),
                config: base_label(&g.label).to_string(),
                lr: r.config.optimizer.lr(),
                seed: r.seed,
                value: c.value(r),
            })
        })
        .collect()
}

/// One learning rate of a configuration's grid.
#[derive(Clone, Debug, PartialEq)]
pub struct LrPoint {
    pub lr: f64,
    /// The criterion per finished seed.
    pub by_seed: BTreeMap<u64, f64>,
    /// Runs that did not finish (diverged, failed, no evaluation).
    pub unfinished: usize,
}

impl LrPoint {
    /// Mean over seeds and its standard error (sd / √n; None for one seed).
    pub fn mean_se(&self) -> Option<(f64, Option<f64>)> {
        let xs: Vec<f64> = self.by_seed.values().copied().collect();
        let (m, sd) = mean_std(&xs)?;
        Some((m, (xs.len() > 1).then(|| sd / (xs.len() as f64).sqrt())))
    }

    /// The half-width of the 95 % confidence interval of the mean.
    pub fn ci95_half(&self) -> Option<f64> {
        let (_, se) = self.mean_se()?;
        Some(t_critical(0.05, (self.by_seed.len() - 1) as f64) * se?)
    }

    /// Every run finished: the learning rate can win.
    pub fn eligible(&self) -> bool {
        self.unfinished == 0 && !self.by_seed.is_empty()
    }
}

/// The paired difference winner − other (in the criterion's better
/// direction: positive when the winner is better) over their shared seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Margin {
    pub lr: f64,
    pub n: usize,
    pub mean: f64,
    /// None for fewer than two shared seeds.
    pub se: Option<f64>,
}

impl Margin {
    /// Smaller than [`NOISE_SES`] standard errors (or no SE to tell).
    pub fn within_noise(&self) -> bool {
        self.se.is_none_or(|se| self.mean < NOISE_SES * se)
    }
}

/// How the winner compares with one neighbouring learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Neighbour {
    /// The winner is at this end of the grid.
    Edge,
    /// Some seed of the neighbour did not finish (diverged or failed).
    Unfinished {
        lr: f64,
    },
    Margin(Margin),
}

/// A configuration's lr curve and its winner.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub task: String,
    pub config: String,
    /// Sorted by learning rate.
    pub points: Vec<LrPoint>,
    /// Index into `points`; None when no learning rate finished every seed.
    pub winner: Option<usize>,
    pub below: Neighbour,
    pub above: Neighbour,
}

impl Choice {
    /// The winning learning rate.
    pub fn lr(&self) -> Option<f64> {
        self.winner.map(|w| self.points[w].lr)
    }

    /// A neighbour's margin is within noise (or the grid could not say).
    pub fn within_noise(&self) -> bool {
        [self.below, self.above]
            .iter()
            .any(|n| matches!(n, Neighbour::Margin(m) if m.within_noise()))
    }

    /// The paired margin of the winner over the learning rate at `i`.
    pub fn margin_over(&self, i: usize, higher_better: bool) -> Option<Margin> {
        let w = &self.points[self.winner?];
        let o = &self.points[i];
        let sign = if higher_better { 1.0 } else { -1.0 };
        let d: Vec<f64> = w
            .by_seed
            .iter()
            .filter_map(|(s, a)| o.by_seed.get(s).map(|b| sign * (a - b)))
            .collect();
        let (mean, sd) = mean_std(&d)?;
        Some(Margin {
            lr: o.lr,
            n: d.len(),
            mean,
            se: (d.len() > 1).then(|| sd / (d.len() as f64).sqrt()),
        })
    }
}

/// Per task and configuration (in first-seen order), the lr curve, the
/// winner (the best mean among learning rates where every run finished;
/// the smaller lr on a tie) and its margins over the grid neighbours.
pub fn choose(samples: &[Sample], higher_better: bool) -> Vec<Choice> {
    let mut out: Vec<Choice> = vec![];
    for s in samples {
        let i = match out
            .iter()
            .position(|c| c.task == s.task && c.config == s.config)
        {
            Some(i) => i,
            None => {
                out.push(Choice {
                    task: s.task.clone(),
                    config: s.config.clone(),
                    points: vec![],
                    winner: None,
                    below: Neighbour::Edge,
                    above: Neighbour::Edge,
                });
                out.len() - 1
            }
        };
        let pts = &mut out[i].points;
        let j = match pts.iter().position(|p| p.lr == s.lr) {
            Some(j) => j,
            None => {
                pts.push(LrPoint {
                    lr: s.lr,
                    by_seed: BTreeMap::new(),
                    unfinished: 0,
                });
                pts.len() - 1
            }
        };
        match s.value {
            Some(v) => {
                pts[j].by_seed.insert(s.seed, v);
            }
            None => pts[j].unfinished += 1,
        }
    }
    let sign = if higher_better { 1.0 } else { -1.0 };
    for c in &mut out {
        c.points.sort_by(|a, b| a.lr.total_cmp(&b.lr));
        c.winner = c
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.eligible())
            .filter_map(|(i, p)| Some((i, sign * p.mean_se()?.0)))
            .fold(None, |best: Option<(usize, f64)>, (i, v)| match best {
                Some((_, b)) if b >= v => best,
                _ => Some((i, v)),
            })
            .map(|(i, _)| i);
        if let Some(w) = c.winner {
            let neighbour = |i: Option<usize>| match i {
                None => Neighbour::Edge,
                Some(i) if !c.points[i].eligible() => Neighbour::Unfinished { lr: c.points[i].lr },
                Some(i) => c.margin_over(i, higher_better).map_or(
                    Neighbour::Unfinished { lr: c.points[i].lr },
                    Neighbour::Margin,
                ),
            };
            let (b, a) = (
                neighbour(w.checked_sub(1)),
                neighbour((w + 1 < c.points.len()).then_some(w + 1)),
            );
            c.below = b;
            c.above = a;
        }
    }
    out
}

/// A learning rate as the study file writes it.
pub fn fmt_lr(lr: f64) -> String {
    let s = format!("{lr}");
    if s.contains('e') || s.len() <= 8 {
        s
    } else {
        format!("{lr:e}")
    }
}

/// `x ± se` in points of percentage (the criterion is a fraction).
fn pp(m: f64, se: Option<f64>) -> String {
    match se {
        Some(se) => format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * se),
        None => format!("{:.2}", 100.0 * m),
    }
}

fn neighbour_cell(n: &Neighbour) -> String {
    match n {
        Neighbour::Edge => "(edge of the grid)".into(),
        Neighbour::Unfinished { lr } => format!("{}: did not finish", fmt_lr(*lr)),
        Neighbour::Margin(m) => {
            let s = format!(
                "{}: {}{}",
                fmt_lr(m.lr),
                if m.mean >= 0.0 { "+" } else { "" },
                pp(m.mean, m.se)
            );
            if m.within_noise() {
                format!("{s} (within noise)")
            } else {
                s
            }
        }
    }
}

/// The markdown section: per task, one row per configuration with its
/// winner, the criterion there (mean ± SE over seeds) and the margins.
pub fn markdown(choices: &[Choice], c: Criterion) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Learning-rate choice\n");
    let _ = writeln!(
        out,
        "Criterion: {}, per run; per learning rate its mean over seeds ± the standard error (SE) of that mean, in %. \
         The winner has the best mean among the learning rates where every seed finished. \
         Margin: the winner's criterion minus its grid neighbour's, paired by seed, mean ± SE of the paired differences, \
         in points (positive: the winner is better); *within noise* when it is smaller than {NOISE_SES} SE. \
         Every learning rate is in `tuning.csv`.\n",
        c.describe()
    );
    let mut tasks: Vec<&str> = vec![];
    for ch in choices {
        if !tasks.contains(&ch.task.as_str()) {
            tasks.push(&ch.task);
        }
    }
    for t in tasks {
        let _ = writeln!(out, "### {t}\n");
        let _ = writeln!(
            out,
            "| configuration | lr | criterion % | seeds | margin over the lower lr | margin over the higher lr |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
        for ch in choices.iter().filter(|c| c.task == t) {
            match ch.winner {
                None => {
                    let _ = writeln!(
                        out,
                        "| {} | – | no learning rate finished every seed | – | – | – |",
                        ch.config
                    );
                }
                Some(w) => {
                    let p = &ch.points[w];
                    let (m, se) = p.mean_se().expect("an eligible point has values");
                    let _ = writeln!(
                        out,
                        "| {}{} | {} | {} | {} | {} | {} |",
                        ch.config,
                        if ch.within_noise() { " ‡" } else { "" },
                        fmt_lr(p.lr),
                        pp(m, se),
                        p.by_seed.len(),
                        neighbour_cell(&ch.below),
                        neighbour_cell(&ch.above),
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\n‡: the winner's margin over a neighbouring learning rate is within noise.\n"
        );
        let _ = writeln!(
            out,
            "![lr curves of {t}](plots/{}-lr-curve.svg)\n",
            crate::io::slug(t)
        );
    }
    out
}

/// `report` with `section` inserted before its first task (its first `## `
/// heading), or at the end when it has none.
pub fn insert_section(report: &str, section: &str) -> String {
    match report.find("\n## ") {
        Some(i) => format!("{}{section}{}", &report[..i + 1], &report[i + 1..]),
        None => format!("{report}\n{section}"),
    }
}

/// Every learning rate of every curve: the criterion's mean, SE and 95 %
/// CI half-width over seeds, whether it won, and the winner's paired margin
/// over it (mean and SE; empty for the winner itself).
pub fn csv(choices: &[Choice], higher_better: bool) -> String {
    let mut out = String::from(
        "task,configuration,lr,seeds,unfinished,criterion_mean,criterion_se,criterion_ci95_half,winner,margin_mean,margin_se,within_noise\n",
    );
    let f = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for ch in choices {
        for (i, p) in ch.points.iter().enumerate() {
            let ms = p.mean_se();
            let margin = (ch.winner != Some(i))
                .then(|| ch.margin_over(i, higher_better))
                .flatten();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{}",
                ch.task,
                ch.config,
                fmt_lr(p.lr),
                p.by_seed.len(),
                p.unfinished,
                f(ms.map(|m| m.0)),
                f(ms.and_then(|m| m.1)),
                f(p.ci95_half()),
                u8::from(ch.winner == Some(i)),
                f(margin.map(|m| m.mean)),
                f(margin.and_then(|m| m.se)),
                margin.map_or(String::new(), |m| u8::from(m.within_noise()).to_string()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
