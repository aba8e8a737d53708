//! The CNN against PyTorch: `tests/golden/cnn.json`, written by
//! `tests/golden/make_cnn_fixture.py` (run `scripts/make-fixtures.sh` after
//! changing it). One train-mode forward and backward of a small CNN
//! (channels [4, 8], hidden 16) on 8 images, with the weights given
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
        .filter(|(_, (a, b))| !((*a - *b).abs() <= atol + rel * b.abs()))
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
