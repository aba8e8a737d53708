//! Two hidden commands for the device check (`scripts/gpu-check.sh`), where
//! no Rust toolchain exists to run the tests or the benchmarks:
//!
//! - `selfcheck --device cuda`: every optimizer, with every combination of
//!   the regularisation blocks, f32 and f64, stepped on the device (the fused
//!   kernels, and the tensor path) against the CPU reference path, from the
//!   same start and with the same gradients; prints the largest differences
//!   and exits with status 1 if any is outside the stated tolerance. With
//!   `--device cpu` it checks the fused CPU kernels the same way (a dry run of
//!   the command; `tests/fused_vs_reference.rs` is the real test of those).
//! - `bench-steps --device cuda`: the median time of one training step of the
//!   MLP (batch 64 and 256) and of the Transformer, with the shapes of
//!   `benches/speed.rs`, so that `scripts/gpu_bench.py` can time PyTorch on
//!   the same GPU.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;

use super::args::parse_device;
use crate::bail_usage;
use crate::data::{Batch, Task};
use crate::models::{MlpConfig, ModelConfig, TransformerConfig};
use crate::optim::{self, Backend, OptimizerConfig};
use crate::rng::Rng;

#[derive(Args, Debug)]
pub struct SelfcheckArgs {
    /// The device whose optimizer steps are checked against the CPU reference:
    /// cuda, or cpu (the fused CPU kernels; a dry run).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Elements of the checked parameter (a matrix of 255 columns).
    #[arg(long, default_value_t = 65_535)]
    size: usize,
    /// Steps per configuration.
    #[arg(long, default_value_t = 8)]
    steps: usize,
}

/// Relative tolerance, of `|a - b| / max(|b|, FLOOR)` with b the CPU
/// reference: about 800 f32 roundings, 4500 f64 ones. The fused kernels do
/// the reference's operations in its order without contracted multiply-adds,
/// so they are expected to be bit-identical; Candle's CUDA kernels may
/// contract multiply-adds, a rounding apart per operation.
fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F32 { 1e-4 } else { 1e-12 }
}
const FLOOR: f64 = 1e-3;

/// The largest differences of one path from the reference.
#[derive(Default, Clone, Copy)]
struct Diff {
    max_abs: f64,
    max_rel: f64,
    identical: usize,
    total: usize,
}

impl Diff {
    fn add(&mut self, a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            // NaN compares false: a NaN on one side only is an infinite difference.
            let d = if x.is_nan() != y.is_nan() {
                f64::INFINITY
            } else if x.is_nan() {
                0.0
            } else {
                d
            };
            self.max_abs = self.max_abs.max(d);
            self.max_rel = self.max_rel.max(d / y.abs().max(FLOOR));
            self.identical += usize::from(x.to_bits() == y.to_bits());
            self.total += 1;
        }
    }

    fn merge(&mut self, o: &Diff) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.max_rel = self.max_rel.max(o.max_rel);
        self.identical += o.identical;
        self.total += o.total;
    }

    fn identical_pct(&self) -> f64 {
        100.0 * self.identical as f64 / self.total.max(1) as f64
    }

    fn text(&self, ok: bool) -> String {
        format!(
            "max|d| {:.2e} rel {:.2e} ({:.3}% bit-identical) {}",
            self.max_abs,
            self.max_rel,
            self.identical_pct(),
            if ok { "ok" } else { "FAIL" }
        )
    }
}

fn randn(n: usize, scale: f64, rng: &mut Rng, dtype: DType) -> Result<Tensor> {
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * scale).collect();
    Ok(Tensor::from_vec(v, (n / 255, 255), &Device::Cpu)?.to_dtype(dtype)?)
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

/// The parameter and every state tensor after the steps, on the CPU.
fn run(
    cfg: &OptimizerConfig,
    backend: Backend,
    device: &Device,
    init: &Tensor,
    grads: &[Tensor],
) -> Result<Vec<Vec<f64>>> {
    let p = Var::from_tensor(&init.to_device(device)?)?;
    let mut opt = optim::build_with(cfg, vec![("p".into(), p.clone())], backend)?;
    for g in grads {
        let mut store = GradStore::default();
        store.insert(p.as_tensor(), g.to_device(device)?);
        opt.step(&store)?;
    }
    let mut out = vec![to_f64(p.as_tensor())?];
    let Some(state) = opt.state("p") else {
        bail!("internal error: no state for the checked parameter");
    };
    for (_, s) in state {
        out.push(to_f64(&s)?);
    }
    Ok(out)
}

pub fn run_selfcheck(args: SelfcheckArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    if args.size < 255 || args.steps == 0 {
        bail_usage!(
            "selfcheck: --size must be at least 255 and --steps at least 1; got {} and {}",
            args.size,
            args.steps
        );
    }
    let n = args.size / 255 * 255;
    let on = crate::provenance::device_name(&device);
    println!(
        "selfcheck on {on}: every optimizer x regularisation x dtype, {} steps on a {}x255 parameter, against the CPU reference path",
        args.steps,
        n / 255
    );
    println!(
        "tolerance: |a - b| / max(|b|, {FLOOR:e}) <= {:e} (f32), {:e} (f64), over the parameter and every state tensor",
        tolerance(DType::F32),
        tolerance(DType::F64)
    );
    let mut worst = [Diff::default(), Diff::default()];
    let (mut checked, mut failed) = (0, 0);
    for cfg in optim::variants::every_code_path("0.01")? {
        for dtype in [DType::F32, DType::F64] {
            let mut rng = Rng::new(9);
            let init = randn(n, 1.0, &mut rng, dtype)?;
            let grads = (0..args.steps)
                .map(|_| randn(n, 0.3, &mut rng, dtype))
                .collect::<Result<Vec<_>>>()?;
            let reference = run(&cfg, Backend::Reference, &Device::Cpu, &init, &grads)?;
            let mut line = format!("{:<60} {dtype:?}", cfg.short());
            for (i, (path, backend)) in [("fused", Backend::Auto), ("tensor", Backend::Reference)]
                .into_iter()
                .enumerate()
            {
                let got = run(&cfg, backend, &device, &init, &grads)?;
                let mut d = Diff::default();
                if got.len() != reference.len() {
                    bail!(
                        "{}: the state has {} tensors on {on}, {} on the CPU",
                        cfg.short(),
                        got.len(),
                        reference.len()
                    );
                }
                for (a, b) in got.iter().zip(&reference) {
                    d.add(a, b);
                }
                let ok = d.max_rel <= tolerance(dtype);
                checked += 1;
                failed += usize::from(!ok);
                worst[i].merge(&d);
                line.push_str(&format!("  {path}: {}", d.text(ok)));
            }
            println!("{line}");
        }
    }
    println!(
        "selfcheck {on}: {checked} comparisons, {failed} outside tolerance; fused kernels: {}; tensor path: {}",
        worst[0].text(true).trim_end_matches(" ok"),
        worst[1].text(true).trim_end_matches(" ok")
    );
    let libs = loaded_cuda_libraries();
    if !libs.is_empty() {
        println!("CUDA libraries in use: {}", libs.join(", "));
    }
    if failed > 0 {
        bail!(
            "selfcheck: {failed} of {checked} comparisons outside tolerance (the lines marked FAIL)"
        );
    }
    Ok(())
}

/// The CUDA libraries mapped into this process (from /proc/self/maps), to
/// show which copies a build that loads them at run time found.
fn loaded_cuda_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| {
            let file = path.rsplit('/').next().unwrap_or_default();
            [
                "libcuda.",
                "libcublas",
                "libcurand",
                "libnvrtc",
                "libcudart",
            ]
            .iter()
            .any(|p| file.starts_with(p))
        })
        .map(String::from)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// cuda, or cpu.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Seconds of timed steps per case (after warm-up; at least 10 steps).
    #[arg(long, default_value_t = 2.0)]
    budget: f64,
    /// mlp-64, mlp-256, transformer (default: all three).
    cases: Vec<String>,
}

/// Median wall time of `f` in ms, after three warm-up calls, over at least
/// ten calls and about `budget_s` seconds.
fn time(mut f: impl FnMut() -> Result<()>, budget_s: f64) -> Result<(f64, usize)> {
    for _ in 0..3 {
        f()?;
    }
    let start = Instant::now();
    let mut samples = vec![];
    while samples.len() < 10 || start.elapsed().as_secs_f64() < budget_s {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        if samples.len() >= 10_000 {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2], samples.len()))
}

fn randn_f32(shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::from_vec(rng.normals_f32(n), shape, &Device::Cpu)?)
}

/// One case of `benches/speed.rs`, on `device`: the model, its task, a batch
/// and the optimizer.
fn case(name: &str) -> Result<(ModelConfig, Task, Batch, OptimizerConfig)> {
    let classify = |b: usize, seed: u64| -> Result<Batch> {
        let mut rng = Rng::new(seed);
        let x = randn_f32(&[b, 784], &mut rng)?.affine(0.3, 0.1)?;
        let y = Tensor::from_vec(
            (0..b as u32).map(|i| i % 10).collect::<Vec<_>>(),
            b,
            &Device::Cpu,
        )?;
        Ok(Batch { x, y })
    };
    let mlp = |b| -> Result<_> {
        Ok((
            ModelConfig::Mlp(MlpConfig { hidden: vec![128] }),
            Task::Classify {
                inputs: 784,
                classes: 10,
            },
            classify(b, 1)?,
            OptimizerConfig::from_text("adam", [("lr", "0.001")])?,
        ))
    };
    match name {
        "mlp-64" => mlp(64),
        "mlp-256" => mlp(256),
        "transformer" => {
            let (b, t, v) = (32, 128, 65usize);
            let mut rng = Rng::new(2);
            let ids: Vec<u32> = (0..b * (t + 1)).map(|_| rng.below(v) as u32).collect();
            let x: Vec<u32> = (0..b)
                .flat_map(|i| ids[i * (t + 1)..i * (t + 1) + t].to_vec())
                .collect();
            let y: Vec<u32> = (0..b)
                .flat_map(|i| ids[i * (t + 1) + 1..(i + 1) * (t + 1)].to_vec())
                .collect();
            Ok((
                ModelConfig::Transformer(TransformerConfig::default()),
                Task::NextToken { vocab: v },
                Batch {
                    x: Tensor::from_vec(x, (b, t), &Device::Cpu)?,
                    y: Tensor::from_vec(y, (b, t), &Device::Cpu)?,
                },
                OptimizerConfig::from_text("adamw", [("lr", "0.001"), ("weight_decay", "0.1")])?,
            ))
        }
        _ => bail_usage!(
            "bench-steps: unknown case `{name}`; expected mlp-64, mlp-256 or transformer"
        ),
    }
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    if !(args.budget.is_finite() && args.budget >= 0.0) {
        bail_usage!(
            "bench-steps: --budget must be a number of seconds >= 0; got {}",
            args.budget
        );
    }
    let cases = if args.cases.is_empty() {
        vec!["mlp-64".into(), "mlp-256".into(), "transformer".into()]
    } else {
        args.cases
    };
    let on = crate::provenance::device_name(&device);
    for name in &cases {
        let (model, task, batch, opt) = case(name)?;
        let batch = Batch {
            x: batch.x.to_device(&device)?,
            y: batch.y.to_device(&device)?,
        };
        let m = model.build(&task, 0, DType::F32, &device)?;
        let mut o = optim::build(&opt, m.named_params())?;
        let (ms, runs) = time(
            || {
                let (_, grads) = m.loss_and_grads(&task, &batch)?;
                o.step(&grads)?;
                device.synchronize()?;
                Ok(())
            },
            args.budget,
        )?;
        let threads = candle_core::utils::get_num_threads();
        println!(
            "{{\"case\": \"{name}\", \"device\": \"{on}\", \"threads\": {threads}, \"median_ms\": {ms:.5}, \"runs\": {runs}}}"
        );
    }
    Ok(())
}
