//! Tests of the parent module (kept apart so the module file holds only its code).

use super::*;

fn s(config: &str, lr: f64, seed: u64, value: Option<f64>) -> Sample {
    Sample {
        task: "t".into(),
        config: config.into(),
        lr,
        seed,
        value,
    }
}

/// Three seeds over three learning rates; by hand: means 0.80, 0.90,
/// 0.88; the winner 0.1; its paired differences over lr 0.01 are
/// 0.10, 0.12, 0.08 (mean 0.10, sd 0.02, SE 0.02/√3 = 0.011547), over
/// lr 1 they are 0.00, 0.04, 0.02 (mean 0.02, sd 0.02, SE 0.011547:
/// 0.02 < 2 SE = 0.023094, within noise).
fn grid() -> Vec<Sample> {
    vec![
        s("A", 0.01, 0, Some(0.80)),
        s("A", 0.01, 1, Some(0.78)),
        s("A", 0.01, 2, Some(0.82)),
        s("A", 0.1, 0, Some(0.90)),
        s("A", 0.1, 1, Some(0.90)),
        s("A", 0.1, 2, Some(0.90)),
        s("A", 1.0, 0, Some(0.90)),
        s("A", 1.0, 1, Some(0.86)),
        s("A", 1.0, 2, Some(0.88)),
    ]
}

#[test]
fn winner_margins_and_their_standard_errors_by_hand() {
    let c = &choose(&grid(), true)[0];
    assert_eq!(c.lr(), Some(0.1));
    let (m, se) = c.points[1].mean_se().unwrap();
    assert!((m - 0.90).abs() < 1e-12 && se.unwrap().abs() < 1e-12);
    let se3 = 0.02 / 3f64.sqrt();
    let Neighbour::Margin(b) = c.below else {
        panic!("{:?}", c.below)
    };
    assert_eq!((b.lr, b.n), (0.01, 3));
    assert!((b.mean - 0.10).abs() < 1e-12, "{b:?}");
    assert!((b.se.unwrap() - se3).abs() < 1e-12, "{b:?}");
    assert!(!b.within_noise());
    let Neighbour::Margin(a) = c.above else {
        panic!("{:?}", c.above)
    };
    assert_eq!(a.lr, 1.0);
    assert!((a.mean - 0.02).abs() < 1e-12 && (a.se.unwrap() - se3).abs() < 1e-12);
    assert!(a.within_noise() && c.within_noise());
}

#[test]
fn the_mean_over_seeds_decides_not_one_seed() {
    // Seed 0 alone would pick lr 1 (0.95 > 0.90); the mean picks 0.1.
    let mut g = grid();
    g[6].value = Some(0.95);
    g[7].value = Some(0.80);
    let c = &choose(&g, true)[0];
    assert_eq!(c.lr(), Some(0.1));
    let Neighbour::Margin(a) = c.above else {
        panic!()
    };
    // Differences 0.90-0.95, 0.90-0.80, 0.90-0.88: mean 0.07 / 3.
    assert!((a.mean - 0.07 / 3.0).abs() < 1e-12, "{a:?}");
}

#[test]
fn an_unfinished_seed_rules_a_learning_rate_out() {
    // lr 1 would win on its two finished seeds, but one diverged.
    let mut g = grid();
    g[6].value = Some(0.99);
    g[7].value = Some(0.99);
    g[8].value = None;
    let c = &choose(&g, true)[0];
    assert_eq!(c.lr(), Some(0.1));
    assert_eq!(c.above, Neighbour::Unfinished { lr: 1.0 });
    assert_eq!(c.points[2].unfinished, 1);
}

#[test]
fn a_winner_at_the_end_of_the_grid_has_one_neighbour() {
    let g: Vec<Sample> = grid().into_iter().filter(|s| s.lr < 1.0).collect();
    let c = &choose(&g, true)[0];
    assert_eq!(c.lr(), Some(0.1));
    assert_eq!(c.above, Neighbour::Edge);
    assert!(!c.within_noise());
    // Lower is better: the lowest mean wins, margins stay positive.
    let c = &choose(&g, false)[0];
    assert_eq!(c.lr(), Some(0.01));
    assert_eq!(c.below, Neighbour::Edge);
    let Neighbour::Margin(a) = c.above else {
        panic!()
    };
    assert!((a.mean - 0.10).abs() < 1e-12);
}

#[test]
fn one_seed_has_no_standard_error_and_is_never_clear_of_noise() {
    let g: Vec<Sample> = grid().into_iter().filter(|s| s.seed == 0).collect();
    let c = &choose(&g, true)[0];
    // 0.90 and 0.90 tie: the smaller learning rate wins.
    assert_eq!(c.lr(), Some(0.1));
    let Neighbour::Margin(b) = c.below else {
        panic!()
    };
    assert_eq!((b.n, b.se), (1, None));
    assert!(b.within_noise());
}

#[test]
fn no_finished_learning_rate_means_no_winner() {
    let g = vec![s("A", 0.1, 0, None), s("B", 0.1, 0, Some(0.5))];
    let cs = choose(&g, true);
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0].winner, None);
    assert!(markdown(&cs, Criterion::default()).contains("| A | – | no learning rate"));
    assert_eq!(cs[1].lr(), Some(0.1));
}

#[test]
fn the_tables_show_the_winner_its_margins_and_the_noise_flag() {
    let cs = choose(&grid(), true);
    let md = markdown(&cs, Criterion::LastEpochAccuracy);
    assert!(
        md.contains("| A ‡ | 0.1 | 90.00 ± 0.00 | 3 | 0.01: +10.00 ± 1.15 | 1: +2.00 ± 1.15 (within noise) |"),
        "{md}"
    );
    let csv = csv(&cs, true);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[1],
        "t,A,0.01,3,0,0.800000,0.011547,0.049683,0,0.100000,0.011547,0"
    );
    assert_eq!(rows[2], "t,A,0.1,3,0,0.900000,0.000000,0.000000,1,,,");
    assert!(rows[3].ends_with(",0,0.020000,0.011547,1"), "{}", rows[3]);
}

/// A finished run of 2 epochs of 4 steps, evaluated every 2 steps, with
/// held-out accuracies 0.5 (step 2), 0.6 (4), 0.9 (6) and 0.7 (8).
fn record() -> RunRecord {
    use crate::data::DataConfig;
    use crate::models::ModelConfig;
    use crate::optim::OptimizerConfig;
    use crate::train::{EvalPoint, TrainConfig};
    let cfg = TrainConfig::new(
        ModelConfig::by_name("mlp").unwrap(),
        DataConfig::Teacher(Default::default()),
        OptimizerConfig::from_pairs("sgd", vec![]).unwrap(),
    );
    let point = |step: usize, acc: f64| EvalPoint {
        step,
        epoch: step as f64 / 4.0,
        lr: 0.1,
        train_loss: (step > 0).then_some(1.0),
        test_loss: 1.0,
        test_acc: acc,
        weights_exact_zero_frac: 0.0,
        weights_near_zero_frac: Default::default(),
        weights_rel_near_zero_frac: 0.0,
        weights_scale_rel_near_zero_frac: Default::default(),
        weights_dist_init: None,
        weights_shrinkage: Default::default(),
        filters: None,
        dense_dead: None,
    };
    RunRecord {
        status: Status::Done,
        error: None,
        config: cfg,
        seed: 0,
        device: "cpu".into(),
        data: String::new(),
        params: 0,
        optimizer_state_bytes: 0,
        steps_done: 8,
        history: vec![
            point(0, 0.1),
            point(2, 0.5),
            point(4, 0.6),
            point(6, 0.9),
            point(8, 0.7),
        ],
        r#final: None,
        wall_seconds: 0.0,
        provenance: None,
        checkpoint: None,
    }
}

#[test]
fn the_criterion_averages_the_last_epoch_or_takes_the_last_evaluation() {
    let mut r = record();
    // Epoch 2 holds steps 6 and 8 (epochs 1.5 and 2.0), not step 4
    // (epoch 1.0, the end of the first): (0.9 + 0.7) / 2.
    let v = Criterion::LastEpochAccuracy.value(&r).unwrap();
    assert!((v - 0.8).abs() < 1e-12, "{v}");
    assert_eq!(Criterion::FinalAccuracy.value(&r), Some(0.7));
    // Evaluated once an epoch, the last epoch has one evaluation.
    r.history.retain(|p| p.step % 4 == 0);
    assert_eq!(Criterion::LastEpochAccuracy.value(&r), Some(0.7));
    // Only step 0: nothing to rank by.
    r.history.truncate(1);
    assert_eq!(Criterion::LastEpochAccuracy.value(&r), None);
    let mut r = record();
    r.status = Status::Diverged;
    assert_eq!(Criterion::FinalAccuracy.value(&r), None);
    let mut r = record();
    r.history[4].test_acc = f64::NAN;
    assert_eq!(Criterion::LastEpochAccuracy.value(&r), None);
}

#[test]
fn the_tuning_section_reads_with_its_default_and_refuses_unknown_keys() {
    let t: Tuning = toml::from_str("").unwrap();
    assert_eq!(t.criterion, Criterion::LastEpochAccuracy);
    let t: Tuning = toml::from_str("criterion = \"final-accuracy\"").unwrap();
    assert_eq!(t.criterion, Criterion::FinalAccuracy);
    assert!(toml::from_str::<Tuning>("criterion = \"best\"").is_err());
    assert!(toml::from_str::<Tuning>("noise = 2").is_err());
}

#[test]
fn the_section_goes_before_the_first_task() {
    let r = "# Study\n\nnote\n\n## task a\n\n## task b\n";
    assert_eq!(
        insert_section(r, "## Choice\n\n"),
        "# Study\n\nnote\n\n## Choice\n\n## task a\n\n## task b\n"
    );
    assert_eq!(insert_section("# S\n", "## C\n"), "# S\n\n## C\n");
}

#[test]
fn the_lr_curve_plot_draws_every_configuration_and_rings_the_winner() {
    let mut g = grid();
    g.extend(grid().into_iter().map(|s| Sample {
        config: "B".into(),
        ..s
    }));
    let cs = choose(&g, true);
    let refs: Vec<&Choice> = cs.iter().collect();
    let svg = crate::experiment::plots::lr_curve_svg("t", &refs).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("\nA\n") && svg.contains("\nB\n"),
        "{svg}"
    );
    // Two black rings, one per configuration's winner.
    assert_eq!(svg.matches("r=\"8\"").count(), 2);
    assert_eq!(
        svg,
        crate::experiment::plots::lr_curve_svg("t", &refs).unwrap()
    );
}

#[test]
fn base_labels_drop_the_learning_rate() {
    assert_eq!(base_label("SGD+momentum lr=0.03"), "SGD+momentum");
    assert_eq!(base_label("AdamW wd=0.1 lr=0.001"), "AdamW wd=0.1");
    assert_eq!(base_label("Adam"), "Adam");
}
