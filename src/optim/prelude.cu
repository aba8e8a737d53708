// The primitives of the kernel table in CUDA C++: what the rules in
// src/optim/kernels.rs may call besides sqrt, fabs and fmax. Their Rust
// twins are in src/optim/kernel_gen.rs; the two must compute the same
// operations in the same order (the host test in cuda.rs checks it bit for
// bit). The kernels below this prelude are generated from the table by
// the `kernels!` macro and compiled at run time by NVRTC with
// --fmad=false, so that no a*b+c is contracted, as on the CPU.

// torch.sign: -1, 0 or 1.
template <typename T> __device__ __forceinline__ T sgn(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
}

// lerp(a, b, w) as torch: w < 0.5 ? a + (b - a) w : b - (b - a)(1 - w).
// The host passes w and 1 - w rounded to T, and which branch applies.
template <typename T> __device__ __forceinline__ T lerp(T a, T b, T w, T w1, int lo) {
  return lo ? a + (b - a) * w : b - (b - a) * w1;
}

// a d + ((1 - d) g) g, with d1 = 1 - d rounded to T.
template <typename T> __device__ __forceinline__ T ema_sq(T a, T g, T d, T d1) {
  return a * d + (g * d1) * g;
}

// One thread per element, striding over the grid.
#define GRID_LOOP(i, n) \
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < (n); \
       i += (unsigned long long)blockDim.x * gridDim.x)

