//! Command-line interface: argument parsing, logging, and the mapping of
//! errors to one line and an exit code (2 for the user's mistakes, 1 for
//! everything else). No command prints a backtrace.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::bail_usage;
use crate::error::is_usage;
use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::trace;

mod args;
mod measure;
mod selfcheck;
mod train_cmd;

use args::{one_thread_per_run, optimizer_help, parse_device, parse_sets};

const ABOUT: &str = "Does the optimizer decide how sparse a trained network ends up?";

/// The long help, listing the optimizers of the registry.
fn long_about() -> String {
    let labels: Vec<&str> = OptimizerKind::ALL.iter().map(|k| k.label()).collect();
    format!(
        "\
Does the optimizer decide how sparse a trained network ends up, and which remedies work?

sparsity-lab trains networks with hand-written optimizers that match their reference
implementations (PyTorch's) step for step:
{}
(AMSGrad is Adam with amsgrad = true), each with L2, decoupled decay, L1 as a subgradient or as
a proximal step, and measures the sparsity of what they produce. `sparsity-lab optimizers`
lists the optimizers.

Logs go to stderr; set RUST_LOG (for example RUST_LOG=info or RUST_LOG=sparsity_lab=debug).",
        labels.join(", ")
    )
}

#[derive(Parser, Debug)]
#[command(name = "sparsity-lab", version, about = ABOUT, long_about = long_about())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Run a study: a name from experiments/ (e.g. `sparsity`) or a path to a .toml file.
    /// Every run is trained into results/<name>/ (runs/*.json and *.safetensors, results.md,
    /// results.csv, metrics.csv, plots/), then the tables are compared with the committed
    /// reference in experiments/<name>/ and a verdict printed. Runs already recorded in the
    /// results folder are skipped, so an interrupted study resumes.
    #[arg(long, value_name = "NAME|PATH")]
    exp: Option<String>,

    /// The study's results folder (default: results/<name>). --quick and --set runs go to
    /// sub-folders of it: quick/, set-<overrides>-<hash>/. `--out experiments/<name>` retrains
    /// into the committed reference (after deleting its runs/ folder).
    #[arg(long, value_name = "DIR", requires = "exp")]
    out: Option<std::path::PathBuf>,

    /// List the shipped studies.
    #[arg(long, conflicts_with = "exp")]
    list: bool,

    /// Run the study's small version (its [quick] table) into results/<name>/quick/.
    #[arg(long, requires = "exp")]
    quick: bool,

    /// Override a study setting: `epochs=1`, `seeds=[0]`, `data.train_limit=1000`,
    /// `optimizers.0.lr=0.1`, `tasks.1.steps=100`. Keys that are not study-level apply
    /// to every task. Repeatable. The runs go to a folder of their own,
    /// results/<name>/set-<overrides>-<hash>/, listed in its study.json.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "exp")]
    set: Vec<String>,

    /// Run only share i of n of the study's runs (for clusters); `report` merges the shards.
    #[arg(long, value_name = "i/n", requires = "exp")]
    shard: Option<String>,

    /// How many runs of a study to train at once. `auto` (the default): one
    /// run per core when every run is a small model that trains fastest on
    /// one thread (the MLP at batch <= 256: `sparsity` takes half the time this way),
    /// else one at a time on all cores (the Transformer), and one at a time
    /// on a GPU. Small models always get one thread per run. The results do
    /// not depend on it.
    #[arg(long, default_value = "auto", value_name = "N|auto", requires = "exp")]
    jobs: String,

    /// cpu, or cuda in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train one model and measure it: prints the final metrics, writes
    /// DIR/run.json and DIR/model.safetensors.
    ///
    /// Example: sparsity-lab train --model mlp --data mnist --optimizer adam --set lr=1e-3
    /// --epochs 3 --seed 0 --out runs/adam
    Train(Box<train_cmd::TrainArgs>),
    /// The sparsity table of any safetensors checkpoint (also PyTorch's).
    ///
    /// With --json, prints {"tensors": {NAME: M, ...}, "total": M}, where M has numel,
    /// exact_zero_frac, near_zero_frac ({"1e-4", "1e-3", "1e-2"}), rel_near_zero_frac,
    /// l1, l2, hoyer and gini; "total" treats all floating-point tensors as one vector.
    /// M also has scale_rel_near_zero_frac ({"0.01", "0.03", "0.1"}): |w| < c * RMS of w's own tensor.
    Measure(measure::MeasureArgs),
    /// Rebuild a study's tables and plots from its run files (DIR/runs/*.json, all shards).
    ///
    /// Writes DIR/results.md, results.csv, metrics.csv (one row per run and evaluation) and
    /// plots/. Refuses a folder whose runs differ in anything but the seed within one row.
    Report {
        /// The study's results folder, e.g. results/sparsity or experiments/sparsity.
        dir: std::path::PathBuf,
        /// Compare the tables with another results folder (e.g. the committed reference
        /// experiments/sparsity) and print the verdict: identical, or the cells that differ
        /// in units of the reference's seed standard deviation.
        #[arg(long, value_name = "REF")]
        compare: Option<std::path::PathBuf>,
        /// First recompute every run's weight measures from its checkpoint
        /// (runs/*.safetensors), rewriting the records, so that a new measure needs no
        /// retraining.
        #[arg(long)]
        remeasure: bool,
    },
    /// Test every study's declared hypotheses from its committed run records and write the
    /// answer: the generated block of FINDINGS.md (between `<!-- summary:begin` and
    /// `<!-- summary:end -->`; the prose around it is kept) and the forest plot.
    Summary {
        /// The file whose generated block is rewritten.
        #[arg(long, default_value = "FINDINGS.md", value_name = "FILE")]
        findings: std::path::PathBuf,
        /// Where the forest plot goes.
        #[arg(long, default_value = "experiments/forest.svg", value_name = "FILE")]
        svg: std::path::PathBuf,
    },
    /// Print an optimizer's path on a test function, one JSON object per step.
    ///
    /// Each line is {"step": t, "params": [..], "loss": x} for t = 0..N; step 0 is the
    /// start, before any update. A non-finite loss ends the trace: that line has
    /// "diverged": true, and the command exits with status 1.
    /// quadratic is f(theta) = theta^2 from theta = 1;
    /// rosenbrock is (1-x)^2 + 100(y-x^2)^2 from (-1.5, 2).
    Trace(TraceArgs),
    /// List the optimizers (the registry) as a markdown table: name, reference
    /// implementation, its defaults, state buffers, plot panel.
    Optimizers,
    /// The optimizer steps on a device against the CPU reference (for
    /// scripts/gpu-check.sh; hidden).
    #[command(hide = true)]
    Selfcheck(selfcheck::SelfcheckArgs),
    /// Training-step times on a device, one JSON line per case (for
    /// scripts/gpu-check.sh; hidden).
    #[command(hide = true)]
    BenchSteps(selfcheck::BenchArgs),
}

#[derive(Args, Debug)]
struct TraceArgs {
    #[arg(long, help = optimizer_help())]
    optimizer: String,
    /// quadratic or rosenbrock.
    #[arg(long)]
    problem: String,
    /// Number of updates.
    #[arg(long)]
    steps: usize,
    /// f32 or f64.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// A hyper-parameter, with torch.optim's name (lr, momentum, beta1, beta2, eps,
    /// weight_decay, ...) or one of ours (decoupled_weight_decay, l1, l1_prox, exempt_1d).
    /// Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// cpu, or cuda in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    install_panic_hook();
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::error::one_line(&e));
            ExitCode::from(if is_usage(&e) { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if cli.list && cli.command.is_some() {
        bail_usage!("--list lists the shipped studies and takes no subcommand; drop one of them");
    }
    match (cli.command, cli.exp) {
        (Some(_), Some(_)) => bail_usage!(
            "--exp runs a study and takes no subcommand; to rebuild a study's tables use `sparsity-lab report DIR` (e.g. results/sparsity) without --exp"
        ),
        (Some(Command::Trace(args)), _) => run_trace(args),
        (Some(Command::Optimizers), _) => {
            write!(io::stdout(), "{}", OptimizerKind::markdown_table())?;
            Ok(())
        }
        (Some(Command::Train(args)), _) => train_cmd::run(*args),
        (Some(Command::Measure(args)), _) => measure::run(args),
        (Some(Command::Selfcheck(args)), _) => selfcheck::run_selfcheck(args),
        (Some(Command::BenchSteps(args)), _) => selfcheck::run_bench(args),
        (
            Some(Command::Report {
                dir,
                compare,
                remeasure,
            }),
            _,
        ) => run_report(&dir, compare.as_deref(), remeasure),
        (Some(Command::Summary { findings, svg }), _) => {
            let n = crate::experiment::summary::write(&experiments_dir(), &findings, &svg)?;
            println!(
                "tested {n} hypotheses; wrote {} and {}",
                findings.display(),
                svg.display()
            );
            Ok(())
        }
        (None, Some(exp)) => run_exp(
            &exp,
            cli.out,
            cli.quick,
            &cli.set,
            cli.shard.as_deref(),
            &cli.device,
            &cli.jobs,
        ),
        (None, None) if cli.list => {
            for name in crate::experiment::list(&experiments_dir())? {
                println!("{name}");
            }
            Ok(())
        }
        (None, None) => bail_usage!("nothing to do; try `sparsity-lab --help`"),
    }
}

fn experiments_dir() -> std::path::PathBuf {
    crate::experiment::study::experiments_dir()
}

fn run_report(
    dir: &std::path::Path,
    compare: Option<&std::path::Path>,
    remeasure: bool,
) -> Result<()> {
    if remeasure {
        let (done, without) = crate::experiment::remeasure(dir)?;
        println!("recomputed the weight measures of {done} runs from their checkpoints");
        if without > 0 {
            println!("{without} finished runs have no checkpoint and were left as they are");
        }
    }
    crate::experiment::write_report(dir)?;
    println!(
        "wrote {}, {}, {} and {}",
        dir.join("results.md").display(),
        dir.join("results.csv").display(),
        dir.join("metrics.csv").display(),
        dir.join("plots").display()
    );
    let missing = crate::experiment::missing_runs(dir);
    if !missing.is_empty() {
        println!(
            "{} runs of the study have no record yet (an unfinished shard?): {}",
            missing.len(),
            missing.join(", ")
        );
    }
    if let Some(r) = compare {
        println!("{}", crate::experiment::compare::compare(dir, r)?);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_exp(
    exp: &str,
    out: Option<std::path::PathBuf>,
    quick: bool,
    sets: &[String],
    shard: Option<&str>,
    device: &str,
    jobs: &str,
) -> Result<()> {
    use std::io::IsTerminal;
    let device = parse_device(device)?;
    let sets: Vec<(String, String)> = parse_sets(sets)?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Small models train fastest on one thread, so their runs each get one
    // (and by default run one per core).
    let small = device.is_cpu()
        && crate::experiment::small_models_only(exp, &experiments_dir(), quick, &sets)?;
    let jobs = match jobs {
        "auto" if small => std::thread::available_parallelism().map_or(1, |n| n.get()),
        "auto" => 1,
        n => match n.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => bail_usage!("--jobs must be a number of at least 1, or auto; got `{n}`"),
        },
    };
    if jobs > 1 || small {
        one_thread_per_run();
    }
    let opts = crate::experiment::SweepOptions {
        quick,
        sets,
        shard: shard.map(crate::experiment::parse_shard).transpose()?,
        device,
        progress: io::stderr().is_terminal(),
        jobs,
        out,
    };
    let s = crate::experiment::run_study(exp, &experiments_dir(), &opts)?;
    println!(
        "{} runs: {} skipped (already done), {} done, {} diverged, {} failed, in {:.0} s",
        s.total, s.skipped, s.done, s.diverged, s.failed, s.seconds
    );
    if s.claimed_elsewhere > 0 {
        println!(
            "{} runs were left to other processes working in the same folder; the last to finish writes the complete tables",
            s.claimed_elsewhere
        );
    }
    if opts.shard.is_some() {
        println!(
            "shard finished; when every shard is done: sparsity-lab report {}",
            s.dir.display()
        );
        return Ok(());
    }
    println!("results: {}", s.dir.join("results.md").display());
    match (&s.verdict, &s.reference) {
        (Some(v), _) => println!("{v}"),
        (None, Some(_)) => {}
        (None, None) if !opts.sets.is_empty() => println!(
            "reproduction: no committed reference for runs with --set overrides (listed in {})",
            s.dir.join("study.json").display()
        ),
        (None, None) => println!("reproduction: no committed reference to compare with"),
    }
    Ok(())
}

fn run_trace(args: TraceArgs) -> Result<()> {
    let cfg = OptimizerConfig::from_pairs(&args.optimizer, parse_sets(&args.set)?)?;
    let problem = trace::Problem::parse(&args.problem)?;
    let dtype = trace::parse_dtype(&args.dtype)?;
    let device = parse_device(&args.device)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    // The lines before a divergence are written out before its error.
    let result = trace::run(&cfg, problem, args.steps, dtype, &device, &mut out);
    out.flush()?;
    result
}

fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind::*;
    match e.kind() {
        DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        kind => {
            // clap's message is several lines; its first line names the problem.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            if kind == MissingRequiredArgument {
                // The missing arguments follow on indented lines: name them.
                let missing: Vec<&str> = text
                    .lines()
                    .skip(1)
                    .take_while(|l| l.starts_with("  "))
                    .map(str::trim)
                    .collect();
                let first = first.trim_end().trim_end_matches(':');
                eprintln!("{first}: {} (see --help)", missing.join(", "));
            } else {
                eprintln!("{first} (see --help)");
            }
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // hf-hub logs each failed download attempt as an error; the data loader
    // reports the outcome itself, in one line.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,hf_hub=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// A panic is a bug: say so on one line, without a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error{at}: {msg} (this is a bug in sparsity-lab; please report it)"
        );
    }));
}
