#!/usr/bin/env bash
# Rebuilds every committed study report from its run records, in place, and
# then FINDINGS.md's generated block and experiments/forest.svg from the
# studies' declared hypotheses: the one command to run after any study's
# records change (a retrain, a new measure). scripts/check-reports.sh and
# tests/summary.rs check that what is committed is what this writes.
#
#   scripts/regenerate.sh              # every experiments/*/ (and */quick/) with runs/
#   scripts/regenerate.sh sparsity cnn # only these studies' reports (the summary is always rebuilt)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/sparsity-lab"
. scripts/study-dirs.sh
study_dirs "$@"
for d in "${dirs[@]}"; do
    "$bin" report "$d" > /dev/null
    echo "rebuilt $d"
done
"$bin" summary
