#!/usr/bin/env bash
# Runs a study across a Slurm cluster as a job array: each array task runs a
# deterministic share of the runs (--shard i/n), all writing their run files
# into the same results folder (results/<name>/, or its quick/ or set-...
# sub-folder) on a shared filesystem; a last job, started when every shard
# succeeded, runs the same command without --shard: every run is then
# already recorded, so it only writes the tables and plots and prints the
# reproduction verdict against experiments/<name>/ (and retries a run that
# failed, if any).
#
# Usage (from the project's root, on a login node):
#   scripts/slurm-study.sh sparsity 4                  # 4 array tasks
#   scripts/slurm-study.sh sparsity 4 --quick          # the quick version
#   scripts/slurm-study.sh epsilon 8 --device cuda     # one GPU per task
# Extra arguments go to every shard and to the report job (e.g. --quick,
# --set epochs=10, --device cuda, --out DIR). Each shard resumes like a
# single-machine run: resubmitting redoes only the runs that have no record
# yet, and runs are claimed, so overlapping jobs never train one twice.
#
# With --device cuda the binary is built with the `cuda` feature for the
# GPUs' compute capability, CUDA_COMPUTE_CAP (e.g. 80 for A100, 90 for
# H100/H200; required, since a login node may have no GPU to ask), and
# every job requests one GPU (--gres=gpu:1; override with GPU_GRES).
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
gpu=()
case " $* " in
  *" cuda "* | *"--device cuda"* | *"--device=cuda"*)
    : "${CUDA_COMPUTE_CAP:?--device cuda: set CUDA_COMPUTE_CAP to the GPUs' compute capability (80 for A100, 90 for H100)}"
    export CUDA_COMPUTE_CAP
    features=(--features cuda)
    gpu=(--gres="${GPU_GRES:-gpu:1}")
    ;;
esac
cargo build --release --quiet "${features[@]}"
bin="${CARGO_TARGET_DIR:-$root/target}/release/sparsity-lab"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
"$bin" --list | grep -qx "$study" || { echo "no study '$study' in experiments/ (sparsity-lab --list)" >&2; exit 2; }
mkdir -p "$root/slurm-logs"
extra=""
[ $# -gt 0 ] && extra=$(printf ' %q' "$@")
array_job=$(sbatch --parsable \
  --job-name="sl-$study" \
  --array="0-$((shards - 1))" \
  --cpus-per-task="${CPUS_PER_TASK:-2}" \
  "${gpu[@]}" \
  --output="$root/slurm-logs/%x-%A_%a.out" \
  --chdir="$root" \
  --export=ALL \
  --wrap="exec $bin --exp $study --shard \${SLURM_ARRAY_TASK_ID}/$shards$extra")
report_job=$(sbatch --parsable \
  --job-name="sl-$study-report" \
  --dependency="afterok:$array_job" \
  --cpus-per-task="${CPUS_PER_TASK:-2}" \
  "${gpu[@]}" \
  --output="$root/slurm-logs/%x-%j.out" \
  --chdir="$root" \
  --export=ALL \
  --wrap="exec $bin --exp $study$extra")
echo "submitted shards as job array $array_job and the report as job $report_job"
echo "logs: $root/slurm-logs/; results: under $root/results/$study/ (the report job's log names the folder and the verdict)"
