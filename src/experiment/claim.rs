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

use std::path::Path;

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

#[cfg(test)]
mod tests {
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
