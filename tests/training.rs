//! Models, data and the training loop, through the public API.
//!
//! Tests that need the real data in ../shared/data skip, with a printed
//! reason, when it is absent.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sparsity_lab::data::synthetic::{ModAddConfig, TeacherConfig};
use sparsity_lab::data::{self, Batch, DataConfig, ImageConfig, Split, Task};
use sparsity_lab::models::{MlpConfig, ModelConfig, TransformerConfig};
use sparsity_lab::optim::OptimizerConfig;
use sparsity_lab::train::{self, RunOptions, Status, TrainConfig};

fn shared(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        // Written to the stderr handle itself, which the test harness does
        // not capture, so that the skip shows in `cargo test` output.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {} is absent (the tests that need ../shared/data skip on a fresh clone)",
            p.display()
        );
        None
    }
}

fn opt(name: &str, sets: &[(&str, &str)]) -> OptimizerConfig {
    OptimizerConfig::from_text(name, sets.iter().copied()).unwrap()
}

fn small_teacher() -> DataConfig {
    DataConfig::Teacher(TeacherConfig {
        inputs: 20,
        hidden: 16,
        classes: 4,
        train_size: 2000,
        test_size: 500,
        ..Default::default()
    })
}

fn tiny_transformer() -> TransformerConfig {
    TransformerConfig {
        layers: 2,
        d_model: 32,
        heads: 4,
        context: 16,
        mlp_ratio: 4,
    }
}

/// Every parameter of each model gets a non-zero gradient: guards against
/// ops without a backward (candle_nn::LayerNorm, softmax_last_dim, ...)
/// silently cutting the graph.
#[test]
fn every_parameter_receives_a_gradient() {
    let dev = Device::Cpu;
    let cases: Vec<(ModelConfig, DataConfig)> = vec![
        (
            ModelConfig::Mlp(MlpConfig {
                hidden: vec![32, 16],
            }),
            small_teacher(),
        ),
        (
            ModelConfig::Transformer(tiny_transformer()),
            DataConfig::Modadd(ModAddConfig {
                modulus: 11,
                ..Default::default()
            }),
        ),
    ];
    for (mc, dc) in cases {
        let ds = dc.load(0).unwrap();
        let model = mc.build(&ds.task, 0, DType::F32, &dev).unwrap();
        let mut b = data::Batcher::new(&ds.train, 16, 8, 0, &dev).unwrap();
        let batch = b.next(&ds.train).unwrap();
        let loss = model.loss(&ds.task, &batch).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in model.named_params() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", mc.name()));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{}: gradient of {name} has norm {norm}",
                mc.name()
            );
        }
    }
    // The character model (every position predicted) too.
    let text = std::env::temp_dir().join(format!("sparsity-lab-grad-{}.txt", std::process::id()));
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(50),
    )
    .unwrap();
    let dc = DataConfig::Text(data::text::TextConfig {
        path: Some(text.clone()),
        holdout: 0.1,
        validation: None,
    });
    let ds = dc.load(0).unwrap();
    let model = ModelConfig::Transformer(tiny_transformer())
        .build(&ds.task, 0, DType::F32, &dev)
        .unwrap();
    let mut b = data::Batcher::new(&ds.train, 4, 16, 0, &dev).unwrap();
    let grads = model
        .loss(&ds.task, &b.next(&ds.train).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in model.named_params() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "text: no gradient for {name}"
        );
    }
    std::fs::remove_file(text).unwrap();
}

/// The causal mask: changing a later token never changes an earlier position's output.
#[test]
fn transformer_is_causal() {
    let dev = Device::Cpu;
    let task = Task::NextToken { vocab: 10 };
    let model = ModelConfig::Transformer(tiny_transformer())
        .build(&task, 3, DType::F32, &dev)
        .unwrap();
    let a = Tensor::new(&[[1u32, 2, 3, 4, 5, 6]], &dev).unwrap();
    let b = Tensor::new(&[[1u32, 2, 3, 9, 9, 9]], &dev).unwrap();
    let batch = |x: Tensor| Batch { y: x.clone(), x };
    let (la, _) = model.logits(&task, &batch(a), None).unwrap();
    let (lb, _) = model.logits(&task, &batch(b), None).unwrap();
    let la = la.to_vec2::<f32>().unwrap();
    let lb = lb.to_vec2::<f32>().unwrap();
    assert_eq!(
        la[..3],
        lb[..3],
        "positions before the change must not see it"
    );
    assert_ne!(la[3], lb[3]);
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let task = Task::Classify {
        inputs: 20,
        classes: 4,
    };
    let mc = ModelConfig::Mlp(MlpConfig::default());
    let w = |seed| {
        let m = mc.build(&task, seed, DType::F32, &Device::Cpu).unwrap();
        m.params()
            .get("fc0.weight")
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(w(1), w(1));
    assert_ne!(w(1), w(2));
    // torch's nn.Linear init: U(-1/sqrt(20), 1/sqrt(20)).
    let bound = 1.0 / 20f32.sqrt();
    assert!(w(1).iter().all(|x| x.abs() <= bound));
}

fn teacher_config(o: OptimizerConfig) -> TrainConfig {
    let mut c = TrainConfig::new(
        ModelConfig::Mlp(MlpConfig { hidden: vec![32] }),
        small_teacher(),
        o,
    );
    c.epochs = Some(3);
    c.batch_size = 32;
    c
}

/// Same config and seed: the same record, bit for bit (wall time aside).
#[test]
fn training_is_deterministic() {
    let c = teacher_config(opt("adam", &[("lr", "0.01")]));
    let run = |c: &TrainConfig| {
        let mut r = train::run(c, &Device::Cpu, &RunOptions::default())
            .unwrap()
            .record;
        r.wall_seconds = 0.0;
        serde_json::to_string(&r).unwrap()
    };
    let a = run(&c);
    assert_eq!(a, run(&c));
    let mut c2 = c.clone();
    c2.seed = 1;
    assert_ne!(a, run(&c2));
}

/// The planted teacher is learnable, and the record holds every measure.
#[test]
fn teacher_task_trains_and_is_measured() {
    let rec = train::run(
        &teacher_config(opt("adam", &[("lr", "0.01")])),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap()
    .record;
    assert_eq!(rec.status, Status::Done);
    // The starting point, then one evaluation per epoch.
    assert_eq!(rec.history.len(), 4);
    assert_eq!(rec.history[0].step, 0);
    assert!(rec.history[0].train_loss.is_none());
    let f = rec.r#final.as_ref().unwrap();
    assert!(f.test_acc > 0.8, "teacher accuracy {}", f.test_acc);
    assert!(rec.history[3].train_loss < rec.history[1].train_loss);
    assert_eq!(f.pruning.len(), 7);
    assert!(f.pruning[0].test_acc > f.pruning[6].test_acc);
    let d = f.dead_units.as_ref().unwrap();
    assert_eq!(d.total, 32);
    assert_eq!(f.measures.tensors.len(), 4);
    assert_eq!(f.measures.weights.numel, 20 * 32 + 32 * 4);
    // Adam state: m and v per parameter, f32.
    assert_eq!(rec.optimizer_state_bytes, 2 * 4 * rec.params);
}

/// Shrinkage compares the final weights with the run's own step-0 weights:
/// a learning rate of 0 leaves every weight where it started (nothing
/// shrunk, at either factor); a strong proximal L1 step drives weights to
/// exactly 0, and every such weight (non-zero at the start) is shrunk.
#[test]
fn shrinkage_is_measured_against_the_initial_weights() {
    let run = |o| {
        train::run(&teacher_config(o), &Device::Cpu, &RunOptions::default())
            .unwrap()
            .record
            .r#final
            .unwrap()
    };
    let still = run(opt("sgd", &[("lr", "0")]));
    let s = still.shrinkage.as_ref().unwrap();
    assert_eq!(s.weights.numel, 20 * 32 + 32 * 4);
    assert_eq!((s.weights.at("0.1"), s.weights.at("0.01")), (0.0, 0.0));
    assert_eq!(s.tensors.len(), 2, "{:?}", s.tensors.keys());
    let prox = run(opt("sgd", &[("lr", "0.1"), ("l1_prox", "0.05")]));
    let s = prox.shrinkage.as_ref().unwrap();
    let zeros = prox.measures.weights.exact_zero_frac;
    assert!(zeros > 0.3, "exact zeros {zeros}");
    assert!(s.weights.at("0.01") >= zeros, "{s:?} vs {zeros}");
    assert!(s.weights.at("0.1") >= s.weights.at("0.01"));
}

/// `track_gradients` only reads the gradients: the same training numbers
/// bit for bit, plus every weight bucketed by its accumulated |g|. The
/// first-layer weights of an input that is always 0 get no gradient.
#[test]
fn tracking_gradients_changes_no_number() {
    let mut ds = small_teacher().load(0).unwrap();
    for split in [&mut ds.train, &mut ds.test] {
        let Split::Examples { x, .. } = split else {
            panic!("teacher data are examples")
        };
        let mut rows = x.to_vec2::<f32>().unwrap();
        for r in &mut rows {
            r[0] = 0.0;
        }
        *x = Tensor::new(rows, &Device::Cpu).unwrap();
    }
    let base = teacher_config(opt("sgd", &[("lr", "0.1"), ("momentum", "0.9")]));
    let mut tracked = base.clone();
    tracked.track_gradients = true;
    // Off, the config reads as before (the same run-file hash).
    let json = serde_json::to_value(&base).unwrap();
    assert!(json.get("track_gradients").is_none(), "{json}");
    assert_eq!(
        serde_json::to_value(&tracked).unwrap()["track_gradients"],
        true
    );
    let run = |c: &TrainConfig| {
        train::run_on(c, &ds, &Device::Cpu, &RunOptions::default())
            .unwrap()
            .record
    };
    let (off, on) = (run(&base), run(&tracked));
    assert_eq!((off.status, on.status), (Status::Done, Status::Done));
    assert_eq!(off.history, on.history);
    let (a, b) = (off.r#final.unwrap(), on.r#final.unwrap());
    assert_eq!(a.test_loss.to_bits(), b.test_loss.to_bits());
    assert_eq!(a.train_loss.to_bits(), b.train_loss.to_bits());
    assert_eq!(a.measures, b.measures);
    assert_eq!(a.pruning, b.pruning);
    assert_eq!(a.weight_histogram, b.weight_histogram);
    assert!(a.gradient_buckets.is_none() && a.input_activity.is_none());
    let g = b.gradient_buckets.unwrap();
    let names: Vec<&str> = g.iter().map(|b| b.bucket.as_str()).collect();
    assert_eq!(names, ["no gradient", "q1", "q2", "q3", "q4", "q5"]);
    assert_eq!(
        g.iter().map(|b| b.count).sum::<usize>(),
        a.measures.weights.numel
    );
    // Input 0's 32 first-layer weights (and any of dead units) got none and
    // never moved.
    assert!(g[0].count >= 32, "{:?}", g[0]);
    assert_eq!(
        (g[0].grad_min, g[0].grad_max, g[0].mean_abs_change),
        (0.0, 0.0, 0.0)
    );
    // The quintiles: ascending, contiguous ranges of equal size (+-1).
    for w in g[1..].windows(2) {
        assert!(w[0].grad_max <= w[1].grad_min, "{w:?}");
        assert!(w[0].count.abs_diff(w[1].count) <= 1);
    }
    assert!(g[1].grad_min > 0.0);
    // The last evaluation has the scale-relative fractions too.
    let last = on.history.last().unwrap();
    assert_eq!(
        last.weights_scale_rel_near_zero_frac,
        a.measures.weights.scale_rel_near_zero_frac
    );
}

/// A non-finite loss ends the run as diverged, without an error or panic.
#[test]
fn divergence_is_a_status_not_a_crash() {
    let c = teacher_config(opt("sgd", &[("lr", "1e30")]));
    let rec = train::run(&c, &Device::Cpu, &RunOptions::default())
        .unwrap()
        .record;
    assert_eq!(rec.status, Status::Diverged);
    assert!(rec.r#final.is_none());
    assert!(rec.steps_done < 3 * 63);
}

/// A small Transformer learns modular addition: 100% train accuracy.
#[test]
fn transformer_learns_modular_addition() {
    let mut c = TrainConfig::new(
        ModelConfig::Transformer(TransformerConfig {
            layers: 1,
            d_model: 64,
            heads: 4,
            context: 4,
            mlp_ratio: 4,
        }),
        DataConfig::Modadd(ModAddConfig {
            modulus: 13,
            train_frac: 0.8,
            seed: 0,
        }),
        opt("adamw", &[("lr", "0.003"), ("weight_decay", "0.1")]),
    );
    // Full batch (135 training pairs), as in the grokking literature.
    c.steps = Some(400);
    c.batch_size = 256;
    c.eval_every = Some(400);
    c.prune_fracs = vec![0.5];
    let trained = train::run(&c, &Device::Cpu, &RunOptions::default()).unwrap();
    let ds = c.data.load(0).unwrap();
    let evals = data::eval_batches(&ds.train, 1000, 4, 0, &Device::Cpu).unwrap();
    let (_, train_acc) = train::evaluate(&trained.model, &ds.task, &evals, None).unwrap();
    assert_eq!(train_acc, 1.0, "train accuracy {train_acc}");
}

/// MNIST through the real hf-hub loader (an offline cache) and from raw
/// IDX files give the same data, bit for bit (the same data digest).
#[test]
fn mnist_from_hf_hub_cache_and_idx_agree() {
    let (Some(raw), Some(_)) = (shared("mnist/raw"), shared("mnist/hf-hub-cache/hub")) else {
        return;
    };
    let from_idx = DataConfig::Mnist(ImageConfig {
        dir: Some(raw.clone()),
        ..Default::default()
    })
    .load(0)
    .unwrap();
    assert_eq!(
        (from_idx.train.len(), from_idx.test.len()),
        (60_000, 10_000)
    );
    let Split::Examples { x, y } = &from_idx.train else {
        panic!()
    };
    let labels = y.to_vec1::<u32>().unwrap();
    let mut counts = [0usize; 10];
    labels.iter().for_each(|l| counts[*l as usize] += 1);
    // ../shared/data/README.md
    assert_eq!(
        counts,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let mean = x.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((mean - 0.1307).abs() < 5e-4, "{mean}");
    // The hf-hub path runs in a child process, where HF_HUB_CACHE can be set.
    let out_dir = std::env::temp_dir().join(format!("sparsity-lab-hub-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sparsity-lab"))
        .args([
            "train",
            "--data",
            "mnist",
            "--train-limit",
            "640",
            "--epochs",
            "1",
            "--out",
        ])
        .arg(&out_dir)
        .env(
            "HF_HUB_CACHE",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist/hf-hub-cache/hub"),
        )
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("SPARSITY_LAB_DATA")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hf-hub ylecun/mnist"), "{stdout}");
    // The run's data digest is that of the same data read from IDX files.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("run.json")).unwrap()).unwrap();
    let same_from_idx = DataConfig::Mnist(ImageConfig {
        dir: Some(raw),
        train_limit: Some(640),
        ..Default::default()
    })
    .load(0)
    .unwrap();
    assert_eq!(
        record["provenance"]["data_sha256"].as_str().unwrap(),
        sparsity_lab::provenance::data_sha256(&same_from_idx).unwrap()
    );
    assert!(
        !record.to_string().contains("hf-hub-cache"),
        "no path in the record"
    );
    let _ = std::fs::remove_dir_all(out_dir);
}

/// The acceptance figures of the training issue, on real MNIST: the MLP
/// 784-128-10, batch 64, 5 epochs, pixels in [0, 1]. PyTorch gets 97.42,
/// 97.47 and 97.55 % with Adam lr 1e-3 for seeds 0, 1, 2.
#[test]
fn mlp_on_mnist_reaches_the_reference_accuracy() {
    let Some(raw) = shared("mnist/raw") else {
        return;
    };
    let data = DataConfig::Mnist(ImageConfig {
        dir: Some(raw),
        ..Default::default()
    });
    let ds = data.load(0).unwrap();
    for (o, min) in [
        (opt("adam", &[("lr", "1e-3")]), 0.972),
        (opt("sgd", &[("lr", "0.05"), ("momentum", "0.9")]), 0.97),
    ] {
        let mut c = TrainConfig::new(ModelConfig::Mlp(MlpConfig::default()), data.clone(), o);
        c.epochs = Some(5);
        let rec = train::run_on(&c, &ds, &Device::Cpu, &RunOptions::default())
            .unwrap()
            .record;
        let f = rec.r#final.unwrap();
        let acc = f.test_acc;
        println!(
            "{}: {:.2}% in {:.1} s",
            c.optimizer.short(),
            100.0 * acc,
            rec.wall_seconds
        );
        assert!(acc >= min, "{}: {acc}", c.optimizer.short());
        // 67 pixels are 0 in every training image; the first layer's
        // weights are broken down by pixel activity.
        let buckets = f.input_activity.as_ref().unwrap();
        let names: Vec<&str> = buckets.iter().map(|b| b.bucket.as_str()).collect();
        assert_eq!(names, ["never", "<=0.1%", "<=3%", ">3%"]);
        assert_eq!(buckets[0].pixels, 67);
        assert_eq!(buckets.iter().map(|b| b.pixels).sum::<usize>(), 784);
        assert_eq!(buckets.iter().map(|b| b.weights).sum::<usize>(), 784 * 128);
        assert!(buckets.iter().all(|b| b.weights == 128 * b.pixels));
    }
}

/// The largest differences between the hand-written step's loss and
/// gradients and autograd's: the loss relative to autograd's, each
/// gradient entry relative to the largest entry of that parameter's
/// autograd gradient.
fn manual_vs_autograd(
    model: &sparsity_lab::models::Model,
    task: &Task,
    batch: &Batch,
) -> (f64, f64) {
    let (l1, g1) = model.loss_and_grads(task, batch).unwrap();
    let (l2, g2) = model.loss_and_grads_autograd(task, batch).unwrap();
    let mut worst = 0f64;
    for (name, var) in model.named_params() {
        let vals = |g: &candle_core::backprop::GradStore| {
            g.get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, e) = (vals(&g1), vals(&g2));
        assert_eq!(a.len(), e.len(), "{name}");
        let scale = e.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        assert!(scale > 0.0, "{name}: zero gradient");
        for (x, y) in a.iter().zip(&e) {
            worst = worst.max((x - y).abs() as f64 / scale);
        }
    }
    (((l1 - l2) / l2).abs(), worst)
}

/// The MLP's hand-written backward gives autograd's loss and gradients, on
/// fresh random batches, for one and two hidden layers. Both are f32 with
/// different summation orders (matmul blocking, the loss reduction): the
/// bound is 1e-5 of the largest gradient entry, about 100 ulps.
#[test]
fn mlp_manual_backward_matches_autograd() {
    use sparsity_lab::rng::Rng;
    for (hidden, seed) in [(vec![32], 1u64), (vec![24, 16], 2)] {
        let task = Task::Classify {
            inputs: 20,
            classes: 5,
        };
        let model = ModelConfig::Mlp(MlpConfig { hidden })
            .build(&task, seed, DType::F32, &Device::Cpu)
            .unwrap();
        let mut rng = Rng::new(seed + 100);
        let b = 37;
        let x: Vec<f32> = (0..b * 20).map(|_| rng.normal() as f32).collect();
        let y: Vec<u32> = (0..b).map(|_| rng.below(5) as u32).collect();
        let batch = Batch {
            x: Tensor::from_vec(x, (b, 20), &Device::Cpu).unwrap(),
            y: Tensor::from_vec(y, b, &Device::Cpu).unwrap(),
        };
        let (dl, dg) = manual_vs_autograd(&model, &task, &batch);
        assert!(dl < 1e-5 && dg < 1e-5, "loss {dl:e}, gradients {dg:e}");
    }
}

/// The Transformer's hand-written step gives autograd's loss and
/// gradients: predicting every token and the last token only, at full and
/// shorter-than-context length, shorter and longer than the attention's
/// causal blocks of 32 rows, with one and two layers, after a few
/// optimizer steps (so LayerNorm weights and biases are not 1 and 0).
/// Differences come from summation orders and the GELU and exp
/// approximations (1.2e-7 and 2 ulp relative). Measured worst: 1.1e-6 of
/// the largest gradient entry; the bound, 1e-5, is about 100 ulps. A wrong
/// term (a missing transpose, mask or scale) gives differences of order 1.
#[test]
fn transformer_manual_backward_matches_autograd() {
    use sparsity_lab::rng::Rng;
    let cases = [
        (1usize, 8usize, 8usize, false, 1u64),
        (2, 16, 11, false, 2),
        (2, 16, 16, true, 3),
        // Longer than the attention's 32-row causal blocks: two full blocks
        // and a partial one, and one full block and a partial one.
        (1, 80, 70, false, 4),
        (1, 48, 40, true, 5),
    ];
    for (layers, context, t, last_only, seed) in cases {
        let vocab = 13;
        let task = if last_only {
            Task::LastToken { vocab, len: t }
        } else {
            Task::NextToken { vocab }
        };
        let cfg = TransformerConfig {
            layers,
            d_model: 32,
            heads: 4,
            context,
            mlp_ratio: 4,
        };
        let model = ModelConfig::Transformer(cfg)
            .build(&task, seed, DType::F32, &Device::Cpu)
            .unwrap();
        let mut rng = Rng::new(seed + 100);
        let b = 3;
        let mut draw = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(vocab) as u32).collect() };
        let x = Tensor::from_vec(draw(b * t), (b, t), &Device::Cpu).unwrap();
        let y = if last_only {
            Tensor::from_vec(draw(b), b, &Device::Cpu).unwrap()
        } else {
            Tensor::from_vec(draw(b * t), (b, t), &Device::Cpu).unwrap()
        };
        let batch = Batch { x, y };
        let adam = opt("adam", &[("lr", "0.01")]);
        let mut o = sparsity_lab::optim::build(&adam, model.named_params()).unwrap();
        for _ in 0..3 {
            let (_, g) = model.loss_and_grads_autograd(&task, &batch).unwrap();
            o.step(&g).unwrap();
        }
        let (dl, dg) = manual_vs_autograd(&model, &task, &batch);
        println!(
            "transformer, {layers} layers, t {t}, last only {last_only}: loss {dl:.1e}, gradients {dg:.1e}"
        );
        assert!(dl < 1e-5 && dg < 1e-5, "loss {dl:e}, gradients {dg:e}");
    }
}
