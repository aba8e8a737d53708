//! Where a run's numbers came from: the code (commit, dirty tree, compiler,
//! Candle), the machine (CPU model and the features that pick the matrix
//! kernels, threads, device), the settings changed on the command line, and
//! a digest of the data as read. Stored in every run record, so that two
//! tables that disagree can be traced to what differed.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{Dataset, Split};

/// The `provenance` object of a run record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// HEAD of the repository the binary was built from (None outside git).
    pub git_commit: Option<String>,
    /// Whether that tree had uncommitted changes (tracked or untracked,
    /// ignored files aside) when the run started: in the code or the study
    /// files, not in the results folders under experiments/.
    pub git_dirty: Option<bool>,
    /// `rustc --version` of the compiler that built the binary.
    pub rustc: String,
    /// The candle-core version the binary was built with.
    pub candle: String,
    /// The CPU's model name.
    pub cpu: String,
    /// The instruction-set extensions that change which kernels run (and so
    /// the last bits of the results), as detected at run time.
    pub cpu_features: Vec<String>,
    /// Threads the run's matrix products and optimizer steps may use.
    pub threads: usize,
    pub device: String,
    /// The `--set KEY=VALUE` overrides the run was made with, in order.
    pub overrides: Vec<String>,
    /// Whether the study's `--quick` settings were applied.
    #[serde(default)]
    pub quick: bool,
    /// SHA-256 of the data as the run saw it (see [`data_sha256`]).
    pub data_sha256: String,
}

/// The code and machine facts, which are the same for every run of a
/// process; the caller fills in the rest.
#[derive(Clone, Debug)]
pub struct Machine {
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub cpu: String,
    pub cpu_features: Vec<String>,
}

impl Machine {
    /// Looks up the repository the binary was built from (see
    /// [`source_dir`]) and the CPU.
    pub fn detect() -> Self {
        let repo = source_dir();
        let repo = repo.as_path();
        Self {
            git_commit: git(repo, &["rev-parse", "HEAD"]),
            // Results are not code: the folders under experiments/ (the
            // committed references, rewritten when they are regenerated) and
            // results/ do not make the tree dirty; study files do.
            git_dirty: git(
                repo,
                &[
                    "status",
                    "--porcelain",
                    "--",
                    ".",
                    ":(exclude,glob)experiments/*/**",
                    ":(exclude)results",
                ],
            )
            .map(|s| !s.is_empty()),
            cpu: cpu_model(),
            cpu_features: cpu_features(),
        }
    }

    pub fn provenance(
        &self,
        device: &candle_core::Device,
        overrides: &[String],
        quick: bool,
        data_sha256: String,
    ) -> Provenance {
        Provenance {
            git_commit: self.git_commit.clone(),
            git_dirty: self.git_dirty,
            rustc: env!("SPARSITY_LAB_RUSTC").to_string(),
            candle: env!("SPARSITY_LAB_CANDLE").to_string(),
            cpu: self.cpu.clone(),
            cpu_features: self.cpu_features.clone(),
            threads: if device.is_cpu() {
                candle_core::utils::get_num_threads()
            } else {
                1
            },
            device: device_name(device),
            overrides: overrides.to_vec(),
            quick,
            data_sha256,
        }
    }
}

/// The checkout whose state the records name: the sparsity-lab checkout
/// that contains the working directory (the README's commands run there, and
/// `cargo run` builds from it), else the path the binary was compiled at.
///
/// Not the compile path first: cargo reuses a build made from identical
/// sources elsewhere (another clone sharing the target folder, such as CI's),
/// and that path may since have gone or moved to another commit.
pub fn source_dir() -> std::path::PathBuf {
    let is_checkout = |d: &Path| {
        std::fs::read_to_string(d.join("Cargo.toml"))
            .map(|t| t.lines().any(|l| l.trim() == "name = \"sparsity-lab\""))
            .unwrap_or(false)
    };
    if let Ok(cwd) = std::env::current_dir()
        && let Some(d) = cwd.ancestors().find(|d| is_checkout(d))
    {
        return d.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The detected extensions among those that select kernels in gemm, the
/// fused optimizer loops and the Transformer kernels.
pub fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut out: Vec<&str> = vec![];
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        macro_rules! detect {
            ($($f:tt),*) => {$(
                if std::is_x86_feature_detected!($f) {
                    out.push($f);
                }
            )*};
        }
        detect!(
            "sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            out.push("neon");
        }
    }
    out.into_iter().map(String::from).collect()
}

/// SHA-256 (hex) of a dataset as loaded: its name, its task, and both
/// splits' values (features or tokens, then targets) as little-endian
/// bytes. The same data gives the same digest whichever place it was read
/// from (IDX files, gzipped or not, or the hf-hub parquet files); for
/// synthetic data it is the digest of what the generator made.
pub fn data_sha256(ds: &Dataset) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    h.update(ds.name.as_bytes());
    h.update(serde_json::to_string(&ds.task)?.as_bytes());
    for split in [&ds.train, &ds.test] {
        match split {
            Split::Examples { x, y } => {
                hash_tensor(&mut h, x)?;
                hash_tensor(&mut h, y)?;
            }
            Split::Stream { tokens } => {
                h.update((tokens.len() as u64).to_le_bytes());
                for chunk in tokens.chunks(4096) {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|t| t.to_le_bytes()).collect();
                    h.update(&bytes);
                }
            }
        }
    }
    Ok(hex(&h.finalize()))
}

fn hash_tensor(h: &mut Sha256, t: &candle_core::Tensor) -> anyhow::Result<()> {
    use candle_core::DType;
    h.update(format!("{:?}{:?}", t.dtype(), t.dims()).as_bytes());
    let flat = t.flatten_all()?;
    match t.dtype() {
        DType::U32 => {
            for chunk in flat.to_vec1::<u32>()?.chunks(4096) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                h.update(&bytes);
            }
        }
        _ => {
            for chunk in flat.to_dtype(DType::F32)?.to_vec1::<f32>()?.chunks(4096) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                h.update(&bytes);
            }
        }
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The kind of device, as run records name it: `cpu`, `cuda` or `metal`.
pub fn device_name(d: &candle_core::Device) -> String {
    match d {
        candle_core::Device::Cpu => "cpu".into(),
        candle_core::Device::Cuda(_) => "cuda".into(),
        candle_core::Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_inputs() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn data_digest_follows_the_data() {
        let cfg = crate::data::DataConfig::by_name("teacher").unwrap();
        let a = data_sha256(&cfg.load(0).unwrap()).unwrap();
        assert_eq!(a, data_sha256(&cfg.load(0).unwrap()).unwrap());
        assert_eq!(a.len(), 64);
        let crate::data::DataConfig::Teacher(mut t) = cfg else {
            unreachable!()
        };
        t.seed += 1;
        let other = crate::data::DataConfig::Teacher(t).load(0).unwrap();
        assert_ne!(a, data_sha256(&other).unwrap());
    }
}
