//! Files written so that a crash never leaves a half-written one behind,
//! and a helper that reads them back.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let tmp = dir.join(format!(".tmp.{}.{name}", std::process::id()));
    // Errors name the file being written (a full disk shows up here), and
    // the temporary file it goes through.
    let writing = || {
        format!(
            "writing {} (through the temporary file {})",
            path.display(),
            tmp.display()
        )
    };
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(writing)?;
        f.write_all(bytes).with_context(writing)?;
        f.sync_all().with_context(writing)?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes a generated file that is no longer wanted (one an earlier run
/// wrote); a file that is not there is fine.
pub fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the stale {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Makes sure files can be written into `dir` before any work is done:
/// creates it and a probe file there, then removes the probe. The error, a
/// usage error, names the folder and the flag (`what`, e.g. `--out`).
pub fn check_writable(dir: &Path, what: &str) -> Result<()> {
    let fail = |e: std::io::Error| {
        crate::error::usage(format!(
            "{what} {}: cannot write there ({e}); choose a writable folder",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".tmp.{}.probe", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Pretty JSON, written atomically, with a final newline.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads a number that a record may hold as `null` (serde_json writes NaN
/// and infinities so) back as NaN, so that no record is unreadable.
pub fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A label as a file name part: ASCII letters and digits lower-cased, `-`
/// and `_` kept, anything else `-`. Names the run files and the plots.
pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("sparsity-lab-io-{}", std::process::id()));
        let p = dir.join("sub/x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        // A failed write (as on a full disk) names the file being written
        // first: here the temporary name is taken by a folder.
        let blocked = dir.join(format!("sub/.tmp.{}.z.json", std::process::id()));
        std::fs::create_dir_all(&blocked).unwrap();
        let err = format!(
            "{:#}",
            write_atomic(&dir.join("sub/z.json"), b"x").unwrap_err()
        );
        assert!(
            err.starts_with(&format!("writing {}", dir.join("sub/z.json").display())),
            "{err}"
        );
        std::fs::remove_dir(&blocked).unwrap();
        // Errors name the path: here a parent that is a file.
        let under_file = p.join("y.json");
        let err = format!("{:#}", write_atomic(&under_file, b"x").unwrap_err());
        assert!(err.contains(&p.display().to_string()), "{err}");
        let err = format!("{:#}", check_writable(&under_file, "--out").unwrap_err());
        assert!(err.contains("--out") && err.contains("y.json"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
