//! The `sparsity-lab` binary: everything happens in [`sparsity_lab::cli`].

use std::process::ExitCode;

/// Training allocates and frees many large temporaries per step. glibc's
/// malloc maps each one over 128 KiB afresh and faults it in page by page,
/// which cost a third of a Transformer step here; mimalloc reuses them.
/// An allocation that fails ends the process with one line and status 1
/// ([`sparsity_lab::limits::OomExit`]).
#[global_allocator]
static ALLOC: sparsity_lab::limits::OomExit<mimalloc::MiMalloc> =
    sparsity_lab::limits::OomExit(mimalloc::MiMalloc);

fn main() -> ExitCode {
    sparsity_lab::cli::main()
}
