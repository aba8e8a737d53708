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
    let no_gpu =
        |why: String| crate::error::usage(format!("--device {s}: no usable CUDA GPU ({why})"));
    let device = catch_panic(|| Device::new_cuda(ordinal))
        .map_err(no_gpu)?
        .map_err(|e| no_gpu(e.to_string().lines().next().unwrap_or_default().to_string()))?;
    // NVRTC compiles the fused optimizer kernels when first used: load it now,
    // so that a missing library is this one line and not a failure mid-run.
    #[cfg(feature = "cuda")]
    catch_panic(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two out-pointers to live integers.
        unsafe {
            candle_core::cuda_backend::cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor)
        }
    })
    .map_err(no_gpu)?;
    Ok(device)
}

/// Runs `f`, turning a panic into its message. A CUDA build that loads the
/// CUDA libraries at run time (`scripts/build-cuda-binary.sh`) panics inside
/// cudarc where one cannot be loaded; that is the user's setup to fix, not a
/// bug, so it becomes a one-line error. The panic hook is silenced meanwhile
/// (no other thread exists while arguments are parsed).
fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into());
        library_hint(&msg)
    })
}

/// The help of an `--optimizer` argument: the registry's names.
pub(crate) fn optimizer_help() -> String {
    format!(
        "{} (`sparsity-lab optimizers` lists them).",
        crate::optim::OptimizerKind::names_prose()
    )
}

/// cudarc's message for a library it cannot load lists every file name it
/// tried; say instead which library and what to do.
fn library_hint(msg: &str) -> String {
    let name = msg
        .split_once("load the \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| name);
    match name {
        Some(name) => format!(
            "lib{name}.so could not be loaded; install it or put its folder on LD_LIBRARY_PATH"
        ),
        None => msg.lines().next().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_cudarc_cannot_load_is_named_with_the_fix() {
        let msg = "Unable to dynamically load the \"curand\" shared library - searched for library names: [\"libcurand.so\", \"libcurand.so.13\"]. Ensure that `LD_LIBRARY_PATH` has the correct path to the installed library.";
        assert_eq!(
            library_hint(msg),
            "libcurand.so could not be loaded; install it or put its folder on LD_LIBRARY_PATH"
        );
        assert_eq!(library_hint("first line\nsecond"), "first line");
    }

    #[test]
    fn a_panic_becomes_its_message() {
        let r: std::result::Result<(), String> =
            catch_panic(|| panic!("Unable to dynamically load the \"cuda\" shared library - x"));
        assert_eq!(
            r.unwrap_err(),
            "libcuda.so could not be loaded; install it or put its folder on LD_LIBRARY_PATH"
        );
        assert_eq!(catch_panic(|| 7), Ok(7));
    }
}
