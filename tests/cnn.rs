//! The CNN against PyTorch: `tests/golden/cnn.json`, written by
//! `tests/golden/make_cnn_fixture.py` (run `scripts/make-fixtures.sh` after
//! changing it). One train-mode forward and backward of a small CNN
//! (channels [4, 8], hidden 16, with and without BatchNorm; and channels
//! [2, 2, 2, 2, 2] pooled after blocks 2 and 4 only, the last unpooled) on 8
//! images, with the weights given
//! explicitly: logits, loss, every parameter's gradient, BatchNorm's running
//! statistics after the step, and the eval-mode logits.
//!
//! The fixture's numbers are computed by torch in float64 from f32 weights
//! and inputs, so they are the exact answer to f64 rounding, and the
//! tolerances bound our own rounding:
//! - the f32 CPU path (im2col and one matrix product per convolution):
//!   |ours - ref| <= 1e-4 * max|ref| of the tensor + 1e-4 * |ref|. The
//!   longest sums are fc1's 392 terms and BatchNorm's 8 * 28 * 28 = 6272
//!   values per channel; f32's unit round-off 6e-8 times sqrt(6272) ~ 80,
//!   amplified by BatchNorm's division by a batch standard deviation, stays
//!   well under 1e-4 relative to the tensor's scale;
//! - the f64 path (Candle's conv2d and max-pool on NCHW): 1e-9 of the
//!   tensor's scale.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use sparsity_lab::data::{Batch, Task};
use sparsity_lab::models::{Model, ModelConfig};

fn fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cnn.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/make-fixtures.sh to write it",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn tensor_values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0f64, |m, v| m.max(v.abs()))
}

/// Panics with the first mismatching pairs when `ours` is not within
/// `scale * max|ref| + rel * |ref|` of `reference`.
fn check(what: &str, ours: &[f64], reference: &[f64], scale: f64, rel: f64) {
    check_at(what, ours, reference, scale * max_abs(reference), rel)
}

/// As [`check`] with the absolute part given: `atol + rel * |ref|`.
fn check_at(what: &str, ours: &[f64], reference: &[f64], atol: f64, rel: f64) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let max = max_abs(reference);
    let bad: Vec<String> = ours
        .iter()
        .zip(reference)
        .enumerate()
        .filter(|(_, (a, b))| {
            // Written so that a NaN fails.
            let within = (*a - *b).abs() <= atol + rel * b.abs();
            !within
        })
        .take(5)
        .map(|(i, (a, b))| format!("[{i}] ours {a:e}, torch {b:e}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what} differs from PyTorch (max |ref| {max:e}; stale fixture? run scripts/make-fixtures.sh): {}",
        bad.join("; ")
    );
}

fn build(case: &Value, dtype: DType) -> (Model, Task, Batch) {
    let cfg: ModelConfig = serde_json::from_value(case["model"].clone()).unwrap();
    let task = Task::Classify {
        inputs: 784,
        classes: 10,
    };
    let dev = Device::Cpu;
    let model = cfg.build(&task, 0, dtype, &dev).unwrap();
    let params = case["params"].as_object().unwrap();
    let named = model.named_params();
    assert_eq!(
        named.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        params.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        "parameter names are torch's state_dict names"
    );
    for (k, v) in named {
        let p = &params[&k];
        let shape: Vec<usize> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(v.dims(), shape.as_slice(), "{k}");
        let t = Tensor::from_vec(floats(&p["values"]), shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        v.set(&t).unwrap();
    }
    let x = Tensor::from_vec(floats(&case["x"]), (8, 784), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y: Vec<u32> = case["y"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let y = Tensor::from_vec(y, 8, &dev).unwrap();
    (model, task, Batch { x, y })
}

fn compare(dtype: DType, scale: f64, rel: f64) {
    let doc = fixture();
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (model, task, batch) = build(case, dtype);
        let Model::Cnn(cnn) = &model else {
            panic!("not a cnn")
        };
        let logits = cnn.forward(&batch.x, true, None).unwrap();
        // The step itself (a second train-mode forward would move the
        // running statistics twice): loss and gradients through the
        // training path, then the logits of a fresh copy.
        let (model, task2, batch2) = build(case, dtype);
        let (loss, grads) = model.loss_and_grads(&task2, &batch2).unwrap();
        let _ = task;
        check(
            &format!("{name}: train-mode logits"),
            &tensor_values(&logits),
            &floats(&case["logits_train"]),
            scale,
            rel,
        );
        check(
            &format!("{name}: loss"),
            &[loss],
            &[case["loss"].as_f64().unwrap()],
            scale,
            rel,
        );
        // A gradient's absolute tolerance is relative to the largest
        // gradient of the model: with BatchNorm the conv biases' true
        // gradient is 0 (the mean subtraction cancels them), which f32
        // reaches only to rounding.
        let g_scale = case["grads"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| max_abs(&floats(v)))
            .fold(0f64, f64::max);
        for (k, v) in model.named_params() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {k}"));
            check_at(
                &format!("{name}: gradient of {k}"),
                &tensor_values(g),
                &floats(&case["grads"][&k]),
                scale * g_scale,
                rel,
            );
        }
        let buffers: std::collections::BTreeMap<String, Tensor> = model
            .params()
            .buffers()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        let want = case["buffers"].as_object().unwrap();
        let running: Vec<&String> = buffers.keys().filter(|k| k.contains("running")).collect();
        assert_eq!(running, want.keys().collect::<Vec<_>>(), "{name}: buffers");
        for (k, v) in want {
            check(
                &format!("{name}: {k} after one step"),
                &tensor_values(&buffers[k]),
                &floats(v),
                scale,
                rel,
            );
        }
        for (k, v) in case["num_batches_tracked"].as_object().unwrap() {
            assert_eq!(
                buffers[k].to_scalar::<i64>().unwrap(),
                v.as_i64().unwrap(),
                "{name}: {k}"
            );
        }
        let (eval, _) = model.logits(&task2, &batch2, None).unwrap();
        check(
            &format!("{name}: eval-mode logits"),
            &tensor_values(&eval),
            &floats(&case["logits_eval"]),
            scale,
            rel,
        );
    }
}

#[test]
fn f32_cpu_path_matches_pytorch() {
    compare(DType::F32, 1e-4, 1e-4);
}

#[test]
fn f64_candle_conv_path_matches_pytorch() {
    compare(DType::F64, 1e-9, 1e-9);
}

/// 64 images of 28 x 28: class k is a bright square at a class-dependent
/// place on a faint noise background, so that the CNN learns something in a
/// few steps.
fn tiny_images(n: usize, seed: u64) -> sparsity_lab::data::Split {
    let mut rng = sparsity_lab::rng::Rng::new(seed);
    let mut x = vec![0f32; n * 784];
    let mut y = vec![0u32; n];
    for i in 0..n {
        let k = i % 10;
        y[i] = k as u32;
        for p in 0..784 {
            x[i * 784 + p] = 0.1 * rng.uniform_in(0.0, 1.0) as f32;
        }
        let (r0, c0) = (2 + (k / 5) * 12, 2 + (k % 5) * 5);
        for r in r0..r0 + 8 {
            for c in c0..c0 + 4 {
                x[i * 784 + r * 28 + c] = 1.0;
            }
        }
    }
    sparsity_lab::data::Split::Examples {
        x: Tensor::from_vec(x, (n, 784), &Device::Cpu).unwrap(),
        y: Tensor::from_vec(y, n, &Device::Cpu).unwrap(),
    }
}

fn tiny_run(optimizer: &str, sets: &[(&str, &str)], steps: usize) -> sparsity_lab::train::Trained {
    use sparsity_lab::data::{DataConfig, Dataset};
    use sparsity_lab::train::{RunOptions, TrainConfig};
    let ds = Dataset {
        name: "fashion-mnist".into(),
        task: Task::Classify {
            inputs: 784,
            classes: 10,
        },
        train: tiny_images(256, 1),
        test: tiny_images(100, 2),
        description: "synthetic squares".into(),
        location: None,
    };
    let mut cfg = TrainConfig::new(
        ModelConfig::Cnn(sparsity_lab::models::CnnConfig {
            channels: vec![4, 8],
            pool_every: 1,
            hidden: 16,
            batch_norm: true,
        }),
        DataConfig::by_name("fashion-mnist").unwrap(),
        sparsity_lab::optim::OptimizerConfig::from_text(optimizer, sets.iter().copied()).unwrap(),
    );
    cfg.steps = Some(steps);
    cfg.batch_size = 32;
    cfg.prune_fracs = vec![0.5];
    sparsity_lab::train::run_on(&cfg, &ds, &Device::Cpu, &RunOptions::default()).unwrap()
}

/// A short run records the filter measures (with dead filters from the
/// evaluation pass) beside the dead units of the hidden linear layer, and
/// its checkpoint holds BatchNorm's buffers under torch's names, which the
/// weight measures leave out.
#[test]
fn a_cnn_run_records_filters_and_checkpoints_buffers() {
    let t = tiny_run("adam", &[("lr", "0.01")], 12);
    let rec = &t.record;
    let f = rec.r#final.as_ref().expect("the run finished");
    assert!(f.test_acc > 0.5, "learned the squares: {}", f.test_acc);
    let filters = f.filters.as_ref().expect("filter measures");
    assert_eq!(
        filters.layers.keys().collect::<Vec<_>>(),
        ["conv1", "conv2"]
    );
    assert_eq!(filters.layers["conv1"].filters, 4);
    assert_eq!(filters.total.filters, 12);
    assert!(filters.total.dead.is_some() && filters.total.gamma_small.is_some());
    let dead = f.dead_units.as_ref().unwrap();
    assert_eq!(dead.units, vec![16], "dead units are the hidden layer's");
    // The record's parameter count leaves the buffers out.
    assert_eq!(rec.params, t.model.params().count());
    let bytes = sparsity_lab::train::checkpoint_bytes(&t.model, rec, &[]).unwrap();
    let loaded = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    assert_eq!(
        loaded["bn2.num_batches_tracked"]
            .to_scalar::<i64>()
            .unwrap(),
        12
    );
    let rv = tensor_values(&loaded["bn1.running_var"]);
    assert!(rv.iter().all(|v| *v > 0.0) && rv.iter().any(|v| *v != 1.0));
    let mut named: Vec<(String, Tensor)> = loaded.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let (m, _) = sparsity_lab::train::weight_measures_of(&named).unwrap();
    assert_eq!(m, f.measures, "the checkpoint measures as the record");
    let from_file = sparsity_lab::metrics::filter_measures(&named)
        .unwrap()
        .unwrap();
    assert_eq!(
        from_file.layers["conv2"].small_norm,
        filters.layers["conv2"].small_norm
    );
    // Every evaluation records them too (issue 21: when filters die), and
    // the last one, on the final weights and the same held-out pass, agrees
    // with the final measures exactly.
    assert!(rec.history.len() >= 2);
    for h in &rec.history {
        let hf = h.filters.as_ref().expect("filters at every evaluation");
        assert_eq!(hf.total.filters, 12);
        assert!(hf.total.dead.is_some());
        assert_eq!(
            h.dense_dead.as_ref().expect("dense dead units").units,
            vec![16]
        );
    }
    let last = rec.history.last().unwrap();
    assert_eq!(last.step, 12);
    assert_eq!(last.filters.as_ref(), Some(filters));
    assert_eq!(last.dense_dead.as_ref(), Some(dead));
}

/// BatchNorm's gamma and beta are 1-D, so `exempt_1d` keeps them from
/// decoupled decay while the 4-D conv weights decay.
#[test]
fn exempt_1d_spares_batchnorm_scales() {
    let lr_wd = [
        ("lr", "0.0"),
        ("weight_decay", "0.5"),
        ("exempt_1d", "true"),
    ];
    let (model, task, batch) = build(&fixture()["cases"][0], DType::F32);
    let before = model.params().snapshot().unwrap();
    let cfg = sparsity_lab::optim::OptimizerConfig::from_text("adamw", lr_wd.iter().copied());
    let mut opt = sparsity_lab::optim::build(&cfg.unwrap(), model.named_params()).unwrap();
    opt.set_learning_rate(0.1);
    let (_, grads) = model.loss_and_grads(&task, &batch).unwrap();
    opt.step(&grads).unwrap();
    let after = model.params().snapshot().unwrap();
    let moved = |k: &str| {
        let d = (&after[k] - &before[k]).unwrap().abs().unwrap();
        d.max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    // Adam's first step moves every parameter by about lr; decay adds
    // lr * wd * |w| on the weights only.
    let decayed = |k: &str| {
        let w = (&before[k] * (1.0 - 0.1 * 0.5)).unwrap();
        (&after[k] - w)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(moved("bn1.weight") <= 0.1 + 1e-6);
    assert!(decayed("bn1.weight") > 0.01, "gamma is not decayed");
    assert!(decayed("conv1.weight") <= 0.1 + 1e-6, "conv weights decay");
}

/// Loss and every parameter's gradient of one training step, by
/// `loss_and_grads` (the hand-written step where it applies) or autograd.
fn step_values(model: &Model, task: &Task, batch: &Batch, manual: bool) -> (f64, Vec<Vec<f32>>) {
    let (loss, g) = if manual {
        model.loss_and_grads(task, batch).unwrap()
    } else {
        model.loss_and_grads_autograd(task, batch).unwrap()
    };
    let grads = model
        .named_params()
        .into_iter()
        .map(|(k, v)| {
            g.get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {k}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    (loss, grads)
}

/// A CNN, a random batch of `n` images of `side x side`, and Adam moved a
/// few steps by autograd (so that BatchNorm's gamma and beta are not 1 and
/// 0).
fn random_cnn(cfg: &str, side: usize, n: usize, seed: u64) -> (Model, Task, Batch) {
    use sparsity_lab::rng::Rng;
    let task = Task::Classify {
        inputs: side * side,
        classes: 10,
    };
    let cfg: ModelConfig = serde_json::from_str(cfg).unwrap();
    let model = cfg.build(&task, seed, DType::F32, &Device::Cpu).unwrap();
    let mut rng = Rng::new(seed + 100);
    let x: Vec<f32> = (0..n * side * side).map(|_| rng.normal() as f32).collect();
    let y: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
    let batch = Batch {
        x: Tensor::from_vec(x, (n, side * side), &Device::Cpu).unwrap(),
        y: Tensor::from_vec(y, n, &Device::Cpu).unwrap(),
    };
    let adam = sparsity_lab::optim::OptimizerConfig::from_text("adam", [("lr", "0.01")]).unwrap();
    let mut o = sparsity_lab::optim::build(&adam, model.named_params()).unwrap();
    for _ in 0..3 {
        let (_, g) = model.loss_and_grads_autograd(&task, &batch).unwrap();
        o.step(&g).unwrap();
    }
    (model, task, batch)
}

/// The hand-written CNN step gives autograd's loss and gradients, on fresh
/// random batches (even and odd image sides, one to three blocks), on one
/// and on two threads, and the same bits on both. Both are f32 with
/// different summation orders (the patch matrix's column order, per-image
/// partial sums of BatchNorm's statistics, matmul blocking); BatchNorm's
/// backward divides by the batch's standard deviation, which amplifies
/// them. The bound, 1e-5 of the largest gradient entry of each parameter
/// (about 100 ulps), is the Transformer's and the MLP's; a wrong term (a
/// transposed weight, a missing BatchNorm term) gives differences of order
/// 1.
#[test]
fn manual_step_matches_autograd_on_one_and_two_threads() {
    let cases = [
        (
            r#"{"name": "cnn", "channels": [4, 6], "hidden": 16}"#,
            12usize,
            5usize,
            1u64,
        ),
        (
            r#"{"name": "cnn", "channels": [3, 5, 7], "hidden": 9}"#,
            13,
            3,
            2,
        ),
        (r#"{"name": "cnn"}"#, 28, 8, 3),
        // Pools after blocks 2 and 4 only (a BasicNet's pattern), on an odd
        // side (13 -> 6 -> 3), the last block unpooled.
        (
            r#"{"name": "cnn", "channels": [3, 4, 5, 6, 5], "pool_every": 2, "hidden": 9}"#,
            13,
            4,
            5,
        ),
        // 16 channels first (the pixels read directly, on AVX-512 CPUs),
        // then 16 (small_matmul's 16-wide strip), on an odd side.
        (
            r#"{"name": "cnn", "channels": [16, 16, 32], "pool_every": 2, "hidden": 9}"#,
            13,
            3,
            6,
        ),
    ];
    for (cfg, side, n, seed) in cases {
        let mut per_threads = vec![];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (manual, auto, names) = pool.install(|| {
                let (model, task, batch) = random_cnn(cfg, side, n, seed);
                let names: Vec<String> = model.named_params().into_iter().map(|(k, _)| k).collect();
                let Model::Cnn(cnn) = &model else {
                    panic!("not a cnn")
                };
                assert!(
                    cnn.manual_backward(),
                    "{cfg}: the hand-written step applies"
                );
                let manual = step_values(&model, &task, &batch, true);
                let (model, task, batch) = random_cnn(cfg, side, n, seed);
                (manual, step_values(&model, &task, &batch, false), names)
            });
            let dl = ((manual.0 - auto.0) / auto.0).abs();
            let largest = |g: &[f32]| g.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let model_scale = auto.1.iter().map(|g| largest(g)).fold(0f64, f64::max);
            let mut dg = 0f64;
            for ((a, e), name) in manual.1.iter().zip(&auto.1).zip(&names) {
                // A conv bias's true gradient is 0 under BatchNorm (the
                // mean subtraction cancels it): both sides give rounding
                // noise, measured against the model's largest gradient.
                let scale = if name.starts_with("conv") && name.ends_with("bias") {
                    model_scale
                } else {
                    largest(e)
                };
                for (x, y) in a.iter().zip(e) {
                    dg = dg.max((x - y).abs() as f64 / scale);
                }
            }
            println!("{cfg}, side {side}, {threads} threads: loss {dl:.1e}, gradients {dg:.1e}");
            assert!(
                dl < 1e-5 && dg < 1e-5,
                "{cfg}: loss {dl:e}, gradients {dg:e}"
            );
            per_threads.push(manual);
        }
        assert!(
            per_threads[0] == per_threads[1],
            "{cfg}: one and two threads give different bits"
        );
    }
}

/// Without BatchNorm the hand-written step does not apply: the step goes
/// through autograd, bit for bit.
#[test]
fn without_batch_norm_the_step_falls_back_to_autograd() {
    let cfg = r#"{"name": "cnn", "channels": [4, 6], "hidden": 16, "batch_norm": false}"#;
    let (model, task, batch) = random_cnn(cfg, 12, 5, 4);
    let Model::Cnn(cnn) = &model else {
        panic!("not a cnn")
    };
    assert!(!cnn.manual_backward());
    let a = step_values(&model, &task, &batch, true);
    let b = step_values(&model, &task, &batch, false);
    assert!(a == b, "the fallback is autograd's step");
}
