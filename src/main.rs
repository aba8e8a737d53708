//! The `sparsity-lab` binary: everything happens in [`sparsity_lab::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    sparsity_lab::cli::main()
}
