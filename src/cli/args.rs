//! Argument helpers the subcommands share: `--set` pairs, `--device`, and
//! the thread setting of small-model runs.

use anyhow::Result;
use candle_core::Device;

use crate::bail_usage;
use crate::optim::RawValue;

/// Gives each run one thread (Candle's and rayon's pools read
/// RAYON_NUM_THREADS when they start), unless the user set it. Call before
/// anything starts a thread or a pool: argument parsing and logging start
/// none.
pub fn one_thread_per_run() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet (see above).
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
}

/// Splits repeated `--set key=value` arguments. A key given twice is
/// refused: the last would silently win.
pub fn parse_sets(sets: &[String]) -> Result<Vec<(&str, RawValue)>> {
    let mut seen: std::collections::HashMap<&str, &str> = Default::default();
    sets.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                if let Some(first) = seen.insert(k.trim(), s) {
                    bail_usage!(
                        "--set {} is given twice (`{}` and `{s}`); give each key once",
                        k.trim(),
                        first.trim()
                    );
                }
                Ok((k.trim(), RawValue::Text(v.trim().to_string())))
            }
            _ => bail_usage!("invalid --set `{s}`: expected KEY=VALUE, e.g. --set lr=0.001"),
        })
        .collect()
}

/// `cpu`, or `cuda` / `cuda:N` where the build and machine support it.
pub fn parse_device(s: &str) -> Result<Device> {
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => bail_usage!("invalid --device `{s}`; expected cpu, cuda or cuda:N"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        bail_usage!(
            "--device {s}: this build has no CUDA support; rebuild with `cargo build --release --features cuda` on a machine with the CUDA toolkit"
        );
    }
    Device::new_cuda(ordinal).map_err(|e| {
        let why = e.to_string().lines().next().unwrap_or_default().to_string();
        crate::error::usage(format!("--device {s}: no usable CUDA GPU ({why})"))
    })
}

/// The help of an `--optimizer` argument: the registry's names.
pub(crate) fn optimizer_help() -> String {
    format!(
        "{} (`sparsity-lab optimizers` lists them).",
        crate::optim::OptimizerKind::names_prose()
    )
}
