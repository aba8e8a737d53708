// The CUDA kernels compiled for the host, for the unit test in cuda.rs: one
// "thread" walks every element, so each kernel runs its exact per-element
// code on the CPU. fused.cu is the generated source (`kernels::SOURCE`),
// which the test writes to a temporary folder DIR; build: g++ -std=c++17
// -ffp-contract=off -I DIR src/optim/fused_host.cpp (the test does this).
//
// Protocol, on stdin (whitespace separated):
//   <kernel>_<f32|f64> <n> <number of scalars>
//   <scalars, decimal>
//   <number of state pointers S> <S flags: state pointer present>
//   <p as hex bit patterns> <g ...> <each present state ...>
// On stdout: p, then each present state, one per line, as hex bits.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

using std::fabs;
using std::fmax;
using std::sqrt;

struct Dim3 {
  unsigned x;
};
static const Dim3 blockIdx{0}, threadIdx{0}, blockDim{1}, gridDim{1};
#define __global__
#define __device__
#define __forceinline__ inline

#include "fused.cu"

template <typename T> struct Bits;
template <> struct Bits<float> {
  using U = uint32_t;
};
template <> struct Bits<double> {
  using U = uint64_t;
};

template <typename T> std::vector<T> read_array(size_t n) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; i++) {
    unsigned long long b;
    if (scanf("%llx", &b) != 1) {
      fprintf(stderr, "short input\n");
      exit(2);
    }
    typename Bits<T>::U u = (typename Bits<T>::U)b;
    memcpy(&v[i], &u, sizeof(T));
  }
  return v;
}

template <typename T> void write_array(const std::vector<T>& v) {
  for (size_t i = 0; i < v.size(); i++) {
    typename Bits<T>::U u;
    memcpy(&u, &v[i], sizeof(T));
    printf(i ? " %llx" : "%llx", (unsigned long long)u);
  }
  printf("\n");
}

// The kernel's arguments after n, p and g: its S state pointers, then its
// scalars. Argument I is state pointer I, or scalar I - S.
template <typename A, typename T>
A arg(size_t i, size_t n_state, T* const* s, const std::vector<double>& a) {
  if constexpr (std::is_pointer_v<A>) {
    return s[i];
  } else {
    return static_cast<A>(a[i - n_state]);
  }
}

template <typename T, typename... A, size_t... I>
void call(void (*f)(unsigned long long, T*, const T*, A...), unsigned long long n, T* p,
          const T* g, T* const* s, size_t n_state, const std::vector<double>& a,
          std::index_sequence<I...>) {
  f(n, p, g, arg<A>(I, n_state, s, a)...);
}

template <typename T, typename... A>
int run(void (*f)(unsigned long long, T*, const T*, A...), size_t n,
        const std::vector<double>& a) {
  const size_t n_state = (0 + ... + (std::is_pointer_v<A> ? 1 : 0));
  size_t s_given;
  if (scanf("%zu", &s_given) != 1) return 2;
  if (s_given != n_state || a.size() != sizeof...(A) - n_state) {
    fprintf(stderr, "the kernel takes %zu state pointers and %zu scalars, the plan gave %zu and %zu\n",
            n_state, sizeof...(A) - n_state, s_given, a.size());
    return 2;
  }
  std::vector<int> present(n_state);
  for (size_t i = 0; i < n_state; i++) {
    if (scanf("%d", &present[i]) != 1) return 2;
  }
  std::vector<T> p = read_array<T>(n), g = read_array<T>(n);
  std::vector<std::vector<T>> st(n_state);
  std::vector<T*> s(n_state + 1, nullptr);
  for (size_t i = 0; i < n_state; i++) {
    if (present[i]) {
      st[i] = read_array<T>(n);
      s[i] = st[i].data();
    }
  }
  call(f, (unsigned long long)n, p.data(), g.data(), s.data(), n_state, a,
       std::index_sequence_for<A...>{});
  write_array(p);
  for (size_t i = 0; i < n_state; i++) {
    if (present[i]) write_array(st[i]);
  }
  return 0;
}

int main() {
  char name[64];
  size_t n, k;
  if (scanf("%63s %zu %zu", name, &n, &k) != 3) return 2;
  std::vector<double> a(k);
  for (size_t i = 0; i < k; i++) {
    if (scanf("%lf", &a[i]) != 1) return 2;
  }
  std::string kn(name);
#define ENTRY(K)                                     \
  if (kn == #K "_f32") return run(K##_f32, n, a); \
  if (kn == #K "_f64") return run(K##_f64, n, a);
  FUSED_KERNELS(ENTRY)
  fprintf(stderr, "unknown kernel %s\n", name);
  return 2;
}
