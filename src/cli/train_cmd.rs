//! `sparsity-lab train`: one run from flags.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::{one_thread_per_run, parse_device, parse_sets};
use crate::bail_usage;
use crate::data::DataConfig;
use crate::io::{write_atomic, write_json};
use crate::models::ModelConfig;
use crate::optim::OptimizerConfig;
use crate::provenance::{Machine, data_sha256};
use crate::train::{self, RunOptions, Schedule, Status, TrainConfig};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// mlp, cnn or transformer.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// mnist, fashion-mnist, teacher (planted sparse teacher), modadd (modular addition) or text.
    #[arg(long, default_value = "mnist")]
    data: String,
    /// Local data: a folder of IDX files (plain or .gz) for mnist/fashion-mnist, a text file for text.
    #[arg(long, value_name = "PATH")]
    data_dir: Option<PathBuf>,
    /// Use only the first N training examples (images).
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    #[arg(long, default_value = "adam", help = super::args::optimizer_help())]
    optimizer: String,
    /// An optimizer hyper-parameter (torch.optim names; see README). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Passes over the training set.
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<usize>,
    /// Optimizer steps (instead of epochs).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate on the held-out split every N steps (default: every epoch).
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// constant, or warmup-cosine (with --warmup-steps and --min-lr-frac).
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// warmup-cosine: steps of linear warmup (default 100).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// warmup-cosine: the last step's lr as a fraction of lr (default 0.1).
    #[arg(long)]
    min_lr_frac: Option<f64>,
    /// MLP hidden widths, comma-separated; for the cnn, the one width of its
    /// hidden linear layer.
    #[arg(long, value_delimiter = ',', value_name = "W,...")]
    hidden: Option<Vec<usize>>,
    /// CNN: output channels of each conv block, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "C,...")]
    channels: Option<Vec<usize>>,
    /// CNN: a 2 x 2 max-pool after every N-th conv block (1: after each;
    /// 2 with seven channels entries: a BasicNet).
    #[arg(long, value_name = "N")]
    pool_every: Option<usize>,
    /// CNN: BatchNorm after each convolution (true or false).
    #[arg(long, value_name = "BOOL")]
    batch_norm: Option<bool>,
    /// Transformer layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Transformer width.
    #[arg(long)]
    d_model: Option<usize>,
    /// Transformer attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Transformer context length.
    #[arg(long)]
    context: Option<usize>,
    /// Output folder for run.json and model.safetensors.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// cpu, or cuda in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn build_config(a: &TrainArgs) -> Result<TrainConfig> {
    let optimizer = OptimizerConfig::from_pairs(&a.optimizer, parse_sets(&a.set)?)?;
    let mut data = DataConfig::by_name(&a.data)?;
    if let Some(dir) = &a.data_dir {
        data.set_dir(dir.clone())?;
    }
    if let Some(n) = a.train_limit {
        match &mut data {
            DataConfig::Mnist(c) | DataConfig::FashionMnist(c) => c.train_limit = Some(n),
            _ => bail_usage!("--train-limit applies to mnist and fashion-mnist"),
        }
    }
    let mut model = ModelConfig::by_name(&a.model)?;
    if !matches!(model, ModelConfig::Cnn(_))
        && (a.channels.is_some() || a.batch_norm.is_some() || a.pool_every.is_some())
    {
        bail_usage!(
            "--channels, --pool-every and --batch-norm are cnn options; this is --model {}",
            a.model
        );
    }
    match &mut model {
        ModelConfig::Cnn(c) => {
            if a.layers.is_some() || a.d_model.is_some() || a.heads.is_some() || a.context.is_some()
            {
                bail_usage!(
                    "--layers, --d-model, --heads and --context are transformer options; this is --model cnn"
                );
            }
            if let Some(h) = &a.hidden {
                let [h] = h.as_slice() else {
                    bail_usage!(
                        "--hidden: the cnn has one hidden linear layer; give one width, e.g. --hidden 128"
                    );
                };
                c.hidden = *h;
            }
            if let Some(ch) = &a.channels {
                c.channels = ch.clone();
            }
            if let Some(bn) = a.batch_norm {
                c.batch_norm = bn;
            }
            if let Some(p) = a.pool_every {
                c.pool_every = p;
            }
        }
        ModelConfig::Mlp(m) => {
            if let Some(h) = &a.hidden {
                m.hidden = h.clone();
            }
            if a.layers.is_some() || a.d_model.is_some() || a.heads.is_some() || a.context.is_some()
            {
                bail_usage!(
                    "--layers, --d-model, --heads and --context are transformer options; this is --model mlp"
                );
            }
        }
        ModelConfig::Transformer(t) => {
            if a.hidden.is_some() {
                bail_usage!("--hidden is an mlp option; this is --model transformer");
            }
            t.layers = a.layers.unwrap_or(t.layers);
            t.d_model = a.d_model.unwrap_or(t.d_model);
            t.heads = a.heads.unwrap_or(t.heads);
            t.context = a.context.unwrap_or(t.context);
        }
    }
    let schedule = match a.schedule.as_str() {
        "constant" => {
            if a.warmup_steps.is_some() || a.min_lr_frac.is_some() {
                bail_usage!(
                    "--warmup-steps and --min-lr-frac shape the warmup-cosine schedule and do nothing with --schedule constant; add --schedule warmup-cosine"
                );
            }
            Schedule::Constant
        }
        "warmup-cosine" | "warmup_cosine" => Schedule::WarmupCosine {
            warmup_steps: a.warmup_steps.unwrap_or(100),
            min_lr_frac: a.min_lr_frac.unwrap_or(0.1),
        },
        s => bail_usage!("invalid --schedule `{s}`; expected constant or warmup-cosine"),
    };
    let mut cfg = TrainConfig::new(model, data, optimizer);
    cfg.epochs = a.epochs;
    cfg.steps = a.steps;
    if cfg.epochs.is_none() && cfg.steps.is_none() {
        cfg.epochs = Some(1);
    }
    cfg.batch_size = a.batch_size;
    cfg.seed = a.seed;
    cfg.eval_every = a.eval_every;
    cfg.schedule = schedule;
    cfg.validate()?;
    crate::train::checks::check_config(&cfg)?;
    Ok(cfg)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = build_config(&a)?;
    let device = parse_device(&a.device)?;
    // Before any training: a folder that cannot be written is found now.
    crate::io::check_writable(&a.out, "--out")?;
    if device.is_cpu() && cfg.prefers_one_thread() {
        one_thread_per_run();
    }
    let pb = train::progress_bar(0, "train");
    let dataset = cfg.data.load(cfg.seed)?;
    let opts = RunOptions {
        progress: Some(pb.clone()),
    };
    let mut trained = train::run_on(&cfg, &dataset, &device, &opts)?;
    pb.finish_and_clear();
    trained.record.provenance =
        Some(Machine::detect().provenance(&device, &a.set, false, data_sha256(&dataset)?));
    let weights = a.out.join("model.safetensors");
    write_atomic(
        &weights,
        &train::checkpoint_bytes(&trained.model, &trained.record, &[])?,
    )?;
    trained.record.checkpoint = Some("model.safetensors".into());
    let rec = &trained.record;
    write_json(&a.out.join("run.json"), rec)?;
    println!(
        "{} on {}{}: {} steps in {:.1} s, status {:?}",
        cfg.optimizer.short(),
        rec.data,
        dataset
            .location
            .as_deref()
            .map(|l| format!(" (read from {l})"))
            .unwrap_or_default(),
        rec.steps_done,
        rec.wall_seconds,
        rec.status
    );
    for h in &rec.history {
        println!(
            "  step {:>6} (epoch {:>5.2}): train loss {}, test loss {:.4}, test acc {:.2}%, weights <1e-3 {:.2}%",
            h.step,
            h.epoch,
            h.train_loss
                .map(|l| format!("{l:.4}"))
                .unwrap_or_else(|| "-".into()),
            h.test_loss,
            100.0 * h.test_acc,
            100.0 * h.weights_near_zero_frac["1e-3"]
        );
    }
    if let Some(f) = &rec.r#final {
        println!(
            "final: test acc {:.2}%, test loss {:.4}",
            100.0 * f.test_acc,
            f.test_loss
        );
        // The training split too (all examples; at most eval_windows windows of text).
        let batches = crate::data::eval_batches(
            &dataset.train,
            1000,
            cfg.context(),
            cfg.eval_windows,
            &device,
        )?;
        let (train_loss, train_acc) =
            train::evaluate(&trained.model, &dataset.task, &batches, None)?;
        println!(
            "final: train acc {:.2}%, train loss {:.4}",
            100.0 * train_acc,
            train_loss
        );
        println!("{}", super::measure::table(&f.measures));
        if let Some(d) = &f.dead_units {
            println!(
                "dead units (held-out set): {} of {} ({:.2}%)",
                d.dead,
                d.total,
                100.0 * d.frac
            );
        }
        if let Some(fm) = &f.filters {
            println!("{}", fm.table());
        }
        let prune: Vec<String> = f
            .pruning
            .iter()
            .map(|p| format!("{:.0}%: {:.2}%", 100.0 * p.frac, 100.0 * p.test_acc))
            .collect();
        println!("accuracy after magnitude pruning: {}", prune.join(", "));
    }
    println!(
        "wrote {} and {}",
        a.out.join("run.json").display(),
        weights.display()
    );
    // A diverged run is recorded (run.json says so) but is a failure: exit 1,
    // as `trace` does.
    if rec.status == Status::Diverged {
        anyhow::bail!(
            "the run diverged after {} steps ({}); its record is in {}; try a smaller lr",
            rec.steps_done,
            rec.error.as_deref().unwrap_or("non-finite loss"),
            a.out.join("run.json").display()
        );
    }
    Ok(())
}
