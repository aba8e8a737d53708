#!/usr/bin/env bash
# Checks that the `cuda` feature builds, and tests what can be tested without
# a GPU: installs Debian's CUDA toolkit
# (it needs the contrib and non-free components) and builds the release
# binary with --features cuda. No GPU is needed to build; running needs one
# (`--device cuda`). Too heavy for the normal CI run (a long build, and a few
# GB of toolkit), so it is run by hand:  scripts/check-cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  sources=/etc/apt/sources.list.d/debian.sources
  if [ -f "$sources" ] && ! grep -q "non-free" "$sources"; then
    sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' "$sources"
  fi
  if [ -f /etc/apt/sources.list ] && ! grep -q "non-free" /etc/apt/sources.list; then
    sed -i -E 's/^(deb .* main)$/\1 contrib non-free non-free-firmware/' /etc/apt/sources.list
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nvidia-cuda-toolkit
fi
nvcc --version | tail -1
# Compute capability 8.0 (A100) unless set; candle's kernels need one.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
time cargo build --release --features cuda
echo "cuda build ok: $CARGO_TARGET_DIR/release/sparsity-lab (run with --device cuda on a GPU machine)"
# The fused CUDA optimizer kernels: NVRTC compiles them (no GPU needed) and
# every entry point is there; their host build equals the CPU path bit for bit.
cargo test --release --features cuda --lib optim::cuda
