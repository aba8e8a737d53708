#!/usr/bin/env bash
# The device check: the CUDA path of sparsity-lab on a real GPU, in one call
# of a few minutes, on a machine without Rust or a network. It runs the
# travelling binary (dist/sparsity-lab-cuda, from scripts/build-cuda-binary.sh)
# and writes one report, $OUT/gpu-check.md, then prints a one-line verdict.
#
#   scripts/gpu-check.sh             # on the GPU machine (docs/cuda.md: the device call)
#   scripts/gpu-check.sh --dry-run   # anywhere: the same steps on the CPU, to test the script
#
# Steps (each under a time limit; worst case about 360 s, usually far less):
#  1. nvidia-smi, and the CUDA libraries the binary will load;
#  2. `selfcheck`: every optimizer's fused CUDA step (and Candle's tensor path
#     on the GPU) against the CPU reference, from the same tensors, with a
#     stated tolerance;
#  3. `train` on the planted sparse teacher with --device cuda and --device
#     cpu, same seed, Adam and SGD+momentum with a proximal L1: the final
#     metrics and every weight compared, against stated bounds
#     (scripts/gpu_check.py);
#  4. the `smoke` study on the GPU, compared with its committed reference;
#  5. the training step of the MLP and the Transformer: sparsity-lab
#     (`bench-steps`) against PyTorch on the same GPU.
# The verdict is PASS when 2, 3 and 4 pass; the timings are reported, not judged.
#
# The CUDA libraries are found where PyTorch's wheels put them
# (site-packages/nvidia/*/lib), then /usr/local/cuda/lib64; the driver's
# libcuda.so.1 is on the system path. Override the binary with
# SPARSITY_LAB_BIN, the report folder with OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

dry=false
case "${1:-}" in
    --dry-run) dry=true ;;
    "") ;;
    *) echo "usage: scripts/gpu-check.sh [--dry-run]" >&2; exit 2 ;;
esac
device=cuda
$dry && device=cpu

OUT=${OUT:-$root/results/gpu-check}
mkdir -p "$OUT"
report=$OUT/gpu-check.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

# xz, or Python's lzma where xz is missing.
unxz_to() { xz -dc "$1" >"$2" 2>/dev/null || python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; }
bin=${SPARSITY_LAB_BIN:-dist/sparsity-lab-cuda}
info=$bin.info
if [ ! -x "$bin" ] && [ -f "$bin.xz" ]; then
    unxz_to "$bin.xz" "$work/sparsity-lab" && chmod +x "$work/sparsity-lab" && bin=$work/sparsity-lab
fi
if [ ! -x "$bin" ]; then
    echo "gpu-check: FAIL: no binary at $bin (build it with scripts/build-cuda-binary.sh and carry dist/)"
    exit 1
fi
case "$bin" in /*) ;; *) bin=$root/$bin ;; esac

# The CUDA libraries of PyTorch's wheels, for the binary's dlopen().
py=$(command -v python3 || true)
libpath=""
if [ -n "$py" ]; then
    site=$("$py" -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null || true)
    if [ -n "$site" ]; then
        for d in "$site"/nvidia/*/lib "$site"/nvidia/cu*/lib; do
            [ -d "$d" ] && case ":$libpath:" in *":$d:"*) ;; *) libpath=$libpath${libpath:+:}$d ;; esac
        done
    fi
fi
[ -d /usr/local/cuda/lib64 ] && libpath=$libpath${libpath:+:}/usr/local/cuda/lib64
# cuRAND (Candle opens it with the GPU): the machine's, else the one carried
# in dist/ (scripts/build-cuda-binary.sh).
curand_from="the machine"
if ! { for d in ${libpath//:/ }; do ls "$d"/libcurand.so* 2>/dev/null; done; ldconfig -p 2>/dev/null | grep libcurand.so; } | grep -q .; then
    curand_from="not found"
    if [ -f dist/libcurand.so.10.xz ]; then
        mkdir -p "$work/lib"
        unxz_to dist/libcurand.so.10.xz "$work/lib/libcurand.so.10" && libpath=$libpath${libpath:+:}$work/lib &&
            curand_from="dist/libcurand.so.10.xz (the build's)"
    fi
fi
export LD_LIBRARY_PATH=$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

verdict=PASS
problems=()
fail() { verdict=FAIL; problems+=("$1"); }
section() { printf '\n## %s\n\n' "$1" >>"$report"; }
# Runs a step with a time limit, its output into the report as a code block.
# usage: step SECONDS LOGNAME command...   (returns the command's status)
step() {
    local limit=$1 log=$work/$2.log
    shift 2
    local t0 rc
    t0=$(date +%s)
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    {
        echo '```'
        echo "\$ ${*/#$root\//}"
        cat "$log"
        if [ "$rc" = 124 ]; then
            echo "[stopped after the ${limit} s limit]"
        else
            echo "[exit $rc after $(($(date +%s) - t0)) s]"
        fi
        echo '```'
    } >>"$report"
    return "$rc"
}

{
    echo "# gpu-check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- mode: $($dry && echo "dry run (--dry-run: every step on the CPU)" || echo "GPU")"
    echo "- binary: ${bin#$root/} ($(stat -c %s "$bin") bytes)"
    [ -f "$info" ] && sed 's/^/- build: /' "$info"
    echo "- cuRAND from: $curand_from"
    echo "- LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-(empty)}"
    echo "- python: ${py:-none}; torch: $([ -n "$py" ] && "$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null || echo none)"
} >"$report"

section "1. The GPU and the libraries"
gpu="no GPU (dry run)"
if $dry; then
    echo "(dry run: nvidia-smi skipped)" >>"$report"
else
    step 10 nvidia-smi nvidia-smi || fail "nvidia-smi failed"
    gpu=$(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>/dev/null | head -1)
    gpu=${gpu:-unknown GPU}
fi
{
    echo "CUDA libraries on the loader path:"
    echo '```'
    for d in ${LD_LIBRARY_PATH//:/ }; do
        ls "$d" 2>/dev/null | grep -E '^lib(cublas|cublasLt|curand|nvrtc|cudart)\.so' | sed "s|^|$d/|"
    done
    ldconfig -p 2>/dev/null | grep -E 'libcuda\.so' | sed 's/^/(system) /'
    echo '```'
    echo "The copies the binary loaded are on the selfcheck's last line (section 2)."
} >>"$report"

section "2. Optimizer steps on the device against the CPU reference"
if step 90 selfcheck "$bin" selfcheck --device "$device"; then
    selfcheck_line=$(grep '^selfcheck ' "$work/selfcheck.log" | tail -1)
else
    fail "selfcheck: $(tail -1 "$work/selfcheck.log")"
    selfcheck_line="failed"
fi

section "3. Training on the device against the CPU, same seed"
{
    echo "The planted sparse teacher, MLP 64-32-10, 1000 steps of batch 64, seed 0."
    echo "Bounds: scripts/gpu_check.py (BOUNDS): the two are not bit-identical (other"
    echo "summation orders in the matrix products and the backward), and must stay within them."
} >>"$report"
train_ok=0
for spec in "adam lr=0.003" "sgd lr=0.05 momentum=0.9 l1_prox=0.0005"; do
    set -- $spec
    opt=$1
    shift
    sets=()
    for kv in "$@"; do sets+=(--set "$kv"); done
    printf '\n### %s\n\n' "$spec" >>"$report"
    ok=true
    for side in device cpu; do
        dev=$device
        [ $side = cpu ] && dev=cpu
        step 25 "train-$opt-$side" "$bin" train --model mlp --data teacher --optimizer "$opt" "${sets[@]}" \
            --steps 1000 --seed 0 --device "$dev" --out "$work/train-$opt-$side" || ok=false
    done
    if $ok; then
        # The device's run first, the CPU's second: differences relative to the CPU.
        echo "Device run (dry run: a second CPU run) against the CPU run:" >>"$report"
        if [ -z "$py" ]; then
            fail "train: no python3 to compare the runs"
        elif "$py" scripts/gpu_check.py train-diff "$work/train-$opt-device" "$work/train-$opt-cpu" >>"$report" 2>&1; then
            train_ok=$((train_ok + 1))
        else
            fail "train $spec: a difference outside its bound (see the report)"
        fi
    else
        fail "train $spec: a run failed"
    fi
done

section "4. The smoke study on the device"
if step 60 smoke "$bin" --exp smoke --device "$device" --out "$work/smoke"; then
    grep -q ' 0 diverged, 0 failed' "$work/smoke.log" || fail "smoke: runs diverged or failed"
    smoke_line=$(grep '^reproduction' "$work/smoke.log" | head -1)
    [ -f "$work/smoke/results.md" ] && { echo; echo "results.md:"; echo; cat "$work/smoke/results.md"; } >>"$report"
else
    fail "smoke: $(tail -1 "$work/smoke.log")"
    smoke_line="failed"
fi

section "5. Training-step time against PyTorch on the same device"
budget=2
cases="mlp-64 mlp-256 transformer"
# The dry run times the small MLP only (the Transformer is slow on a CPU).
$dry && budget=0.3 && cases=mlp-64
step 40 bench-ours "$bin" bench-steps --device "$device" --budget "$budget" $cases || fail "bench-steps failed"
bench_line="not measured"
if [ -n "$py" ]; then
    if step 60 bench-torch "$py" scripts/gpu_check.py bench --device "$device" --budget "$budget" $cases; then
        grep '^{' "$work/bench-ours.log" >"$work/ours.jsonl"
        grep '^{' "$work/bench-torch.log" >"$work/torch.jsonl"
        "$py" scripts/gpu_check.py bench-table "$work/ours.jsonl" "$work/torch.jsonl" >"$work/table.md" 2>&1
        cat "$work/table.md" >>"$report"
        bench_line=$(awk -F'|' 'NR > 2 { gsub(/ /, "", $2); gsub(/ /, "", $5); printf "%s%s %s", sep, $2, $5; sep = ", " }' "$work/table.md")
        bench_line="PyTorch/ours: $bench_line"
    fi
else
    echo "(no python3: PyTorch not timed)" >>"$report"
fi

elapsed=$(($(date +%s) - start))
line="gpu-check: $verdict on $gpu ($device): selfcheck: ${selfcheck_line#selfcheck }; train: $train_ok of 2 within bounds; smoke: ${smoke_line:-?}; $bench_line; $elapsed s"
{
    section "Verdict"
    echo "$line"
    for p in "${problems[@]}"; do echo "- $p"; done
} >>"$report"
echo "$line"
echo "report: $report"
[ "$verdict" = PASS ]
