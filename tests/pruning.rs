//! Pruning in training, through the public API: masks in every optimizer
//! and regularisation mode on both backends, the state policies, the cubic
//! schedule, rewinding, and the prunability scores.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use sparsity_lab::data::DataConfig;
use sparsity_lab::data::synthetic::TeacherConfig;
use sparsity_lab::models::{MlpConfig, ModelConfig};
use sparsity_lab::optim::{self, Backend, OptimizerConfig, OptimizerKind, StatePolicy};
use sparsity_lab::prune::{self, Criterion, PruneConfig, Scope};
use sparsity_lab::rng::Rng;
use sparsity_lab::train::{self, PrunePoint, RunOptions, Status, TrainConfig};

fn randn(shape: &[usize], scale: f64, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Every regularisation mode: none, coupled L2, decoupled decay, L1
/// subgradient, L1 prox, and the same with `exempt_1d`.
const REGS: [&[(&str, &str)]; 8] = [
    &[],
    &[("weight_decay", "0.1")],
    &[("weight_decay", "0.1"), ("decoupled_weight_decay", "true")],
    &[("l1", "0.01")],
    &[("l1_prox", "0.05")],
    &[
        ("l1", "0.01"),
        ("weight_decay", "0.1"),
        ("exempt_1d", "true"),
    ],
    &[
        ("l1_prox", "0.05"),
        ("weight_decay", "0.1"),
        ("exempt_1d", "true"),
    ],
    &[
        ("weight_decay", "0.1"),
        ("decoupled_weight_decay", "true"),
        ("exempt_1d", "true"),
    ],
];

/// Settings that give each optimizer all its state buffers (the registry's),
/// and AdaGrad a nonzero one from the start.
fn extra(kind: OptimizerKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        OptimizerKind::Adagrad => &[("initial_accumulator_value", "0.1")],
        _ => kind.info().full_state,
    }
}

/// None where the optimizer does not take a key of `reg` (the decoupling
/// flag, for those whose decay is always decoupled).
fn config(kind: OptimizerKind, reg: &[(&str, &str)]) -> Option<OptimizerConfig> {
    if reg.iter().any(|(k, _)| !kind.accepts(k)) {
        return None;
    }
    let pairs = extra(kind)
        .iter()
        .chain(reg.iter())
        .chain(&[("lr", "0.01")])
        .copied();
    Some(OptimizerConfig::from_text(kind.name(), pairs).unwrap())
}

/// A weight matrix and a bias, with four steps of random gradients taken
/// before any mask (so that every state buffer is non-zero).
struct Setup {
    w: Var,
    b: Var,
    opt: Box<dyn optim::Optimizer>,
    rng: Rng,
}

impl Setup {
    fn new(cfg: &OptimizerConfig, backend: Backend) -> Self {
        let mut rng = Rng::new(5);
        let w = Var::from_tensor(&randn(&[6, 7], 1.0, &mut rng)).unwrap();
        let b = Var::from_tensor(&randn(&[6], 1.0, &mut rng)).unwrap();
        let opt = optim::build_with(
            cfg,
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            backend,
        )
        .unwrap();
        let mut s = Self { w, b, opt, rng };
        for _ in 0..4 {
            s.step();
        }
        s
    }

    fn step(&mut self) {
        let mut g = GradStore::default();
        g.insert(self.w.as_tensor(), randn(&[6, 7], 0.5, &mut self.rng));
        g.insert(self.b.as_tensor(), randn(&[6], 0.5, &mut self.rng));
        self.opt.step(&g).unwrap();
    }
}

/// Every other element of `w` and the first half of `b`.
fn masks() -> BTreeMap<String, Tensor> {
    let w: Vec<f32> = (0..42).map(|i| (i % 2) as f32).collect();
    let b: Vec<f32> = (0..6).map(|i| if i < 3 { 0.0 } else { 1.0 }).collect();
    BTreeMap::from([
        (
            "w".to_string(),
            Tensor::from_vec(w, (6, 7), &Device::Cpu).unwrap(),
        ),
        (
            "b".to_string(),
            Tensor::from_vec(b, 6, &Device::Cpu).unwrap(),
        ),
    ])
}

#[test]
fn a_masked_weight_stays_exactly_zero_through_every_optimizer_and_regularisation() {
    let m = masks();
    let mask_w = vals(&m["w"]);
    let mask_b = vals(&m["b"]);
    for kind in OptimizerKind::ALL {
        for reg in REGS {
            let Some(cfg) = config(kind, reg) else {
                continue;
            };
            for backend in [Backend::Reference, Backend::Auto] {
                for policy in [StatePolicy::Keep, StatePolicy::Zero, StatePolicy::Reset] {
                    let what = format!("{kind} {reg:?} {backend:?} {policy:?}");
                    let mut s = Setup::new(&cfg, backend);
                    s.opt.set_masks(m.clone(), policy).unwrap();
                    let before_w = vals(s.w.as_tensor());
                    for _ in 0..5 {
                        s.step();
                        for (p, mask) in [(&s.w, &mask_w), (&s.b, &mask_b)] {
                            for (x, k) in vals(p.as_tensor()).iter().zip(mask) {
                                if *k == 0.0 {
                                    // Exactly +0 or -0.
                                    assert_eq!(*x, 0.0, "{what}");
                                }
                            }
                        }
                    }
                    // The unmasked weights did train: the mask is not a
                    // frozen optimizer.
                    let after_w = vals(s.w.as_tensor());
                    let moved = (0..42)
                        .filter(|&i| mask_w[i] == 1.0 && after_w[i] != before_w[i])
                        .count();
                    assert!(moved > 15, "{what}: only {moved} of 21 kept weights moved");
                    assert_eq!(s.opt.masks().len(), 2, "{what}");
                }
            }
        }
    }
}

#[test]
fn without_the_mask_the_same_coordinates_would_move() {
    // The control of the test above: with Adam's momentum kept, masked
    // coordinates would move if the optimizer ignored the mask.
    let cfg = config(OptimizerKind::Adam, &[]).unwrap();
    let mut s = Setup::new(&cfg, Backend::Auto);
    s.w.set(&(s.w.as_tensor() * &masks()["w"]).unwrap())
        .unwrap();
    s.step();
    let w = vals(s.w.as_tensor());
    assert!(w.iter().all(|x| *x != 0.0));
}

fn state_of(opt: &dyn optim::Optimizer, p: &str) -> BTreeMap<String, Vec<f64>> {
    opt.state(p)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, vals(&t)))
        .collect()
}

/// The policies of docs/pruning.md: keep leaves the state as it was; zero multiplies
/// every per-coordinate buffer by the mask and keeps the step count; reset
/// restarts every parameter's state (masked or not) as at construction,
/// step counts at 0.
#[test]
fn the_three_state_policies_do_what_the_readme_says() {
    let m = masks();
    for kind in OptimizerKind::ALL {
        let cfg = config(kind, &[]).unwrap();
        for backend in [Backend::Reference, Backend::Auto] {
            let what = format!("{kind} {backend:?}");
            let fresh_opt = optim::build_with(
                &cfg,
                vec![
                    ("w".into(), Var::new(&[[0f32; 7]; 6], &Device::Cpu).unwrap()),
                    ("b".into(), Var::new(&[0f32; 6], &Device::Cpu).unwrap()),
                ],
                backend,
            )
            .unwrap();
            for policy in [StatePolicy::Keep, StatePolicy::Zero, StatePolicy::Reset] {
                let mut s = Setup::new(&cfg, backend);
                let before: Vec<_> = ["b", "w"].map(|p| state_of(s.opt.as_ref(), p)).into();
                s.opt.set_masks(m.clone(), policy).unwrap();
                for (i, p) in ["b", "w"].into_iter().enumerate() {
                    let after = state_of(s.opt.as_ref(), p);
                    let mask = vals(&m[p]);
                    assert_eq!(
                        after.keys().collect::<Vec<_>>(),
                        before[i].keys().collect::<Vec<_>>()
                    );
                    for (name, now) in &after {
                        let was = &before[i][name];
                        let per_coord = now.len() == mask.len();
                        match policy {
                            StatePolicy::Keep => assert_eq!(now, was, "{what} {p}.{name}"),
                            StatePolicy::Zero if per_coord => {
                                let want: Vec<f64> = was
                                    .iter()
                                    .zip(&mask)
                                    .map(|(x, k)| if *k == 0.0 { 0.0 } else { *x })
                                    .collect();
                                assert_eq!(now, &want, "{what} {p}.{name}");
                                assert!(was.iter().zip(&mask).any(|(x, k)| *k == 0.0 && *x != 0.0));
                            }
                            // step (and NAdam's mu_product) are kept.
                            StatePolicy::Zero => assert_eq!(now, was, "{what} {p}.{name}"),
                            StatePolicy::Reset => {
                                let init = state_of(fresh_opt.as_ref(), p);
                                assert_eq!(now, &init[name], "{what} {p}.{name}");
                                assert_ne!(now, was, "{what} {p}.{name}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn masks_are_checked() {
    let cfg = config(OptimizerKind::Sgd, &[]).unwrap();
    let mut s = Setup::new(&cfg, Backend::Auto);
    let bad = BTreeMap::from([(
        "x".to_string(),
        Tensor::ones(6, DType::F32, &Device::Cpu).unwrap(),
    )]);
    let e = s.opt.set_masks(bad, StatePolicy::Keep).unwrap_err();
    assert!(format!("{e}").contains("`x`"), "{e}");
    let bad = BTreeMap::from([(
        "b".to_string(),
        Tensor::ones(5, DType::F32, &Device::Cpu).unwrap(),
    )]);
    assert!(format!("{}", s.opt.set_masks(bad, StatePolicy::Keep).unwrap_err()).contains("shape"));
    let half = (Tensor::ones(6, DType::F32, &Device::Cpu).unwrap() * 0.5).unwrap();
    let bad = BTreeMap::from([("b".to_string(), half)]);
    assert!(format!("{}", s.opt.set_masks(bad, StatePolicy::Keep).unwrap_err()).contains("0.5"));
}

#[test]
fn the_cubic_schedule_starts_and_ends_at_its_sparsities() {
    assert_eq!(prune::cubic(10, 10, 110, 0.0, 0.9), 0.0);
    assert_eq!(prune::cubic(110, 10, 110, 0.0, 0.9), 0.9);
    // Halfway: sf + (si - sf) / 8.
    assert!((prune::cubic(60, 10, 110, 0.0, 0.8) - 0.7).abs() < 1e-12);
    let mut last = 0.0;
    for t in 10..=110 {
        let s = prune::cubic(t, 10, 110, 0.1, 0.9);
        assert!(s >= last);
        last = s;
    }
}

fn teacher_run(opt: OptimizerConfig, steps: usize, pruning: PruneConfig) -> TrainConfig {
    let mut c = TrainConfig::new(
        ModelConfig::Mlp(MlpConfig { hidden: vec![32] }),
        DataConfig::Teacher(TeacherConfig {
            inputs: 20,
            hidden: 16,
            classes: 4,
            train_size: 2000,
            test_size: 500,
            ..Default::default()
        }),
        opt,
    );
    c.steps = Some(steps);
    c.batch_size = 32;
    c.eval_every = Some(1);
    c.pruning = Some(pruning);
    c
}

fn gradual(sparsity: f64, scope: Scope, criterion: Criterion) -> PruneConfig {
    toml::from_str(&format!(
        "method = \"gradual\"\nsparsity = {sparsity}\nstart = 0.25\nend = 0.75\nfrequency = 4\nscope = \"{}\"\ncriterion = \"{}\"",
        match scope {
            Scope::Global => "global",
            Scope::Layer => "layer",
        },
        match criterion {
            Criterion::Magnitude => "magnitude",
            Criterion::Wv => "wv",
        }
    ))
    .unwrap()
}

#[test]
fn gradual_pruning_hits_its_target_sparsity_at_its_end_step() {
    for (opt, criterion) in [
        ("sgd", Criterion::Magnitude),
        ("adam", Criterion::Magnitude),
        ("adam", Criterion::Wv),
        ("adagrad", Criterion::Wv),
    ] {
        for scope in [Scope::Global, Scope::Layer] {
            let cfg = teacher_run(
                OptimizerConfig::from_text(opt, [("lr", "0.01")]).unwrap(),
                40,
                gradual(0.8, scope, criterion),
            );
            let rec = train::run(&cfg, &Device::Cpu, &RunOptions::default())
                .unwrap()
                .record;
            assert_eq!(rec.status, Status::Done);
            let at = |step: usize| {
                rec.history
                    .iter()
                    .find(|p| p.step == step)
                    .unwrap()
                    .weights_exact_zero_frac
            };
            // Pruning starts at step 10 and ends at step 30 (0.25 and 0.75
            // of 40); no weight is exactly zero before.
            assert_eq!(at(9), 0.0, "{opt} {scope:?}");
            // At t0 the schedule is at its initial sparsity, 0.
            assert_eq!(at(10), 0.0);
            assert!(at(14) > 0.0);
            assert!(at(29) < 0.8, "{opt} {scope:?}: {}", at(29));
            // From the end step on, the target, to within one weight
            // (a 20x32 and a 32x4 matrix: 768 weights; floor(0.8 * n)
            // weights go per scope: one tensor or two).
            let near = |s: f64| (s - 0.8).abs() <= 2.0 / 768.0;
            for step in [30, 35, 40] {
                let s = at(step);
                assert!(near(s), "{opt} {scope:?} {step}: {s}");
            }
            let scores = rec.r#final.unwrap().prune_scores.unwrap();
            let ms = scores.mask_sparsity.unwrap();
            assert!(near(ms), "{ms}");
            assert_eq!(ms, at(40));
        }
    }
}

#[test]
fn rewinding_restores_the_rewound_weights_bit_for_bit() {
    let cfg: PruneConfig =
        toml::from_str("method = \"imp\"\nrounds = 2\nrate = 0.5\nrewind_step = 5").unwrap();
    let run = teacher_run(
        OptimizerConfig::from_text("adam", [("lr", "0.01")]).unwrap(),
        20,
        cfg.clone(),
    );
    run.validate().unwrap();
    let ds = run.data.load(0).unwrap();
    let model = run
        .model
        .build(&ds.task, 0, DType::F32, &Device::Cpu)
        .unwrap();
    let mut opt = optim::build(&run.optimizer, model.named_params()).unwrap();
    let mut plan = prune::Plan::new(Some(&cfg), 20, 63).unwrap();
    assert_eq!(plan.total_steps(), 20 + 2 * 15);
    plan.start(&model).unwrap();
    let mut batcher = sparsity_lab::data::Batcher::new(&ds.train, 32, 0, 0, &Device::Cpu).unwrap();
    let mut at_k = None;
    for t in 0..plan.total_steps() {
        let batch = batcher.next(&ds.train).unwrap();
        let (_, grads) = model.loss_and_grads(&ds.task, &batch).unwrap();
        opt.step(&grads).unwrap();
        plan.after_step(t + 1, &model, opt.as_mut()).unwrap();
        if t + 1 == 5 {
            at_k = Some(model.params().snapshot().unwrap());
        }
        if t + 1 == 20 || t + 1 == 35 {
            let round = if t + 1 == 20 { 1 } else { 2 };
            let snap = at_k.as_ref().unwrap();
            let masks = opt.masks();
            let mut zeros = 0;
            let mut n = 0;
            for (name, v) in model.named_params() {
                let now = vals(v.as_tensor());
                let then = vals(&snap[&name]);
                match masks.get(&name) {
                    // Weights: the rewound values where kept, zero where
                    // pruned; bit for bit.
                    Some(m) => {
                        for ((x, y), k) in now.iter().zip(&then).zip(vals(m)) {
                            if k == 0.0 {
                                assert_eq!(*x, 0.0, "{name}");
                            } else {
                                assert_eq!(x.to_bits(), y.to_bits(), "{name}");
                            }
                            zeros += (k == 0.0) as usize;
                            n += 1;
                        }
                    }
                    None => assert_eq!(now, then, "{name}"),
                }
            }
            let want = 1.0 - 0.5f64.powi(round);
            let s = zeros as f64 / n as f64;
            assert!((want..want + 0.01).contains(&s), "round {round}: {s}");
            // A new optimizer at the rewound weights: step counts at 0.
            let st = opt.state("fc0.weight").unwrap();
            let step = st.iter().find(|(k, _)| k == "step").unwrap();
            assert_eq!(step.1.to_scalar::<f64>().unwrap(), 0.0);
        }
    }
}

#[test]
fn oneshot_with_finetuning_trains_on_with_the_mask() {
    let cfg: PruneConfig = toml::from_str(
        "method = \"oneshot\"\nsparsity = 0.9\nfinetune_epochs = 1\nstate = \"zero\"",
    )
    .unwrap();
    let run = teacher_run(
        OptimizerConfig::from_text("adam", [("lr", "0.01")]).unwrap(),
        30,
        cfg,
    );
    let rec = train::run(&run, &Device::Cpu, &RunOptions::default())
        .unwrap()
        .record;
    // 2000 examples at batch 32: 63 steps per epoch of fine-tuning.
    assert_eq!(rec.steps_done, 30 + 63);
    let zero = |step: usize| {
        rec.history
            .iter()
            .find(|p| p.step == step)
            .unwrap()
            .weights_exact_zero_frac
    };
    assert_eq!(zero(29), 0.0);
    for step in [30, 60, 93] {
        assert!(
            (zero(step) - 0.9).abs() <= 1.0 / 768.0,
            "{step}: {}",
            zero(step)
        );
    }
    let f = rec.r#final.unwrap();
    let s = f.prune_scores.unwrap();
    // The network is already 90 % sparse: the curve is flat up to 0.9.
    assert!(s.max_sparsity_within_1pt >= 0.9);
    assert!(
        f.pruning
            .iter()
            .filter(|p| p.frac <= 0.9)
            .all(|p| p.test_acc == f.test_acc)
    );
}

#[test]
fn prunability_scores_from_a_curve() {
    let curve = |accs: [f64; 7]| -> Vec<PrunePoint> {
        prune::GRID[1..]
            .iter()
            .zip(accs)
            .map(|(s, a)| PrunePoint {
                frac: *s,
                test_acc: a,
                test_loss: 0.0,
            })
            .collect()
    };
    let flat = prune::prune_scores(0.9, &curve([0.9; 7])).unwrap();
    assert!((flat.auc - 0.9).abs() < 1e-12);
    assert_eq!(flat.max_sparsity_within_1pt, 0.99);
    // Full accuracy up to 98 %, none at 99 %: the last segment, from
    // log10(50) to 2 on the axis log10(1/(1-s)), holds half its area.
    let s = prune::prune_scores(1.0, &curve([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])).unwrap();
    let want = (50f64.log10() + 0.5 * (2.0 - 50f64.log10())) / 2.0;
    assert!((s.auc - want).abs() < 1e-12, "{} {want}", s.auc);
    assert_eq!(s.max_sparsity_within_1pt, 0.98);
    // 0.5 points down at 50 %, 1.5 points at 70 %: within 1 point ends at 50 %.
    let s = prune::prune_scores(0.9, &curve([0.895, 0.885, 0.5, 0.4, 0.3, 0.2, 0.1])).unwrap();
    assert_eq!(s.max_sparsity_within_1pt, 0.5);
    // A curve that misses a grid point has no scores.
    assert!(prune::prune_scores(0.9, &curve([0.9; 7])[1..]).is_none());
}

#[test]
fn bad_pruning_settings_are_one_line_errors_naming_the_key() {
    let e = toml::from_str::<PruneConfig>("method = \"gradual\"\nsparsty = 0.9").unwrap_err();
    assert!(e.to_string().contains("sparsty"), "{e}");
    let opt = |name: &str| OptimizerConfig::from_text(name, [("lr", "0.1")]).unwrap();
    let check = |text: &str, name: &str| {
        let c: PruneConfig = toml::from_str(text).unwrap();
        format!("{:#}", c.validate(&opt(name)).unwrap_err())
    };
    let e = check("method = \"none\"\ncriterion = \"wv\"", "sgd");
    assert!(
        e.contains("criterion") && e.contains("sgd") && !e.contains('\n'),
        "{e}"
    );
    let e = check("method = \"oneshot\"\nsparsity = 0.9", "adam");
    assert!(e.contains("pruning.finetune_epochs"), "{e}");
    let e = check(
        "method = \"oneshot\"\nsparsity = 0.9\nfinetune_epochs = 1\nrate = 0.2",
        "adam",
    );
    assert!(e.contains("pruning.rate"), "{e}");
    let e = check(
        "method = \"imp\"\nrounds = 2\nrate = 0.5\nrewind_step = 0\nstate = \"zero\"",
        "adam",
    );
    assert!(e.contains("pruning.state"), "{e}");
    let e = check(
        "method = \"gradual\"\nsparsity = 1.5\nstart = 0.1\nend = 0.5\nfrequency = 3",
        "adam",
    );
    assert!(e.contains("pruning.sparsity"), "{e}");
    for name in ["adam", "adamw", "adagrad", "rmsprop", "nadam"] {
        let c: PruneConfig = toml::from_str("method = \"none\"\ncriterion = \"wv\"").unwrap();
        c.validate(&opt(name)).unwrap();
    }
}
