#!/usr/bin/env bash
# Regenerates every committed study report from its run records and diffs it
# with the committed one: the check that a change to the reporting code
# keeps the committed tables and plots byte-identical.
#
#   scripts/check-reports.sh              # every experiments/*/ (and */quick/) with runs/
#   scripts/check-reports.sh sparsity cnn # only these studies
#
# Each folder is copied to a temporary directory, its generated files
# (results.md, results.csv, paired.csv, metrics.csv, plots/) are removed
# from the copy, `sparsity-lab report` rebuilds them from runs/, and the copy
# is compared with the committed folder (`diff -r`), so a file that the
# report no longer writes shows up as well as one whose bytes moved. The
# committed folders are never written. Exit status: 0 when every folder is
# identical, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/sparsity-lab"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

. scripts/study-dirs.sh
study_dirs "$@"
[ ${#dirs[@]} -gt 0 ] || { echo "check-reports: no study folder with runs/ found" >&2; exit 2; }

status=0
for d in "${dirs[@]}"; do
    copy="$tmp/$(echo "$d" | tr / _)"
    # Only the committed files: checkpoints and other ignored files stay out.
    mkdir -p "$copy"
    git ls-files -z -- "$d" | while IFS= read -r -d '' f; do
        rel=${f#"$d"/}
        case "$rel" in quick/*) continue ;; esac
        mkdir -p "$copy/$(dirname "$rel")"
        cp "$f" "$copy/$rel"
    done
    ref="$tmp/ref-$(basename "$copy")"
    cp -r "$copy" "$ref"
    rm -rf "$copy/results.md" "$copy/results.csv" "$copy/paired.csv" "$copy/metrics.csv" "$copy/plots"
    if ! "$bin" report "$copy" >"$tmp/log" 2>&1; then
        echo "FAIL $d: report failed:"
        sed 's/^/    /' "$tmp/log"
        status=1
        continue
    fi
    # Outputs the repository ignores (the tuning study's >1 MiB metrics.csv
    # and magnitude plots) are not compared.
    (cd "$copy" && find . -type f ! -path './runs/*') | while IFS= read -r f; do
        [ -e "$ref/$f" ] || ! git check-ignore -q "$d/${f#./}" || rm "$copy/$f"
    done
    if diff -r -q "$ref" "$copy" >"$tmp/diff"; then
        echo "same $d ($(find "$ref" -type f ! -path '*/runs/*' | wc -l) files)"
    else
        echo "DIFF $d:"
        sed "s|$tmp/||g; s/^/    /" "$tmp/diff"
        status=1
    fi
done
exit $status
