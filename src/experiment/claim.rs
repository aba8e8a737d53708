//! Claims on the runs of a results folder, so that several processes can
//! share one: a run is claimed (`runs/<run>.claim`, created exclusively)
//! before it trains, a claim whose process is gone is taken over, and a
//! finished run is one whose record says so.
//!
//! What a run's claim file holds, and when a claim is stale.
//!
//! A claim is one line, `host pid start`, where `start` is the process's
//! start time (field 22 of /proc/PID/stat, clock ticks since boot). A claim
//! of this host is held only while that very process runs: a process id
//! that is gone, or that now names another process (a different start
//! time: the id was reused), leaves a stale claim that the next sweep takes
//! over. A claim written by an older version (`host pid`, no start time) is
//! held while its process runs this program. An empty or unreadable claim
//! is stale: claims are never half-written. Claims of other hosts are
//! respected, as nothing can be known about their processes.

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
        let me = claim_text();
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
                    let Some(why) = stale_because(&held) else {
                        return Ok(None);
                    };
                    warn!(
                        "{}: stale claim ({}: {why}); taking it over",
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

/// A claim that no longer holds ([`stale_because`]).
fn claim_is_stale(text: &str) -> bool {
    stale_because(text).is_some()
}

/// This process's claim line.
pub fn claim_text() -> String {
    let pid = std::process::id();
    match start_time(pid) {
        Some(t) => format!("{} {pid} {t}\n", hostname()),
        None => format!("{} {pid}\n", hostname()),
    }
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether process `pid` of this host is gone (never this process; false
/// where /proc cannot tell).
pub fn process_gone(pid: u32) -> bool {
    pid != std::process::id()
        && !Path::new(&format!("/proc/{pid}")).exists()
        && Path::new("/proc/self").exists()
}

/// The start time of a process, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` runs this program (the same executable name).
fn runs_this_program(pid: u32) -> bool {
    let name = |p: &Path| p.file_name().map(|n| n.to_os_string());
    let mine = std::env::current_exe().ok().and_then(|p| name(&p));
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| name(&p))
        .or_else(|| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv0 = cmd.split(|b| *b == 0).next()?;
            name(Path::new(&String::from_utf8_lossy(argv0).to_string()))
        });
    mine.is_some() && mine == theirs
}

/// Why a claim is stale, or None while it holds.
pub fn stale_because(text: &str) -> Option<&'static str> {
    let mut parts = text.split_whitespace();
    let host = parts.next();
    let pid = parts.next().map(|p| p.parse::<u32>());
    let start = parts.next().map(|t| t.parse::<u64>());
    let (host, pid) = match (host, pid) {
        (None, _) => return Some("empty"),
        (Some(_), Some(Ok(pid))) => (host.expect("matched"), pid),
        _ => return Some("unreadable"),
    };
    if host != hostname() || pid == std::process::id() || !Path::new("/proc/self").exists() {
        return None;
    }
    if process_gone(pid) {
        return Some("its process is gone");
    }
    match start {
        Some(Ok(t)) if start_time(pid).is_some_and(|now| now != t) => {
            Some("its process id now belongs to another process")
        }
        Some(Ok(_)) => None,
        Some(Err(_)) => Some("unreadable"),
        None if !runs_this_program(pid) => Some("its process is not sparsity-lab"),
        None => None,
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
        // A record that says done but lost its final measures is damaged:
        // train it again rather than report fewer seeds than it claims.
        Ok(r) if r.status == Status::Done && r.r#final.is_none() => {
            warn!(
                "{}: a finished run without its `final` measures; running it again",
                path.display()
            );
            false
        }
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

#[cfg(test)]
mod stale_tests {
    use super::*;

    #[test]
    fn a_claim_holds_only_while_its_process_runs() {
        let me = claim_text();
        assert_eq!(stale_because(&me), None);
        let host = hostname();
        // Another live process of this host: held while its start time
        // matches, stale once the id names another process.
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut child = child;
        let t = start_time(pid).unwrap();
        assert_eq!(stale_because(&format!("{host} {pid} {t}\n")), None);
        assert!(stale_because(&format!("{host} {pid} {}\n", t + 1)).is_some());
        // Old format: held only if the process is this program (sleep is not).
        assert_eq!(
            stale_because(&format!("{host} {pid}\n")),
            Some("its process is not sparsity-lab")
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            stale_because(&format!("{host} {pid} {t}\n")),
            Some("its process is gone")
        );
        assert_eq!(stale_because(""), Some("empty"));
        assert_eq!(stale_because("\n"), Some("empty"));
        assert_eq!(stale_because("garbage"), Some("unreadable"));
        assert_eq!(stale_because("other-host 1 5\n"), None);
    }
}
