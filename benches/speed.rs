//! Timing cases for `scripts/bench.py`, which runs the PyTorch peer on the
//! same shapes and prints the ratios. Each case prints one JSON line:
//! `{"case": ..., "threads": n, "median_ms": ..., "runs": k}`.
//!
//! Usage: `cargo bench --bench speed -- [CASE ...]` with CASE one of
//! opt-<sgd|rmsprop|adam|adamw|amsgrad>-<1m|10m>, mlp-64, mlp-256,
//! transformer, cnn and cnn-2t (the same CNN step; the script runs it on one
//! and on two threads), basicnet (experiments/basicnet.toml's 7-conv CNN), or
//! `all`; and, for profiling (not in `all`), transformer-fwd,
//! transformer-fwdbwd and transformer-matmuls (the forward alone, forward and
//! backward, and the step's matrix products alone), opt-adamax-1m and
//! opt-rmsprop-centered-1m. Threads follow RAYON_NUM_THREADS (Candle's
//! setting); the script sets it per case. Each case runs on a rayon pool of
//! its own with that many threads, as a training run does
//! (`train::run_on`).

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use sparsity_lab::data::{Batch, Task};
use sparsity_lab::models::{CnnConfig, MlpConfig, ModelConfig, TransformerConfig};
use sparsity_lab::optim::{self, OptimizerConfig};
use sparsity_lab::rng::Rng;

/// The binary's allocator (see src/main.rs), so that the timings are the
/// binary's: glibc's malloc costs a third of a Transformer step.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cfg(name: &str, sets: &[(&str, &str)]) -> OptimizerConfig {
    OptimizerConfig::from_text(name, sets.iter().copied()).unwrap()
}

fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(
        (0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(),
        shape,
        &Device::Cpu,
    )
    .unwrap()
}

/// Median wall time of `f` in ms, after warm-up, over at least `min_runs`
/// runs and about `budget_s` seconds.
fn time(mut f: impl FnMut(), min_runs: usize, budget_s: f64) -> (f64, usize) {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let mut samples = vec![];
    while samples.len() < min_runs || start.elapsed().as_secs_f64() < budget_s {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        if samples.len() >= 10_000 {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples.len())
}

fn report(case: &str, (ms, runs): (f64, usize)) {
    let threads = candle_core::utils::get_num_threads();
    println!(
        "{{\"case\": \"{case}\", \"threads\": {threads}, \"median_ms\": {ms:.5}, \"runs\": {runs}}}"
    );
}

fn opt_case(name: &str, n: usize) -> (f64, usize) {
    let c = match name {
        "sgd" => cfg("sgd", &[("lr", "0.01"), ("momentum", "0.9")]),
        "rmsprop" => cfg("rmsprop", &[("lr", "0.001")]),
        "adam" => cfg("adam", &[("lr", "0.001")]),
        "adamw" => cfg("adamw", &[("lr", "0.001"), ("weight_decay", "0.01")]),
        "amsgrad" => cfg("adam", &[("lr", "0.001"), ("amsgrad", "true")]),
        "adamax" => cfg("adamax", &[("lr", "0.002")]),
        "rmsprop-centered" => cfg("rmsprop", &[("lr", "0.001"), ("centered", "true")]),
        _ => panic!("unknown optimizer {name}"),
    };
    let mut rng = Rng::new(0);
    let p = Var::from_tensor(&randn(&[n], &mut rng)).unwrap();
    let g = (randn(&[n], &mut rng) * 1e-3).unwrap();
    let mut store = GradStore::default();
    store.insert(p.as_tensor(), g);
    let mut opt = optim::build(&c, vec![("p".into(), p.clone())]).unwrap();
    time(|| opt.step(&store).unwrap(), 20, 2.0)
}

fn train_case(model: ModelConfig, task: Task, batch: Batch, opt: OptimizerConfig) -> (f64, usize) {
    let m = model.build(&task, 0, DType::F32, &Device::Cpu).unwrap();
    let mut o = optim::build(&opt, m.named_params()).unwrap();
    time(
        || {
            let (_, grads) = m.loss_and_grads(&task, &batch).unwrap();
            o.step(&grads).unwrap();
        },
        20,
        3.0,
    )
}

fn mlp_case(b: usize) -> (f64, usize) {
    let mut rng = Rng::new(1);
    let x = randn(&[b, 784], &mut rng).affine(0.3, 0.1).unwrap();
    let y = Tensor::from_vec(
        (0..b as u32).map(|i| i % 10).collect::<Vec<_>>(),
        b,
        &Device::Cpu,
    )
    .unwrap();
    train_case(
        ModelConfig::Mlp(MlpConfig { hidden: vec![128] }),
        Task::Classify {
            inputs: 784,
            classes: 10,
        },
        Batch { x, y },
        cfg("adam", &[("lr", "0.001")]),
    )
}

/// A CNN on a batch of 64 images, Adam: one training step. `cnn`: the
/// default (conv 32, conv 64, BatchNorm, hidden 128); `basicnet`:
/// experiments/basicnet.toml's (7 conv blocks 16-64, a pool after every
/// second).
fn cnn_case(model: CnnConfig) -> (f64, usize) {
    let b = 64;
    let mut rng = Rng::new(4);
    let x = randn(&[b, 784], &mut rng).affine(0.3, 0.1).unwrap();
    let y = Tensor::from_vec(
        (0..b as u32).map(|i| i % 10).collect::<Vec<_>>(),
        b,
        &Device::Cpu,
    )
    .unwrap();
    train_case(
        ModelConfig::Cnn(model),
        Task::Classify {
            inputs: 784,
            classes: 10,
        },
        Batch { x, y },
        cfg("adam", &[("lr", "0.001")]),
    )
}

fn transformer_case() -> (f64, usize) {
    let (b, t, v) = (32, 128, 65u32);
    let mut rng = Rng::new(2);
    let ids: Vec<u32> = (0..b * (t + 1))
        .map(|_| rng.below(v as usize) as u32)
        .collect();
    let x: Vec<u32> = (0..b)
        .flat_map(|i| ids[i * (t + 1)..i * (t + 1) + t].to_vec())
        .collect();
    let y: Vec<u32> = (0..b)
        .flat_map(|i| ids[i * (t + 1) + 1..(i + 1) * (t + 1)].to_vec())
        .collect();
    let batch = Batch {
        x: Tensor::from_vec(x, (b, t), &Device::Cpu).unwrap(),
        y: Tensor::from_vec(y, (b, t), &Device::Cpu).unwrap(),
    };
    train_case(
        ModelConfig::Transformer(TransformerConfig::default()),
        Task::NextToken { vocab: v as usize },
        batch,
        cfg("adamw", &[("lr", "0.001"), ("weight_decay", "0.1")]),
    )
}

/// Only the matrix products a Transformer step needs (forward, and the two
/// gradients of each), with Candle's matmul: the floor for any backward.
fn transformer_matmuls() -> (f64, usize) {
    let mut rng = Rng::new(3);
    let n = 32 * 128;
    let d = 128;
    let x = randn(&[n, d], &mut rng);
    let h = randn(&[n, 4 * d], &mut rng);
    let w_qkv = randn(&[3 * d, d], &mut rng);
    let w_o = randn(&[d, d], &mut rng);
    let w_fc = randn(&[4 * d, d], &mut rng);
    let w_pr = randn(&[d, 4 * d], &mut rng);
    let q = randn(&[32, 4, 128, 32], &mut rng);
    let p = randn(&[32, 4, 128, 128], &mut rng);
    let lin = |x: &Tensor, w: &Tensor| {
        let y = x.matmul(&w.t().unwrap()).unwrap();
        let _dx = y.matmul(w).unwrap();
        let _dw = y.t().unwrap().matmul(x).unwrap();
    };
    time(
        || {
            for _ in 0..2 {
                lin(&x, &w_qkv);
                lin(&x, &w_o);
                lin(&x, &w_fc);
                lin(&h, &w_pr);
                // scores, their two gradients; attention output, its two gradients
                let s = q.matmul(&q.t().unwrap()).unwrap();
                let _ = s.matmul(&q).unwrap();
                let _ = s.t().unwrap().matmul(&q).unwrap();
                let o = p.matmul(&q).unwrap();
                let _ = o.matmul(&q.t().unwrap()).unwrap();
                let _ = p.t().unwrap().matmul(&o).unwrap();
            }
        },
        10,
        3.0,
    )
}

/// The Transformer's forward alone, or forward and backward without the
/// optimizer: where the step's time goes.
fn transformer_parts(backward: bool) -> (f64, usize) {
    let (b, t, v) = (32, 128, 65u32);
    let mut rng = Rng::new(2);
    let x: Vec<u32> = (0..b * t).map(|_| rng.below(v as usize) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|_| rng.below(v as usize) as u32).collect();
    let batch = Batch {
        x: Tensor::from_vec(x, (b, t), &Device::Cpu).unwrap(),
        y: Tensor::from_vec(y, (b, t), &Device::Cpu).unwrap(),
    };
    let task = Task::NextToken { vocab: v as usize };
    let m = ModelConfig::Transformer(TransformerConfig::default())
        .build(&task, 0, DType::F32, &Device::Cpu)
        .unwrap();
    time(
        || {
            if backward {
                let _ = m.loss_and_grads(&task, &batch).unwrap();
            } else {
                let _ = m.loss(&task, &batch).unwrap();
            }
        },
        10,
        3.0,
    )
}

fn main() {
    let mut cases: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if cases.is_empty() || cases.iter().any(|c| c == "all") {
        cases = ["sgd", "rmsprop", "adam", "adamw", "amsgrad"]
            .iter()
            .flat_map(|o| [format!("opt-{o}-1m"), format!("opt-{o}-10m")])
            .chain(
                [
                    "mlp-64",
                    "mlp-256",
                    "transformer",
                    "cnn",
                    "cnn-2t",
                    "basicnet",
                ]
                .map(String::from),
            )
            .collect();
    }
    for case in cases {
        let run = || {
            if let Some(rest) = case.strip_prefix("opt-") {
                let (name, size) = rest.rsplit_once('-').expect("opt-<name>-<1m|10m>");
                let n = match size {
                    "1m" => 1_000_000,
                    "10m" => 10_000_000,
                    _ => panic!("size must be 1m or 10m"),
                };
                opt_case(name, n)
            } else {
                match case.as_str() {
                    "mlp-64" => mlp_case(64),
                    "mlp-256" => mlp_case(256),
                    "transformer" => transformer_case(),
                    "cnn" | "cnn-2t" => cnn_case(CnnConfig::default()),
                    "basicnet" => cnn_case(CnnConfig {
                        channels: vec![16, 16, 32, 32, 64, 64, 64],
                        pool_every: 2,
                        ..CnnConfig::default()
                    }),
                    "transformer-fwd" => transformer_parts(false),
                    "transformer-matmuls" => transformer_matmuls(),
                    "transformer-fwdbwd" => transformer_parts(true),
                    _ => panic!("unknown case {case}"),
                }
            }
        };
        // On a pool of its own, as `train::run_on` trains a run: the step's
        // parallel loops start on a worker of that pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .build()
            .expect("a thread pool");
        report(&case, pool.install(run));
    }
}
