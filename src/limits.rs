//! The memory this process may still take: the least of what the machine
//! has available (MemAvailable), what its own limits leave (the address
//! space and data limits, `ulimit -v` / `ulimit -d`), and what its cgroup
//! leaves (memory.max, or the v1 memory.limit_in_bytes, as under Slurm or
//! a container), each less what is already used. Linux only: elsewhere
//! nothing is known and [`available`] is None.
//!
//! And [`OomExit`], the allocator wrapper that turns an allocation the
//! process cannot have into one line on stderr and exit status 1, instead
//! of Rust's abort with a core dump.

use std::alloc::{GlobalAlloc, Layout};
use std::path::{Path, PathBuf};

/// Memory that may still be taken, and the limit that decides it.
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    pub bytes: f64,
    /// What bounds it, e.g. "the process's address-space limit (ulimit -v)".
    pub limit: String,
}

/// The least of the memory the machine, the process's rlimits and its
/// cgroup leave; None where none of them is known.
pub fn available() -> Option<Available> {
    let mut all = vec![];
    if let Some(b) = meminfo_kb("MemAvailable:") {
        all.push(Available {
            bytes: b,
            limit: "available on this machine (MemAvailable)".into(),
        });
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for (name, used, what) in [
        (
            "Max address space",
            "VmSize:",
            "left under the process's address-space limit (ulimit -v)",
        ),
        (
            "Max data size",
            "VmData:",
            "left under the process's data-size limit (ulimit -d)",
        ),
    ] {
        if let Some(limit) = rlimit(&limits, name) {
            let used = status_kb(&status, used).unwrap_or(0.0);
            all.push(Available {
                bytes: (limit - used).max(0.0),
                limit: what.into(),
            });
        }
    }
    all.extend(cgroup());
    all.into_iter().min_by(|a, b| a.bytes.total_cmp(&b.bytes))
}

fn meminfo_kb(key: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    status_kb(&text, key)
}

/// A `Key:   123 kB` line of /proc/meminfo or /proc/self/status, in bytes.
fn status_kb(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The soft limit of a /proc/self/limits row, in bytes; None when unlimited.
fn rlimit(text: &str, name: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let soft = line[name.len()..].split_whitespace().next()?;
    soft.parse::<f64>().ok()
}

/// A number in a cgroup file ("max" and absent files are no limit).
fn read_bytes(p: &Path) -> Option<f64> {
    std::fs::read_to_string(p).ok()?.trim().parse::<f64>().ok()
}

/// What the cgroup (v2, each level up to the root; or v1) leaves.
fn cgroup() -> Vec<Available> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = vec![];
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        let (base, limit_file, usage_file, what) = if controllers.is_empty() {
            (
                root.clone(),
                "memory.max",
                "memory.current",
                "left under the cgroup's memory.max",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                root.join("memory"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "left under the cgroup's memory.limit_in_bytes",
            )
        } else {
            continue;
        };
        // The group and each of its parents may set a limit (inside a
        // container the group's own path may not exist: then the root is it).
        let mut dir = base.join(rel);
        loop {
            if let Some(limit) = read_bytes(&dir.join(limit_file))
                // v1 writes "no limit" as a number near 2^63.
                && limit < 1e18
            {
                let used = read_bytes(&dir.join(usage_file)).unwrap_or(0.0);
                out.push(Available {
                    bytes: (limit - used).max(0.0),
                    limit: what.into(),
                });
            }
            if dir == base || !dir.pop() {
                break;
            }
        }
    }
    out
}

/// Bytes as `1.20 GB` (indicatif's decimal units).
pub fn human_bytes(b: f64) -> String {
    indicatif::DecimalBytes(b.max(0.0).min(u64::MAX as f64) as u64).to_string()
}

/// A global allocator that ends the process cleanly when an allocation
/// fails: one line on stderr naming the size, exit status 1 (Rust's own
/// handler prints `memory allocation of N bytes failed` and aborts).
/// Nothing is allocated on the way out.
pub struct OomExit<A>(pub A);

// SAFETY: every call goes to the wrapped allocator unchanged; only a null
// result (a failure) is turned into an exit.
unsafe impl<A: GlobalAlloc> GlobalAlloc for OomExit<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc(layout) };
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if p.is_null() {
            out_of_memory(new_size);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// Writes the message from a stack buffer and exits with status 1.
#[cold]
fn out_of_memory(size: usize) -> ! {
    use std::io::Write;
    let mut buf = [0u8; 400];
    let len = {
        let mut w = &mut buf[..];
        let _ = writeln!(
            w,
            "error: out of memory: an allocation of {size} bytes failed; the process may not use more (its limit: ulimit -v, a cgroup's memory.max, or the machine's memory); use smaller sizes (--hidden, --d-model, --layers, --context, --batch-size) or raise the limit"
        );
        400 - w.len()
    };
    let _ = std::io::stderr().write_all(&buf[..len]);
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_decimal_units() {
        assert_eq!(human_bytes(999.0), "999 B");
        assert_eq!(human_bytes(1.2e9), "1.20 GB");
        assert_eq!(human_bytes(3.5e12), "3.50 TB");
        assert_eq!(human_bytes(-1.0), "0 B");
    }

    #[test]
    fn reads_rlimits_and_status_lines() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max data size             unlimited            unlimited            bytes\n\
                      Max address space         4096000000           unlimited            bytes\n";
        assert_eq!(rlimit(limits, "Max address space"), Some(4096000000.0));
        assert_eq!(rlimit(limits, "Max data size"), None);
        assert_eq!(
            status_kb("VmSize:\t  1000 kB\n", "VmSize:"),
            Some(1024000.0)
        );
        // On Linux at least the machine's memory is known.
        if Path::new("/proc/meminfo").exists() {
            let a = available().unwrap();
            assert!(a.bytes > 0.0, "{a:?}");
        }
    }
}
