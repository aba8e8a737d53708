// Fused optimizer steps for CUDA: one thread per element reads p, g and
// the state, and writes p and the state back, in one pass. The formulas
// are those of the CPU kernels in fused.rs, operation for operation (and
// compiled with --fmad=false, so that no a*b+c is contracted): on a GPU
// they give the CPU's results to the rounding of sqrt and division.
//
// Compiled at run time by NVRTC (src/optim/cuda.rs), so the build needs
// no extra step. Every kernel takes (n, p, g, s0, s1, s2, scalars...,
// regularisation): three state pointers, null where the configuration has
// no such state, and scalars already rounded to T, as on the CPU. The
// argument lists are built by `plan()` in src/optim/cuda.rs; a unit test
// there compiles this file as C++ for the host and checks it bit for bit
// against the CPU kernels.

template <typename T> struct Reg {
  T l1;     // L1 subgradient: g += l1 * sign(p)
  T wd;     // coupled L2: g += wd * p
  T decay;  // decoupled decay: p *= decay (1 when off)
  T prox;   // proximal L1: p = sign(p) max(|p| - step * prox, 0)
};

template <typename T> __device__ __forceinline__ T sgn(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
}

// Applies the blocks before the rule; returns the decayed p, updates g.
template <typename T> __device__ __forceinline__ T pre(const Reg<T>& r, T p0, T& g) {
  if (r.l1 != T(0)) g = g + sgn(p0) * r.l1;
  if (r.wd != T(0)) g = g + p0 * r.wd;
  return p0 * r.decay;
}

// The proximal step, with the rule's own per-coordinate step size.
template <typename T> __device__ __forceinline__ T post(const Reg<T>& r, T p, T step) {
  if (r.prox == T(0)) return p;
  T shrunk = fabs(p) - step * r.prox;
  return sgn(p) * (shrunk > T(0) ? shrunk : T(0));
}

// lerp(a, b, w) as torch: w < 0.5 ? a + (b - a) w : b - (b - a)(1 - w).
// The host passes w and 1 - w rounded to T, and which branch applies.
template <typename T> __device__ __forceinline__ T lerp(T a, T b, T w, T w1, int lo) {
  return lo ? a + (b - a) * w : b - (b - a) * w1;
}

// a d + ((1 - d) g) g
template <typename T> __device__ __forceinline__ T ema_sq(T a, T g, T d, T d1) {
  return a * d + (g * d1) * g;
}

// The Adam-family moment block (Adam, AMSGrad, AdamW, NAdam, RAdam), as
// `moments` in fused.rs: m <- lerp(m, g, 1 - b1), v <- b2 v + (1 - b2) g^2.
template <typename T>
__device__ __forceinline__ void moments(T* m, T* v, unsigned long long i, T g, T w, T w1,
                                        int lo, T b2, T one_minus_b2, T& mi, T& vi) {
  mi = lerp(m[i], g, w, w1, lo);
  vi = ema_sq(v[i], g, b2, one_minus_b2);
  m[i] = mi;
  v[i] = vi;
}

#define GRID_LOOP(i, n) \
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < (n); \
       i += (unsigned long long)blockDim.x * gridDim.x)

#define REG_ARGS(T) T l1, T wd, T decay, T prox
// No braced initialisation: NVRTC's default dialect predates C++11.
template <typename T> __device__ __forceinline__ Reg<T> make_reg(T l1, T wd, T decay, T prox) {
  Reg<T> r;
  r.l1 = l1;
  r.wd = wd;
  r.decay = decay;
  r.prox = prox;
  return r;
}
#define REG(T) make_reg<T>(l1, wd, decay, prox)

#define KERNELS(T, S)                                                          \
  extern "C" __global__ void sgd_##S(unsigned long long n, T* p, const T* g, T* s0, T* s1, T* s2,      \
      T lr, T momentum, T one_minus_damp, int nesterov, int first,             \
      REG_ARGS(T)) {                                                           \
    const Reg<T> r = REG(T);                                                   \
    T* buf = s0; \
    GRID_LOOP(i, n) {                                                          \
      T gi = g[i];                                                             \
      T pi = pre(r, p[i], gi);                                                 \
      T d = gi;                                                                \
      if (buf) {                                                               \
        T b = first ? gi : buf[i] * momentum + gi * one_minus_damp;            \
        buf[i] = b;                                                            \
        d = nesterov ? gi + b * momentum : b;                                  \
      }                                                                        \
      p[i] = post(r, pi + d * (-lr), lr);                                      \
    }                                                                          \
  }                                                                            \
  extern "C" __global__ void adagrad_##S(unsigned long long n, T* p, const T* g, T* s0, T* s1, T* s2,  \
      T clr, T eps, REG_ARGS(T)) {                                             \
    const Reg<T> r = REG(T);                                                   \
    T* sum = s0; \
    GRID_LOOP(i, n) {                                                          \
      T gi = g[i];                                                             \
      T pi = pre(r, p[i], gi);                                                 \
      T s = sum[i] + gi * gi;                                                  \
      sum[i] = s;                                                              \
      T std_ = sqrt(s) + eps;                                                  \
      p[i] = post(r, pi + (gi / std_) * (-clr), (T(1) / std_) * clr);          \
    }                                                                          \
  }                                                                            \
  /* sq: square_avg; mom, gavg: null when off. */                             \
  extern "C" __global__ void rmsprop_##S(unsigned long long n, T* p, const T* g, T* s0, T* s1, T* s2, T lr, T alpha, T one_minus_alpha, T w, T w1, int lo,    \
      T eps, T momentum, REG_ARGS(T)) {                                        \
    const Reg<T> r = REG(T);                                                   \
    T *sq = s0, *mom = s1, *gavg = s2; \
    GRID_LOOP(i, n) {                                                          \
      T gi = g[i];                                                             \
      T pi = pre(r, p[i], gi);                                                 \
      T s = ema_sq(sq[i], gi, alpha, one_minus_alpha);                         \
      sq[i] = s;                                                               \
      T avg;                                                                   \
      if (gavg) {                                                              \
        T ga = lerp(gavg[i], gi, w, w1, lo);                                   \
        gavg[i] = ga;                                                          \
        avg = sqrt(s - ga * ga);                                               \
      } else {                                                                 \
        avg = sqrt(s);                                                         \
      }                                                                        \
      avg = avg + eps;                                                         \
      if (mom) {                                                               \
        T b = mom[i] * momentum + gi / avg;                                    \
        mom[i] = b;                                                            \
        pi = pi + b * (-lr);                                                   \
      } else {                                                                 \
        pi = pi + (gi / avg) * (-lr);                                          \
      }                                                                        \
      p[i] = post(r, pi, (T(1) / avg) * lr);                                   \
    }                                                                          \
  }                                                                            \
  extern "C" __global__ void adadelta_##S(unsigned long long n, T* p, const T* g, T* s0, T* s1, T* s2, T lr, T rho, T one_minus_rho, T eps, REG_ARGS(T)) {              \
    const Reg<T> r = REG(T);                                                   \
    T *sq = s0, *acc = s1; \
    GRID_LOOP(i, n) {                                                          \
      T gi = g[i];                                                             \
      T pi = pre(r, p[i], gi);                                                 \
      T s = ema_sq(sq[i], gi, rho, one_minus_rho);                             \
      T std_ = sqrt(s + eps);                                                  \
      T ratio = sqrt(acc[i] + eps) / std_;                                     \
      T delta = ratio * gi;                                                    \
      sq[i] = s;                                                               \
      acc[i] = ema_sq(acc[i], delta, rho, one_minus_rho);                      \
      p[i] = post(r, pi + delta * (-lr), ratio * lr);                          \
    }                                                                          \
  }                                                                            \
  /* Adam, Adam+L2, AdamW; vmax (AMSGrad's max_exp_avg_sq) null when off. */  \
  extern "C" __global__ void adam_##S(unsigned long long n, T* p, const T* g, T* s0, T* s1, T* s2, T w, T w1, int lo, T b2, T one_minus_b2, T eps, T step_size,    \
      T inv_bc2_sqrt, T lr, REG_ARGS(T)) {                                     \
    const Reg<T> r = REG(T);                                                   \
    T *m = s0, *v = s1, *vmax = s2; \
    GRID_LOOP(i, n) {                                                          \
      T gi = g[i];                                                             \
      T pi = pre(r, p[i], gi);                                                 \
      T mi, vi;                                                                \
      moments(m, v, i, gi, w, w1, lo, b2, one_minus_b2, mi, vi);              \
      if (vmax) {                                                              \
        T vm = fmax(vmax[i], vi);                                              \
        vmax[i] = vm;                                                          \
        vi = vm;                                                               \
      }                                                                        \
      T denom = sqrt(vi) * inv_bc2_sqrt + eps;                                 \
      p[i] = post(r, pi + (mi / denom) * (-step_size), (T(1) / denom) * lr);   \
    }                                                                          \
  }                                                                            \
  extern "C" __global__ void nadam_##S(unsigned long long n, T* p, const T* g, T* s0, T* s1, T* s2, T w, T w1, int lo, T b2, T one_minus_b2, T eps, T inv_bc2,         \
      T c_grad, T c_mom, T lr, REG_ARGS(T)) {                                  \
    const Reg<T> r = REG(T);                                                   \
    T *m = s0, *v = s1; \
    GRID_LOOP(i, n) {                                                          \
      T gi = g[i];                                                             \
      T pi = pre(r, p[i], gi);                                                 \
      T mi, vi;                                                                \
      moments(m, v, i, gi, w, w1, lo, b2, one_minus_b2, mi, vi);              \
      T denom = sqrt(vi * inv_bc2) + eps;                                      \
      pi = pi + (gi / denom) * c_grad;                                         \
      p[i] = post(r, pi + (mi / denom) * c_mom, (T(1) / denom) * lr);          \
    }                                                                          \
  }                                                                            \
  /* rect: RAdam's rectification, or 0 for the un-rectified early steps. */    \
  extern "C" __global__ void radam_##S(unsigned long long n, T* p, const T* g, T* s0, T* s1, T* s2, T w, T w1, int lo, T b2, T one_minus_b2, T eps, T inv_bc1,         \
      int has_rect, T rect, T bc2_sqrt, T lr, T lr_rect, REG_ARGS(T)) {        \
    const Reg<T> r = REG(T);                                                   \
    T *m = s0, *v = s1; \
    GRID_LOOP(i, n) {                                                          \
      T gi = g[i];                                                             \
      T pi = pre(r, p[i], gi);                                                 \
      T mi, vi;                                                                \
      moments(m, v, i, gi, w, w1, lo, b2, one_minus_b2, mi, vi);              \
      T m_hat = mi * inv_bc1;                                                  \
      if (has_rect) {                                                          \
        T adaptive = (T(1) / (sqrt(vi) + eps)) * bc2_sqrt;                     \
        T upd = ((m_hat * lr) * adaptive) * rect;                              \
        p[i] = post(r, pi - upd, adaptive * lr_rect);                          \
      } else {                                                                 \
        p[i] = post(r, pi - m_hat * lr, lr);                                   \
      }                                                                        \
    }                                                                          \
  }                                                                            \
  extern "C" __global__ void adamax_##S(unsigned long long n, T* p, const T* g, T* s0, T* s1, T* s2, T w, T w1, int lo, T b2, T eps, T clr, T lr, REG_ARGS(T)) {        \
    const Reg<T> r = REG(T);                                                   \
    T *m = s0, *u = s1; \
    GRID_LOOP(i, n) {                                                          \
      T gi = g[i];                                                             \
      T pi = pre(r, p[i], gi);                                                 \
      T mi = lerp(m[i], gi, w, w1, lo);                                        \
      T ui = fmax(u[i] * b2, fabs(gi) + eps);                                  \
      m[i] = mi;                                                               \
      u[i] = ui;                                                               \
      p[i] = post(r, pi + (mi / ui) * (-clr), (T(1) / ui) * lr);               \
    }                                                                          \
  }

KERNELS(float, f32)
KERNELS(double, f64)
