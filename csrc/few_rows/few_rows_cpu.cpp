#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

#include "common.h"
#include "few_rows/few_rows.h"

// One kernel body, compiled once per instruction set (x86-64: AVX-512 = x86-64-v4, AVX2 + FMA = x86-64-v3, and
// the baseline; elsewhere the baseline only) and chosen at run time from what the CPU reports. The wide
// vector helpers are always inlined into those variants, so the vector ABI warning does not apply. Products
// accumulate with fused multiply-adds where the instruction set has them.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC optimize("fp-contract=fast")
#if defined(__x86_64__) && defined(__GNUC__)
#define CROSSGAP_X86 1
#endif
#define CROSSGAP_INLINE inline __attribute__((always_inline))

namespace crossgap {

namespace {

// Vectors of 16, 8 and 4 floats: one register of AVX-512, AVX2 and SSE. Each variant uses its own width, so the
// sums of a row group fit its register file (32 registers of AVX-512, 16 of the others).
typedef float V16 __attribute__((vector_size(64)));
typedef float V8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));

template <typename V>
constexpr int64_t lanes() {
  return sizeof(V) / sizeof(float);
}

template <typename V>
CROSSGAP_INLINE V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename V>
CROSSGAP_INLINE void store(float* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename V>
CROSSGAP_INLINE V broadcast(float s) {
  return V{} + s;
}

// The sum of a vector's lanes, as a tree of halvings (a sequential sum would cost a dependent add per lane).
CROSSGAP_INLINE float lane_sum(V4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }

CROSSGAP_INLINE float lane_sum(V8 v) {
  return lane_sum(V4(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7)));
}

CROSSGAP_INLINE float lane_sum(V16 v) {
  return lane_sum(V8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                     __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15)));
}

// out[m, n] = x[m, :] . weight[n, :] for m < M and n in [n0, n1): each weight row is read once, against all
// M rows of x (which stay in L1), R weight rows at a time (R streams in flight, R x M sums in registers).
template <typename V, int M, int R>
CROSSGAP_INLINE void forward_rows(const float* x, const float* w, float* out, int64_t N, int64_t K, int64_t n0,
                                  int64_t n1) {
  constexpr int64_t L = lanes<V>();
  const int64_t kv = K - K % L;
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    V acc[R][M];
    for (int r = 0; r < R; ++r) {
      for (int m = 0; m < M; ++m) acc[r][m] = V{};
    }
    for (int64_t k = 0; k < kv; k += L) {
      V xv[M];
      for (int m = 0; m < M; ++m) xv[m] = load<V>(x + m * K + k);
      for (int r = 0; r < R; ++r) {
        const V wv = load<V>(w + (n + r) * K + k);
        for (int m = 0; m < M; ++m) acc[r][m] += wv * xv[m];
      }
    }
    for (int r = 0; r < R; ++r) {
      const float* wr = w + (n + r) * K;
      for (int m = 0; m < M; ++m) {
        float s = lane_sum(acc[r][m]);
        for (int64_t k = kv; k < K; ++k) s += x[m * K + k] * wr[k];
        out[m * N + n + r] = s;
      }
    }
  }
  if constexpr (R > 1) forward_rows<V, M, 1>(x, w, out, N, K, n, n1);
}

// out[m, k] = sum_n grad[m, n] weight[n, k] for m < M and k in [k0, k1), four weight rows at a time: the
// partial sums of the column block stay in L1 while the weight rows stream past.
template <typename V, int M>
CROSSGAP_INLINE void backward_cols(const float* g, const float* w, float* out, int64_t N, int64_t K, int64_t k0,
                                   int64_t k1) {
  constexpr int64_t L = lanes<V>();
  for (int m = 0; m < M; ++m) std::fill(out + m * K + k0, out + m * K + k1, 0.0f);
  const int64_t kv = k1 - (k1 - k0) % L;
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) {
    const float* w0 = w + n * K;
    const float* w1 = w0 + K;
    const float* w2 = w1 + K;
    const float* w3 = w2 + K;
    // The four coefficients of each row, copied: the stores to out cannot change them, so they are not
    // reloaded at every k.
    float c[M][4];
    for (int m = 0; m < M; ++m) {
      for (int i = 0; i < 4; ++i) c[m][i] = g[m * N + n + i];
    }
    for (int64_t k = k0; k < kv; k += L) {
      const V a = load<V>(w0 + k), b = load<V>(w1 + k), d = load<V>(w2 + k), e = load<V>(w3 + k);
      for (int m = 0; m < M; ++m) {
        float* o = out + m * K + k;
        store(o, load<V>(o) + broadcast<V>(c[m][0]) * a + broadcast<V>(c[m][1]) * b + broadcast<V>(c[m][2]) * d +
                     broadcast<V>(c[m][3]) * e);
      }
    }
    for (int64_t k = kv; k < k1; ++k) {
      for (int m = 0; m < M; ++m) {
        out[m * K + k] += c[m][0] * w0[k] + c[m][1] * w1[k] + c[m][2] * w2[k] + c[m][3] * w3[k];
      }
    }
  }
  for (; n < N; ++n) {
    const float* wr = w + n * K;
    for (int m = 0; m < M; ++m) {
      const float s = g[m * N + n];
      for (int64_t k = k0; k < k1; ++k) out[m * K + k] += s * wr[k];
    }
  }
}

// One thread's share: output columns [n0, n1) of the forward. The switch gives each row count its own kernel
// with the partial sums in registers.
template <typename V>
CROSSGAP_INLINE void forward_block(const float* x, const float* w, float* out, int64_t M, int64_t N, int64_t K,
                                   int64_t n0, int64_t n1) {
  switch (M) {
    case 1: forward_rows<V, 1, 4>(x, w, out, N, K, n0, n1); break;
    case 2: forward_rows<V, 2, 4>(x, w, out, N, K, n0, n1); break;
    case 3: forward_rows<V, 3, 2>(x, w, out, N, K, n0, n1); break;
    case 4: forward_rows<V, 4, 2>(x, w, out, N, K, n0, n1); break;
    case 5: forward_rows<V, 5, 1>(x, w, out, N, K, n0, n1); break;
    case 6: forward_rows<V, 6, 1>(x, w, out, N, K, n0, n1); break;
    case 7: forward_rows<V, 7, 1>(x, w, out, N, K, n0, n1); break;
    default: forward_rows<V, 8, 1>(x, w, out, N, K, n0, n1); break;
  }
}

// One thread's share: output columns [k0, k1) of the backward.
template <typename V>
CROSSGAP_INLINE void backward_block(const float* g, const float* w, float* out, int64_t M, int64_t N, int64_t K,
                                    int64_t k0, int64_t k1) {
  switch (M) {
    case 1: backward_cols<V, 1>(g, w, out, N, K, k0, k1); break;
    case 2: backward_cols<V, 2>(g, w, out, N, K, k0, k1); break;
    case 3: backward_cols<V, 3>(g, w, out, N, K, k0, k1); break;
    case 4: backward_cols<V, 4>(g, w, out, N, K, k0, k1); break;
    case 5: backward_cols<V, 5>(g, w, out, N, K, k0, k1); break;
    case 6: backward_cols<V, 6>(g, w, out, N, K, k0, k1); break;
    case 7: backward_cols<V, 7>(g, w, out, N, K, k0, k1); break;
    default: backward_cols<V, 8>(g, w, out, N, K, k0, k1); break;
  }
}

using Kernel = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);

struct Variant {
  const char* isa;
  Kernel forward, backward;
};

#define CROSSGAP_VARIANT(name, V, attributes)                                                                  \
  attributes void forward_##name(const float* x, const float* w, float* out, int64_t M, int64_t N, int64_t K,  \
                                 int64_t n0, int64_t n1) {                                                     \
    forward_block<V>(x, w, out, M, N, K, n0, n1);                                                              \
  }                                                                                                            \
  attributes void backward_##name(const float* g, const float* w, float* out, int64_t M, int64_t N, int64_t K, \
                                  int64_t k0, int64_t k1) {                                                    \
    backward_block<V>(g, w, out, M, N, K, k0, k1);                                                             \
  }

CROSSGAP_VARIANT(baseline, V4, )
#ifdef CROSSGAP_X86
CROSSGAP_VARIANT(avx2, V8, __attribute__((target("arch=x86-64-v3"))))
CROSSGAP_VARIANT(avx512, V16, __attribute__((target("arch=x86-64-v4"))))
#endif

// Widest first.
const Variant kVariants[] = {
#ifdef CROSSGAP_X86
    {"avx512", forward_avx512, backward_avx512},
    {"avx2", forward_avx2, backward_avx2},
#endif
    {"baseline", forward_baseline, backward_baseline},
};
constexpr int kNumVariants = sizeof(kVariants) / sizeof(kVariants[0]);

bool cpu_runs(const Variant& v) {
#ifdef CROSSGAP_X86
  const std::string isa = v.isa;
  if (isa == "avx512") return __builtin_cpu_supports("x86-64-v4");
  if (isa == "avx2") return __builtin_cpu_supports("x86-64-v3");
#endif
  return true;
}

// Index into kVariants of the variant in use: the widest the CPU runs, or narrower when capped.
int widest_variant() {
#ifdef CROSSGAP_X86
  __builtin_cpu_init();  // may run before the CPU model's own constructor (static initialisation order)
#endif
  for (int i = 0; i < kNumVariants; ++i) {
    if (cpu_runs(kVariants[i])) return i;
  }
  return kNumVariants - 1;
}

std::atomic<int> current{widest_variant()};

// Width of the backward's column blocks: at most 512 floats (M x 2 KiB of partial sums, in L1), and narrow
// enough for every thread to get one (a multiple of 64 floats, so every vector width divides it).
int64_t block_width(int64_t K) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_thread = (K + threads - 1) / threads;
  return std::min<int64_t>(512, std::max<int64_t>(64, (per_thread + 63) / 64 * 64));
}

}  // namespace

// Threads split the outputs (each kernel call is single-threaded), kFewRows rows at a time.
void few_rows_product(const float* x, const float* weight, float* out, int64_t M, int64_t N, int64_t K) {
  const Kernel kernel = kVariants[current.load(std::memory_order_relaxed)].forward;
  for (int64_t m0 = 0; m0 < M; m0 += kFewRows) {
    const int64_t rows = std::min(kFewRows, M - m0);
    at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
      kernel(x + m0 * K, weight, out + m0 * N, rows, N, K, n0, n1);
    });
  }
}

void few_rows_product_backward(const float* grad, const float* weight, float* out, int64_t M, int64_t N,
                               int64_t K) {
  const Kernel kernel = kVariants[current.load(std::memory_order_relaxed)].backward;
  const int64_t width = block_width(K);
  const int64_t blocks = (K + width - 1) / width;
  for (int64_t m0 = 0; m0 < M; m0 += kFewRows) {
    const int64_t rows = std::min(kFewRows, M - m0);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        kernel(grad + m0 * N, weight, out + m0 * K, rows, N, K, b * width, std::min(K, (b + 1) * width));
      }
    });
  }
}

namespace {

void check_operands(const char* op, const at::Tensor& a, const char* a_name, const at::Tensor& weight,
                    int64_t a_cols, const char* a_cols_name) {
  TORCH_CHECK(a.dim() == 2 && weight.dim() == 2, op, ": ", a_name, " and weight must be 2-D, got ", a.sizes(),
              " and ", weight.sizes());
  TORCH_CHECK(a.size(1) == a_cols, op, ": ", a_name, " has ", a.size(1), " columns but weight has ", a_cols,
              " ", a_cols_name);
  TORCH_CHECK(a.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, op,
              ": float32 only, got ", a.scalar_type(), " and ", weight.scalar_type());
  check_same_device(op, weight, "weight", a, a_name);
}

}  // namespace

std::string few_rows_isa(const std::string& cap) {
  if (!cap.empty()) {
    int chosen = -1;
    for (int i = widest_variant(); i < kNumVariants; ++i) {
      if (cap == kVariants[i].isa) chosen = i;
    }
    std::string runs;
    for (int i = widest_variant(); i < kNumVariants; ++i) {
      runs += std::string(runs.empty() ? "" : ", ") + kVariants[i].isa;
    }
    TORCH_CHECK(chosen >= 0, "few_rows_isa: '", cap, "' is not one of the instruction sets this CPU runs: ", runs);
    current.store(chosen);
  }
  return kVariants[current.load()].isa;
}

at::Tensor few_rows_product_cpu(const at::Tensor& x, const at::Tensor& weight) {
  check_operands("few_rows_product", x, "x", weight, weight.dim() == 2 ? weight.size(1) : -1, "columns");
  const auto xc = x.contiguous();
  const auto wc = weight.contiguous();
  auto out = at::empty({x.size(0), weight.size(0)}, x.options());
  few_rows_product(xc.const_data_ptr<float>(), wc.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                   x.size(0), weight.size(0), weight.size(1));
  return out;
}

at::Tensor few_rows_product_backward_cpu(const at::Tensor& grad, const at::Tensor& weight) {
  check_operands("few_rows_product_backward", grad, "grad", weight, weight.dim() == 2 ? weight.size(0) : -1,
                 "rows");
  const auto gc = grad.contiguous();
  const auto wc = weight.contiguous();
  auto out = at::empty({grad.size(0), weight.size(1)}, grad.options());
  few_rows_product_backward(gc.const_data_ptr<float>(), wc.const_data_ptr<float>(),
                            out.mutable_data_ptr<float>(), grad.size(0), weight.size(0), weight.size(1));
  return out;
}

}  // namespace crossgap
