//! `sparsity-lab trace`: an optimizer's path on a classic test function, one
//! JSON object per step, for plotting and for comparing against other tools.

use std::io::Write;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::bail_usage;
use crate::optim::{self, OptimizerConfig};

/// A test function with a fixed start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// f(theta) = theta^2 from theta = 1.
    Quadratic,
    /// f(x, y) = (1 - x)^2 + 100 (y - x^2)^2 from (-1.5, 2).
    Rosenbrock,
}

impl Problem {
    pub const ALL: [Problem; 2] = [Problem::Quadratic, Problem::Rosenbrock];

    pub fn name(self) -> &'static str {
        match self {
            Problem::Quadratic => "quadratic",
            Problem::Rosenbrock => "rosenbrock",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match Self::ALL.iter().find(|p| p.name() == s) {
            Some(p) => Ok(*p),
            None => bail_usage!(
                "unknown problem `{s}`; expected one of: {}",
                Self::ALL.map(|p| p.name()).join(", ")
            ),
        }
    }

    pub fn start(self) -> Vec<f64> {
        match self {
            Problem::Quadratic => vec![1.0],
            Problem::Rosenbrock => vec![-1.5, 2.0],
        }
    }

    /// The loss as a 0-d tensor of `theta`'s dtype.
    pub fn loss(self, theta: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Problem::Quadratic => theta.sqr()?.sum_all()?,
            Problem::Rosenbrock => {
                let x = theta.narrow(0, 0, 1)?;
                let y = theta.narrow(0, 1, 1)?;
                let a = x.affine(-1.0, 1.0)?.sqr()?;
                let b = (y - x.sqr()?)?.sqr()?;
                (a + (b * 100.0)?)?.sum_all()?
            }
        })
    }
}

/// Parses `f32` or `f64`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f64" => Ok(DType::F64),
        _ => bail_usage!("invalid --dtype `{s}`; expected f32 or f64"),
    }
}

#[derive(Serialize)]
struct Line<T> {
    step: usize,
    params: Vec<T>,
    loss: T,
    /// Present (true) only on the line whose loss is not finite.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    diverged: bool,
}

/// Runs `steps` updates and writes `steps + 1` lines: step 0 is the start.
/// Each line holds the parameters after `step` updates and the loss there.
/// f32 values are printed as the shortest decimal that reads back to the
/// same f32. A non-finite loss ends the trace: its line carries
/// `"diverged": true` (and `"loss": null`), and the result is an error that
/// names the step.
pub fn run(
    cfg: &OptimizerConfig,
    problem: Problem,
    steps: usize,
    dtype: DType,
    device: &Device,
    out: &mut dyn Write,
) -> Result<()> {
    let start = problem.start();
    let theta = Var::from_tensor(&Tensor::new(start.as_slice(), device)?.to_dtype(dtype)?)?;
    let mut opt = optim::build(cfg, vec![("theta".into(), theta.clone())])?;
    for step in 0..=steps {
        let loss = problem.loss(theta.as_tensor())?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let diverged = !value.is_finite();
        let line = if dtype == DType::F32 {
            serde_json::to_string(&Line {
                step,
                params: theta.as_tensor().to_vec1::<f32>()?,
                loss: loss.to_scalar::<f32>()?,
                diverged,
            })?
        } else {
            serde_json::to_string(&Line {
                step,
                params: theta.as_tensor().to_vec1::<f64>()?,
                loss: loss.to_scalar::<f64>()?,
                diverged,
            })?
        };
        writeln!(out, "{line}")?;
        if diverged {
            anyhow::bail!(
                "trace diverged at step {step} (non-finite loss: {value}); lower the learning rate (--set lr=...)"
            );
        }
        if step < steps {
            opt.backward_step(&loss)?;
        }
    }
    Ok(())
}
