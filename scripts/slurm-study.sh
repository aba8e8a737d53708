#!/usr/bin/env bash
# Runs a study across a Slurm cluster as a job array: each array task runs a
# deterministic share of the runs (--shard i/n), all writing their run files
# into the same experiments/<name>/runs/ on a shared filesystem; a last job,
# started when every shard succeeded, merges them into the tables and plots.
#
# Usage (from the project's root, on a login node):
#   scripts/slurm-study.sh sparsity 4            # 4 array tasks
#   scripts/slurm-study.sh epsilon 8 --device cuda
# Extra arguments go to every shard (e.g. --set epochs=10, --device cuda).
# Each shard resumes like a single-machine run: resubmitting redoes only the
# runs that have no record yet.
#
# Environment: SBATCH_* variables and the defaults below set the resources;
# SPARSITY_LAB_DATA / HF_HUB_CACHE are passed through to the jobs.
set -euo pipefail
study=${1:?usage: scripts/slurm-study.sh STUDY SHARDS [sparsity-lab args...]}
shards=${2:?usage: scripts/slurm-study.sh STUDY SHARDS [sparsity-lab args...]}
shift 2
cd "$(dirname "$0")/.."
root=$(pwd)
features=()
case " $* " in *" cuda "* | *"--device cuda"* | *"--device=cuda"*) features=(--features cuda) ;; esac
cargo build --release --quiet "${features[@]}"
bin="$root/target/release/sparsity-lab"
"$bin" --list | grep -qx "$study" || { echo "no study '$study' in experiments/ (sparsity-lab --list)" >&2; exit 2; }
mkdir -p "$root/slurm-logs"
extra=""
[ $# -gt 0 ] && extra=$(printf ' %q' "$@")
array_job=$(sbatch --parsable \
  --job-name="sl-$study" \
  --array="0-$((shards - 1))" \
  --cpus-per-task="${CPUS_PER_TASK:-2}" \
  --output="$root/slurm-logs/%x-%A_%a.out" \
  --chdir="$root" \
  --export=ALL \
  --wrap="exec $bin --exp $study --shard \${SLURM_ARRAY_TASK_ID}/$shards$extra")
report_job=$(sbatch --parsable \
  --job-name="sl-$study-report" \
  --dependency="afterok:$array_job" \
  --output="$root/slurm-logs/%x-%j.out" \
  --chdir="$root" \
  --export=ALL \
  --wrap="exec $bin report $root/experiments/$study")
echo "submitted shards as job array $array_job and the report as job $report_job"
echo "logs: $root/slurm-logs/; results: $root/experiments/$study/results.md"
