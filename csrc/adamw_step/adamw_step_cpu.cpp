#include "adamw_step.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>

namespace crossgap {

namespace {

// Builtins rather than std::fma/std::sqrt, which are out-of-line library calls that block vectorisation.
__attribute__((always_inline)) inline float fused_mul_add(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
__attribute__((always_inline)) inline double fused_mul_add(double a, double b, double c) { return __builtin_fma(a, b, c); }
__attribute__((always_inline)) inline float square_root(float x) { return __builtin_sqrtf(x); }
__attribute__((always_inline)) inline double square_root(double x) { return __builtin_sqrt(x); }

// One sample's update. Scalars are rounded to the tensor dtype as PyTorch's scalar ops do, and lerp and
// addcmul are fused the way PyTorch's vectorised kernels fuse them, so results match torch.optim.AdamW.
template <typename scalar_t>
__attribute__((always_inline)) inline void adamw_row(scalar_t* __restrict__ p, const scalar_t* __restrict__ g, scalar_t* __restrict__ m,
                      scalar_t* __restrict__ v, int64_t n, scalar_t decay, scalar_t w1, scalar_t b2,
                      scalar_t w2, scalar_t eps, scalar_t neg_step_size, scalar_t bc2_sqrt) {
  // lerp(m, g, w1) as PyTorch computes it: from m for weights below 0.5, from g otherwise.
  const bool from_m = w1 < scalar_t(0.5);
  const scalar_t coeff = from_m ? w1 : w1 - scalar_t(1);
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t gi = g[i];
    const scalar_t mi = fused_mul_add(coeff, gi - m[i], from_m ? m[i] : gi);  // lerp
    const scalar_t vi = fused_mul_add(w2 * gi, gi, v[i] * b2);  // addcmul
    const scalar_t denom = square_root(vi) / bc2_sqrt + eps;
    p[i] = p[i] * decay + neg_step_size * mi / denom;  // addcdiv: (value * t1) / t2
    m[i] = mi;
    v[i] = vi;
  }
}

// Without FMA in the target, std::fma is a library call per element: build vectorised clones and let the
// loader pick the one this CPU runs.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CROSSGAP_CPU_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define CROSSGAP_CPU_CLONES
#endif

CROSSGAP_CPU_CLONES void adamw_row_f32(float* p, const float* g, float* m, float* v, int64_t n, float decay,
                                       float w1, float b2, float w2, float eps, float neg_step_size,
                                       float bc2_sqrt) {
  adamw_row<float>(p, g, m, v, n, decay, w1, b2, w2, eps, neg_step_size, bc2_sqrt);
}

CROSSGAP_CPU_CLONES void adamw_row_f64(double* p, const double* g, double* m, double* v, int64_t n,
                                       double decay, double w1, double b2, double w2, double eps,
                                       double neg_step_size, double bc2_sqrt) {
  adamw_row<double>(p, g, m, v, n, decay, w1, b2, w2, eps, neg_step_size, bc2_sqrt);
}

inline void adamw_row_dispatch(float* p, const float* g, float* m, float* v, int64_t n, float decay, float w1,
                               float b2, float w2, float eps, float s, float c) {
  adamw_row_f32(p, g, m, v, n, decay, w1, b2, w2, eps, s, c);
}

inline void adamw_row_dispatch(double* p, const double* g, double* m, double* v, int64_t n, double decay,
                               double w1, double b2, double w2, double eps, double s, double c) {
  adamw_row_f64(p, g, m, v, n, decay, w1, b2, w2, eps, s, c);
}

template <typename scalar_t>
void adamw_rows_cpu(scalar_t* p, const scalar_t* g, scalar_t* m, scalar_t* v, int64_t* step,
                    const bool* active, int64_t B, int64_t n, const AdamWHyper& h) {
  const scalar_t decay = static_cast<scalar_t>(1.0 - h.lr * h.weight_decay);
  const scalar_t w1 = static_cast<scalar_t>(1.0 - h.beta1);
  const scalar_t b2 = static_cast<scalar_t>(h.beta2);
  const scalar_t w2 = static_cast<scalar_t>(1.0 - h.beta2);
  const scalar_t eps = static_cast<scalar_t>(h.eps);
  at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (!active[b]) continue;
      const int64_t t = ++step[b];
      const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(t));
      const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(t));
      adamw_row_dispatch(p + b * n, g + b * n, m + b * n, v + b * n, n, decay, w1, b2, w2, eps,
                         static_cast<scalar_t>(-(h.lr / bc1)), static_cast<scalar_t>(std::sqrt(bc2)));
    }
  });
}

}  // namespace

void adamw_step_cpu(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                    const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& active, double lr,
                    double beta1, double beta2, double eps, double weight_decay) {
  const AdamWHyper h{lr, beta1, beta2, eps, weight_decay};
  check_adamw_step_args(param, grad, exp_avg, exp_avg_sq, step, active, h);
  const int64_t B = param.size(0);
  if (B == 0 || param.numel() == 0) {
    step.add_(active.to(at::kLong));
    return;
  }
  const int64_t n = param.numel() / B;
  // Work on contiguous buffers; write back only where the caller's tensors were strided.
  auto p = param.contiguous();
  auto m = exp_avg.contiguous();
  auto v = exp_avg_sq.contiguous();
  auto s = step.contiguous();
  const auto g = grad.contiguous();
  const auto a = active.contiguous();
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "adamw_step_cpu", [&] {
    adamw_rows_cpu<scalar_t>(p.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                             v.data_ptr<scalar_t>(), s.data_ptr<int64_t>(), a.data_ptr<bool>(), B, n,
                             h);
  });
  if (!p.is_same(param)) param.copy_(p);
  if (!m.is_same(exp_avg)) exp_avg.copy_(m);
  if (!v.is_same(exp_avg_sq)) exp_avg_sq.copy_(v);
  if (!s.is_same(step)) step.copy_(s);
}

}  // namespace crossgap
