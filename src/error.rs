//! Errors that are the user's to fix.
//!
//! Anything that comes from what the user asked for (a flag, a config key, a
//! value out of range, a missing dataset) is a [`UsageError`]. The binary
//! prints it on one line and exits with status 2; every other error exits
//! with status 1. Neither ever prints a backtrace.

use std::fmt;

/// A mistake in the user's input, with a message that says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds an [`anyhow::Error`] that the binary reports as a usage error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Returns early with a usage error built from a format string.
#[macro_export]
macro_rules! bail_usage {
    ($($arg:tt)*) => {
        return Err($crate::error::usage(format!($($arg)*)))
    };
}

/// True when the error, or any error in its chain, is a [`UsageError`].
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<UsageError>().is_some())
}

/// The error and its causes on one line, `outer: inner: ...`, without the
/// backtraces some libraries append after a newline (Candle does when
/// `RUST_BACKTRACE` is set).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = vec![];
    for cause in err.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or("").trim().to_string();
        // anyhow's context chains repeat the inner message; keep it once.
        if !first.is_empty() && parts.last() != Some(&first) {
            parts.push(first);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_keeps_the_chain_and_drops_backtraces() {
        let inner = anyhow::anyhow!("device error\n   0: some::frame\n   1: other::frame");
        let err = inner.context("loading the model");
        assert_eq!(one_line(&err), "loading the model: device error");
        assert!(is_usage(&usage("bad key").context("in study.toml")));
    }
}
