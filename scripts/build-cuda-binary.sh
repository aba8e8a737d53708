#!/usr/bin/env bash
# Builds the CUDA binary that travels: dist/sparsity-lab-cuda, a release build
# with --features cuda that runs on a machine whose CUDA version differs from
# the toolkit it was built with (docs/cuda.md says why and how).
#
# - The CUDA libraries are loaded at run time, not linked: cudarc's
#   `dynamic-loading` code path dlopen()s libcuda, libcublas(Lt), libcurand
#   and libnvrtc when the device is first used, trying their unversioned and
#   versioned names (libcublas.so.13, .12, .11, ...). Candle 0.11 asks cudarc
#   for `dynamic-linking`, and cudarc refuses both at once in its build
#   script, so the switch is made where that script does not see it: the cfg
#   goes in RUSTFLAGS, and with an explicit --target cargo applies RUSTFLAGS
#   to the crates only, not to build scripts. The link lines the build script
#   still emits find stand-ins and, since nothing refers to them, the linker
#   (--as-needed) records no dependency.
# - cudarc's bindings are those of CUDA 13 (CUDARC_CUDA_VERSION), the version
#   of the device image, whose libraries are libcublas.so.13 and so on.
# - The CUDA runtime that Candle's precompiled MoE kernels call is linked
#   statically (libcudart_static.a of the build's toolkit): no libcudart.so.
# - Candle's kernels are PTX for compute capability CUDA_COMPUTE_CAP (80 by
#   default); a newer GPU's driver compiles them for itself (an H100 is 90).
#
# - libcurand.so.10 goes beside it, xz-compressed (dist/libcurand.so.10.xz,
#   about 40 MB): Candle opens cuRAND whenever it opens a GPU, and PyTorch's
#   CUDA 13 wheels may not ship it. Its soname has been .10 from CUDA 11 to
#   13; gpu-check.sh unpacks it only where the machine has none.
#
# Needs the CUDA toolkit (scripts/check-cuda.sh installs Debian's, 11.8) and
# a long build (about 15 minutes on two cores). Prints the binary's size and
# its dynamic dependencies, and fails if a CUDA library is among them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || {
    echo "error: nvcc not found; install the CUDA toolkit first (scripts/check-cuda.sh does)" >&2
    exit 2
}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-dist}
mkdir -p "$CARGO_TARGET_DIR"
CARGO_TARGET_DIR=$(cd "$CARGO_TARGET_DIR" && pwd)

# Stand-ins for the libraries cudarc's build script names on the link line.
dirs="/usr/lib/x86_64-linux-gnu/stubs /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64/stubs /usr/local/cuda/lib64"
find_lib() { for d in $dirs; do [ -e "$d/$1" ] && { echo "$d/$1"; return; }; done; }
cudart_static=$(find_lib libcudart_static.a)
[ -n "$cudart_static" ] || { echo "error: libcudart_static.a not found (the CUDA toolkit's development files)" >&2; exit 2; }
stand_ins=$CARGO_TARGET_DIR/cuda-link/lib
mkdir -p "$stand_ins"
printf 'INPUT(%s)\n' "$cudart_static" >"$stand_ins/libcudart.so"
for lib in cuda nvrtc curand cublas cublasLt; do
    real=$(find_lib "lib$lib.so")
    [ -n "$real" ] || { echo "error: lib$lib.so not found (the CUDA toolkit's development files)" >&2; exit 2; }
    ln -sf "$real" "$stand_ins/lib$lib.so"
done
# cudarc links from these folders only when one of its variables is set.
export CUDA_TOOLKIT_ROOT_DIR=$CARGO_TARGET_DIR/cuda-link

host=$(rustc -vV | sed -n 's/^host: //p')
echo "building: CUDA $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') toolkit, cudarc bindings $CUDARC_CUDA_VERSION, PTX for sm_$CUDA_COMPUTE_CAP, target $host"
RUSTFLAGS='--cfg feature="dynamic-loading"' nice -n 10 cargo build --release --features cuda --target "$host"

bin=$CARGO_TARGET_DIR/$host/release/sparsity-lab
stripped=$CARGO_TARGET_DIR/sparsity-lab-cuda
cp "$bin" "$stripped.tmp"
strip "$stripped.tmp"
mv "$stripped.tmp" "$stripped"
echo "dynamic dependencies of $stripped:"
readelf -d "$stripped" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
if readelf -d "$stripped" | grep -E 'NEEDED.*(cuda|cublas|curand|nvrtc)'; then
    echo "error: the binary depends on a CUDA library at load time; it would not travel" >&2
    exit 1
fi
# It starts without the build's CUDA libraries on the loader path: with a GPU
# the step runs (exit 0); without one it says so in one line (exit 2).
echo "\$ env -i PATH=/usr/bin:/bin sparsity-lab-cuda trace --optimizer adam --problem quadratic --steps 1 --device cuda"
set +e
env -i PATH=/usr/bin:/bin "$stripped" trace --optimizer adam --problem quadratic --steps 1 --device cuda
rc=$?
set -e
echo "[exit $rc]"
if [ "$rc" != 0 ] && [ "$rc" != 2 ]; then
    echo "error: the binary did not start cleanly (exit $rc)" >&2
    exit 1
fi

mkdir -p dist
out=dist/sparsity-lab-cuda
{
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'), built $(date -u '+%Y-%m-%d')"
    echo "CUDA $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') toolkit; cudarc bindings for $CUDARC_CUDA_VERSION, loading the CUDA libraries at run time; Candle's kernels as PTX for sm_$CUDA_COMPUTE_CAP"
} >"$out.info"
# The real library, not the link-time stub of the stubs/ folders.
curand=""
for d in /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64; do
    [ -e "$d/libcurand.so.10" ] && { curand=$(readlink -f "$d/libcurand.so.10"); break; }
done
[ -n "$curand" ] || { echo "error: libcurand.so.10 not found (the CUDA toolkit's libraries)" >&2; exit 2; }
# Compressed again whenever the library it came from changes (its path and
# size are kept beside it).
source_id="$curand $(stat -c %s "$curand")"
if [ ! -s dist/libcurand.so.10.xz ] || [ "$(cat dist/libcurand.so.10.xz.source 2>/dev/null)" != "$source_id" ]; then
    echo "compressing $curand into dist/libcurand.so.10.xz (a few minutes)"
    xz -T0 -6 -c "$curand" >dist/libcurand.so.10.xz.tmp && mv dist/libcurand.so.10.xz.tmp dist/libcurand.so.10.xz
    echo "$source_id" >dist/libcurand.so.10.xz.source
fi
bytes=$(stat -c %s "$stripped")
curand_bytes=$(stat -c %s dist/libcurand.so.10.xz)
echo "stripped binary: $((bytes / 1024 / 1024)) MiB ($bytes bytes); dist/libcurand.so.10.xz: $((curand_bytes / 1024 / 1024)) MiB"
rm -f "$out" "$out.xz"
if [ $((bytes + curand_bytes)) -lt $((60 * 1024 * 1024)) ]; then
    cp "$stripped" "$out"
else
    # Over what the device tool carries (64 MiB in all): ship it compressed;
    # gpu-check.sh unpacks it.
    xz -T0 -6 -c "$stripped" >"$out.xz"
    echo "$out.xz: $(($(stat -c %s "$out.xz") / 1024 / 1024)) MiB (gpu-check.sh unpacks it)"
fi
echo "dist/ in all: $(du -sm dist | cut -f1) MiB (the device tool carries up to 64 MiB)"
ls -l dist
