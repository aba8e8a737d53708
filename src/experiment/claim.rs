//! Claims on the runs of a results folder, so that several processes can
//! share one: a run is claimed (`runs/<run>.claim`, created exclusively)
//! before it trains, a claim whose process is gone is taken over, and a
//! finished run is one whose record says so.

use std::path::{Path, PathBuf};

use anyhow::Result;
use tracing::{info, warn};

use crate::train::{RunRecord, Status};

/// An exclusive claim on one run, held while it trains: the file
/// `<run>.claim` beside the run's record, created only if absent, holding
/// the host and process id. A claim whose process is gone (on this host) is
/// stale and is taken over; claims of other hosts are respected.
pub(super) struct Claim {
    path: PathBuf,
}

impl Claim {
    pub(super) fn take(run: &Path) -> Result<Option<Claim>> {
        let path = run.with_extension("claim");
        let me = format!("{} {}\n", hostname(), std::process::id());
        // The claim appears with its content or not at all: written to a
        // temporary file, then hard-linked to its name, which fails if the
        // name exists. (Created empty and then written, a process killed in
        // between would leave a claim nobody could judge stale.)
        let tmp = path.with_file_name(format!(
            ".tmp.{}.{}",
            std::process::id(),
            path.file_name().expect("a file name").to_string_lossy()
        ));
        let cannot = |e: std::io::Error, p: &Path| {
            anyhow::Error::new(e).context(format!(
                "cannot write in the results folder: creating {}",
                p.display()
            ))
        };
        for _ in 0..2 {
            std::fs::write(&tmp, &me).map_err(|e| cannot(e, &tmp))?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => return Ok(Some(Claim { path })),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held = std::fs::read_to_string(&path).unwrap_or_default();
                    if !claim_is_stale(&held) {
                        return Ok(None);
                    }
                    warn!(
                        "{}: stale claim ({}); taking it over",
                        path.display(),
                        held.trim()
                    );
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(cannot(e, &path)),
            }
        }
        Ok(None)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether process `pid` of this host is gone.
fn process_gone(pid: u32) -> bool {
    pid != std::process::id()
        && !Path::new(&format!("/proc/{pid}")).exists()
        && Path::new("/proc/self").exists()
}

/// A claim (`host pid`) is stale when it names this host and a process that
/// no longer runs. (Claims are never half-written: see [`Claim::take`].)
fn claim_is_stale(text: &str) -> bool {
    let mut parts = text.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|p| p.parse::<u32>().ok()),
    ) {
        (Some(host), Some(pid)) => host == hostname() && process_gone(pid),
        _ => false,
    }
}

/// Removes temporary files (`.tmp.<pid>.*`) and stale claims left by killed
/// processes of this host in a results folder.
pub(super) fn clean_stale_temporaries(dir: &Path) {
    for sub in [dir.to_path_buf(), dir.join("runs"), dir.join("plots")] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = name
                .strip_prefix(".tmp.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|p| p.parse::<u32>().ok());
            let stale = match pid {
                Some(pid) => process_gone(pid),
                None if name.ends_with(".claim") => {
                    claim_is_stale(&std::fs::read_to_string(e.path()).unwrap_or_default())
                }
                None => false,
            };
            if stale {
                info!("removing {}, left by a killed process", e.path().display());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A run file that holds a finished run (done or diverged). Failed runs are
/// retried; an unreadable file (from an older version) is redone.
pub(super) fn is_finished(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match serde_json::from_str::<RunRecord>(&text) {
        Ok(r) => r.status != Status::Failed,
        Err(e) => {
            warn!(
                "{}: unreadable run record ({e}); running it again",
                path.display()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_stale_ones_are_taken_over() {
        let dir = std::env::temp_dir().join(format!("sparsity-lab-claim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = dir.join("r.json");
        let first = Claim::take(&run).unwrap().expect("free");
        assert!(Claim::take(&run).unwrap().is_none(), "held by this process");
        drop(first);
        assert!(!run.with_extension("claim").exists(), "released on drop");
        // A claim by a process of this host that no longer runs.
        std::fs::write(
            run.with_extension("claim"),
            format!("{} 4000000\n", hostname()),
        )
        .unwrap();
        assert!(
            Claim::take(&run).unwrap().is_some(),
            "stale claim taken over"
        );
        // A claim by another host is respected.
        std::fs::write(run.with_extension("claim"), "another-host 1\n").unwrap();
        assert!(Claim::take(&run).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
