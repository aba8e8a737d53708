//! Tasks that need no download: a planted sparse teacher and modular
//! addition. The task itself is fixed by its own `seed` (default 0), so that
//! runs with different training seeds see the same data.

use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, Split, Task};
use crate::bail_usage;
use crate::rng::Rng;

/// A random sparse MLP `inputs -> hidden (ReLU) -> classes` labels standard
/// normal inputs with its argmax, so the sparsity of a perfect solution is
/// known: a fraction `1 - density` of the teacher's weights are exactly zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherConfig {
    pub inputs: usize,
    pub hidden: usize,
    pub classes: usize,
    /// Fraction of the teacher's weights that are non-zero.
    pub density: f64,
    pub train_size: usize,
    pub test_size: usize,
    pub seed: u64,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            inputs: 64,
            hidden: 32,
            classes: 10,
            density: 0.1,
            train_size: 20_000,
            test_size: 5_000,
            seed: 0,
        }
    }
}

/// Checks a teacher's settings without generating anything.
pub fn check_teacher(c: &TeacherConfig) -> Result<()> {
    if !(c.density > 0.0 && c.density <= 1.0) {
        bail_usage!("teacher: `density` must be in (0, 1], got {}", c.density);
    }
    for (key, v) in [
        ("inputs", c.inputs),
        ("hidden", c.hidden),
        ("train_size", c.train_size),
        ("test_size", c.test_size),
    ] {
        if v == 0 {
            bail_usage!("teacher: `{key}` must be > 0, got 0");
        }
    }
    if c.classes < 2 {
        bail_usage!("teacher: `classes` must be >= 2, got {}", c.classes);
    }
    Ok(())
}

pub fn teacher(c: &TeacherConfig, _run_seed: u64) -> Result<Dataset> {
    check_teacher(c)?;
    let mut rng = Rng::derive(c.seed, "teacher");
    let sparse = |rows: usize, cols: usize, rng: &mut Rng| -> Vec<f64> {
        // Scale so that pre-activations have unit variance.
        let scale = (1.0 / (c.density * cols as f64)).sqrt();
        (0..rows * cols)
            .map(|_| {
                if rng.uniform() < c.density {
                    rng.normal() * scale
                } else {
                    0.0
                }
            })
            .collect()
    };
    let w1 = sparse(c.hidden, c.inputs, &mut rng);
    let w2 = sparse(c.classes, c.hidden, &mut rng);
    let zeros = w1.iter().chain(&w2).filter(|w| **w == 0.0).count();
    let zero_frac = zeros as f64 / (w1.len() + w2.len()) as f64;
    let mut make = |n: usize| -> Result<Split> {
        let mut xs = Vec::with_capacity(n * c.inputs);
        let mut ys = Vec::with_capacity(n);
        for _ in 0..n {
            let x: Vec<f64> = (0..c.inputs).map(|_| rng.normal()).collect();
            let h: Vec<f64> = (0..c.hidden)
                .map(|j| {
                    (0..c.inputs)
                        .map(|i| w1[j * c.inputs + i] * x[i])
                        .sum::<f64>()
                        .max(0.0)
                })
                .collect();
            let logits = (0..c.classes).map(|k| {
                (0..c.hidden)
                    .map(|j| w2[k * c.hidden + j] * h[j])
                    .sum::<f64>()
            });
            let label = logits
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (k, v)| {
                    if v > best.1 { (k, v) } else { best }
                })
                .0;
            xs.extend(x.iter().map(|v| *v as f32));
            ys.push(label as u32);
        }
        Ok(Split::Examples {
            x: Tensor::from_vec(xs, (n, c.inputs), &Device::Cpu)?,
            y: Tensor::from_vec(ys, n, &Device::Cpu)?,
        })
    };
    let train = make(c.train_size)?;
    let test = make(c.test_size)?;
    Ok(Dataset {
        name: "teacher".into(),
        task: Task::Classify {
            inputs: c.inputs,
            classes: c.classes,
        },
        train,
        test,
        location: None,
        description: format!(
            "generated: sparse teacher {}-{}-{}, {:.1}% of its weights exactly zero",
            c.inputs,
            c.hidden,
            c.classes,
            100.0 * zero_frac
        ),
    })
}

/// `a + b = c (mod modulus)`: sequences `[a, +, b, =]`, target `c`. All
/// modulus^2 pairs, split at random into train and held-out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModAddConfig {
    pub modulus: u32,
    /// Fraction of the pairs used for training.
    pub train_frac: f64,
    pub seed: u64,
}

impl Default for ModAddConfig {
    fn default() -> Self {
        Self {
            modulus: 97,
            train_frac: 0.5,
            seed: 0,
        }
    }
}

/// Checks the settings without generating anything: both splits must hold
/// at least one pair.
pub fn check_modadd(c: &ModAddConfig) -> Result<()> {
    let p = c.modulus;
    if p < 2 {
        bail_usage!("modadd: `modulus` must be >= 2, got {p}");
    }
    if !(c.train_frac > 0.0 && c.train_frac < 1.0) {
        bail_usage!(
            "modadd: `train_frac` must be in (0, 1), got {}",
            c.train_frac
        );
    }
    let pairs = p as f64 * p as f64;
    let n_train = (pairs * c.train_frac).round();
    if n_train < 1.0 || n_train >= pairs {
        bail_usage!(
            "modadd: train_frac {} of {pairs} pairs leaves {} split empty; choose a train_frac nearer 0.5 or a larger modulus",
            c.train_frac,
            if n_train < 1.0 {
                "the training"
            } else {
                "the held-out"
            }
        );
    }
    Ok(())
}

pub fn modadd(c: &ModAddConfig, _run_seed: u64) -> Result<Dataset> {
    check_modadd(c)?;
    let p = c.modulus;
    let mut pairs: Vec<(u32, u32)> = (0..p).flat_map(|a| (0..p).map(move |b| (a, b))).collect();
    Rng::derive(c.seed, "modadd").shuffle(&mut pairs);
    let n_train = ((pairs.len() as f64) * c.train_frac).round() as usize;
    let (plus, eq) = (p, p + 1);
    let make = |ps: &[(u32, u32)]| -> Result<Split> {
        let x: Vec<u32> = ps.iter().flat_map(|&(a, b)| [a, plus, b, eq]).collect();
        let y: Vec<u32> = ps.iter().map(|&(a, b)| (a + b) % p).collect();
        Ok(Split::Examples {
            x: Tensor::from_vec(x, (ps.len(), 4), &Device::Cpu)?,
            y: Tensor::from_vec(y, ps.len(), &Device::Cpu)?,
        })
    };
    Ok(Dataset {
        name: "modadd".into(),
        task: Task::LastToken {
            vocab: p as usize + 2,
            len: 4,
        },
        train: make(&pairs[..n_train])?,
        test: make(&pairs[n_train..])?,
        description: format!("generated: a + b mod {p}, {n_train} training pairs"),
        location: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_is_deterministic_and_sparse() {
        let c = TeacherConfig {
            train_size: 200,
            test_size: 50,
            ..Default::default()
        };
        let a = teacher(&c, 1).unwrap();
        let b = teacher(&c, 2).unwrap();
        let (Split::Examples { y: ya, .. }, Split::Examples { y: yb, .. }) = (&a.train, &b.train)
        else {
            panic!()
        };
        assert_eq!(ya.to_vec1::<u32>().unwrap(), yb.to_vec1::<u32>().unwrap());
        // Labels use several classes.
        let mut seen = ya.to_vec1::<u32>().unwrap();
        seen.sort();
        seen.dedup();
        assert!(seen.len() >= 5, "{seen:?}");
        assert!(a.description.contains("exactly zero"));
    }

    #[test]
    fn modadd_targets_are_sums_and_splits_partition_all_pairs() {
        let c = ModAddConfig {
            modulus: 7,
            train_frac: 0.5,
            seed: 3,
        };
        let d = modadd(&c, 0).unwrap();
        let mut all = vec![];
        for s in [&d.train, &d.test] {
            let Split::Examples { x, y } = s else {
                panic!()
            };
            let x = x.to_vec2::<u32>().unwrap();
            let y = y.to_vec1::<u32>().unwrap();
            for (row, t) in x.iter().zip(&y) {
                assert_eq!(row[1], 7);
                assert_eq!(row[3], 8);
                assert_eq!((row[0] + row[2]) % 7, *t);
                all.push((row[0], row[2]));
            }
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 49);
        assert_eq!(d.train.len(), 25);
        assert!(modadd(&ModAddConfig { modulus: 1, ..c }, 0).is_err());
    }
}
