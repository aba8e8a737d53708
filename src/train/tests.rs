use anyhow::Result;
use candle_core::{DType, Device};

use super::*;
use crate::data::{DataConfig, Dataset, Split, Task};
use crate::metrics::{self, LogHistogram, ModelMeasures};
use crate::models::ModelConfig;
use crate::optim::OptimizerConfig;

fn teacher_cfg() -> TrainConfig {
    let mut c = TrainConfig::new(
        ModelConfig::by_name("mlp").unwrap(),
        DataConfig::Teacher(crate::data::synthetic::TeacherConfig {
            train_size: 50,
            test_size: 20,
            ..Default::default()
        }),
        OptimizerConfig::from_pairs("sgd", vec![]).unwrap(),
    );
    c.steps = Some(2);
    c
}

fn usage_msg(r: Result<()>) -> String {
    let e = r.unwrap_err();
    assert!(crate::error::is_usage(&e), "{e:#}");
    format!("{e:#}")
}

#[test]
fn sizes_and_limits_are_refused_before_training() {
    let mut c = teacher_cfg();
    c.validate().unwrap();
    c.model = ModelConfig::Mlp(crate::models::MlpConfig { hidden: vec![0] });
    assert!(usage_msg(c.validate()).contains("hidden"));
    c.model = ModelConfig::Mlp(crate::models::MlpConfig {
        hidden: vec![100_000_000],
    });
    assert!(usage_msg(c.validate()).contains("memory"));
    let mut t = TrainConfig::new(
        ModelConfig::by_name("transformer").unwrap(),
        DataConfig::by_name("modadd").unwrap(),
        OptimizerConfig::from_pairs("adam", vec![]).unwrap(),
    );
    t.steps = Some(1);
    t.validate().unwrap();
    for (key, msg) in [
        ("d_model", "d_model"),
        ("heads", "heads"),
        ("layers", "layers"),
        ("context", "context"),
    ] {
        let mut bad = t.clone();
        let ModelConfig::Transformer(m) = &mut bad.model else {
            unreachable!()
        };
        match key {
            "d_model" => m.d_model = 0,
            "heads" => m.heads = 0,
            "layers" => m.layers = 0,
            _ => m.context = 0,
        }
        assert!(usage_msg(bad.validate()).contains(msg), "{key}");
    }
    let ModelConfig::Transformer(m) = &mut t.model else {
        unreachable!()
    };
    m.heads = 3;
    assert!(usage_msg(t.validate()).contains("multiple of heads"));
    let mut img = teacher_cfg();
    img.data = DataConfig::Mnist(crate::data::ImageConfig {
        train_limit: Some(0),
        ..Default::default()
    });
    assert!(usage_msg(img.validate()).contains("train_limit"));
    img.model = ModelConfig::by_name("transformer").unwrap();
    img.data = DataConfig::by_name("mnist").unwrap();
    assert!(usage_msg(img.validate()).contains("cannot learn"));
}

#[test]
fn param_count_is_the_built_models() {
    let dev = Device::Cpu;
    for (model, data) in [("mlp", "teacher"), ("transformer", "modadd")] {
        let m = ModelConfig::by_name(model).unwrap();
        let (task, _) = DataConfig::by_name(data).unwrap().estimate();
        let built = m.build(&task, 0, DType::F32, &dev).unwrap();
        assert_eq!(
            m.param_count(&task),
            built.params().count() as f64,
            "{model}"
        );
    }
}

#[test]
fn data_checks_need_a_window_in_each_split_and_held_out_data() {
    let mut c = teacher_cfg();
    c.model = ModelConfig::by_name("transformer").unwrap();
    c.data = DataConfig::by_name("text").unwrap();
    let ModelConfig::Transformer(m) = &mut c.model else {
        unreachable!()
    };
    m.context = 100;
    let ds = |train: usize, test: usize| Dataset {
        name: "text".into(),
        task: Task::NextToken { vocab: 5 },
        train: Split::Stream {
            tokens: vec![0; train],
        },
        test: Split::Stream {
            tokens: vec![0; test],
        },
        description: "text f: 1000 characters".into(),
        location: Some("f (1000 chars)".into()),
    };
    c.check_data(&ds(900, 101)).unwrap();
    let msg = usage_msg(c.check_data(&ds(900, 100)));
    assert!(msg.contains("--context 99"), "{msg}");
    assert!(usage_msg(c.check_data(&ds(100, 900))).contains("context 100"));
    assert!(usage_msg(c.check_data(&ds(900, 0))).contains("held-out"));
}

#[test]
fn a_non_finite_final_measure_is_named() {
    let m = metrics::Measures::of(&[1.0, 2.0]);
    let mut f = Final {
        train_loss: 0.5,
        test_loss: 0.4,
        test_acc: 0.9,
        measures: ModelMeasures {
            tensors: Default::default(),
            weights: m.clone(),
            biases: m.clone(),
            total: m,
        },
        dead_units: None,
        filters: None,
        pruning: vec![PrunePoint {
            frac: 0.5,
            test_acc: 0.8,
            test_loss: 0.6,
        }],
        weight_histogram: LogHistogram::of(&[], -1.0, 1.0, 1.0),
        input_activity: None,
        gradient_buckets: None,
        prune_scores: None,
        shrinkage: None,
    };
    assert_eq!(f.first_non_finite(), None);
    f.pruning[0].test_loss = f64::INFINITY;
    assert_eq!(
        f.first_non_finite().as_deref(),
        Some("test loss at 50% pruned")
    );
    f.test_loss = f64::NAN;
    assert_eq!(f.first_non_finite().as_deref(), Some("test loss"));
    f.measures.weights = metrics::Measures::of(&[f64::NAN]);
    assert!(
        f.first_non_finite()
            .unwrap()
            .contains("values of the weights")
    );
}

#[test]
fn records_with_non_finite_numbers_read_back() {
    let p = EvalPoint {
        step: 3,
        epoch: 0.5,
        lr: 0.1,
        train_loss: Some(f64::NAN),
        test_loss: f64::NAN,
        test_acc: 0.1,
        weights_exact_zero_frac: 0.0,
        weights_near_zero_frac: Default::default(),
        weights_rel_near_zero_frac: f64::INFINITY,
        weights_scale_rel_near_zero_frac: Default::default(),
        weights_dist_init: None,
        weights_shrinkage: Default::default(),
        filters: None,
        dense_dead: None,
    };
    let json = serde_json::to_string(&p).unwrap();
    let back: EvalPoint = serde_json::from_str(&json).unwrap();
    assert!(back.test_loss.is_nan() && back.train_loss.is_none());
}

#[test]
fn warmup_cosine_schedule() {
    let s = Schedule::WarmupCosine {
        warmup_steps: 10,
        min_lr_frac: 0.1,
    };
    assert!((s.lr(1.0, 0, 110) - 0.1).abs() < 1e-12);
    assert!((s.lr(1.0, 9, 110) - 1.0).abs() < 1e-12);
    assert!((s.lr(1.0, 10, 110) - 1.0).abs() < 1e-12);
    assert!((s.lr(1.0, 60, 110) - 0.55).abs() < 1e-12);
    assert!((s.lr(1.0, 110, 110) - 0.1).abs() < 1e-12);
    assert_eq!(Schedule::Constant.lr(0.3, 5, 10), 0.3);
}
