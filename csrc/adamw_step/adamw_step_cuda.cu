#include "adamw_step.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace crossgap {
namespace {

constexpr int kThreads = 256;

// One thread per element; step[b] is read as the count before this update (the increment runs after).
// Built with --fmad=false so that only the explicit fma (lerp's, as in PyTorch) is fused.
template <typename scalar_t>
__global__ void adamw_elementwise_kernel(scalar_t* __restrict__ p, const scalar_t* __restrict__ g,
                                         scalar_t* __restrict__ m, scalar_t* __restrict__ v,
                                         const int64_t* __restrict__ step,
                                         const bool* __restrict__ active, int64_t total, int64_t n,
                                         AdamWHyper h) {
  const scalar_t decay = static_cast<scalar_t>(1.0 - h.lr * h.weight_decay);
  const scalar_t w1 = static_cast<scalar_t>(1.0 - h.beta1);
  const scalar_t b2 = static_cast<scalar_t>(h.beta2);
  const scalar_t w2 = static_cast<scalar_t>(1.0 - h.beta2);
  const scalar_t eps = static_cast<scalar_t>(h.eps);
  // lerp(m, g, w1) as PyTorch computes it: from m for weights below 0.5, from g otherwise.
  const bool from_m = w1 < scalar_t(0.5);
  const scalar_t coeff = from_m ? w1 : w1 - scalar_t(1);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / n;
    if (!active[b]) continue;
    const double t = static_cast<double>(step[b] + 1);
    const double bc1 = 1.0 - pow(h.beta1, t);
    const double bc2 = 1.0 - pow(h.beta2, t);
    const scalar_t neg_step_size = static_cast<scalar_t>(-(h.lr / bc1));
    const scalar_t bc2_sqrt = static_cast<scalar_t>(sqrt(bc2));
    const scalar_t gi = g[i];
    const scalar_t mi = fma(coeff, gi - m[i], from_m ? m[i] : gi);
    const scalar_t vi = fma(w2 * gi, gi, v[i] * b2);  // addcmul, fused likewise
    const scalar_t denom = sqrt(vi) / bc2_sqrt + eps;
    p[i] = p[i] * decay + neg_step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

__global__ void increment_active_kernel(int64_t* __restrict__ step, const bool* __restrict__ active,
                                        int64_t B) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b < B && active[b]) step[b] += 1;
}

}  // namespace

void adamw_step_cuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                     const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& active, double lr,
                     double beta1, double beta2, double eps, double weight_decay) {
  const AdamWHyper h{lr, beta1, beta2, eps, weight_decay};
  check_adamw_step_args(param, grad, exp_avg, exp_avg_sq, step, active, h);
  const c10::cuda::CUDAGuard guard(param.device());
  const int64_t B = param.size(0);
  if (B == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  auto p = param.contiguous();
  auto m = exp_avg.contiguous();
  auto v = exp_avg_sq.contiguous();
  auto s = step.contiguous();
  const auto g = grad.contiguous();
  const auto a = active.contiguous();
  const int64_t total = param.numel();
  if (total > 0) {
    const int64_t n = total / B;
    const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
    AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "adamw_step_cuda", [&] {
      adamw_elementwise_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          p.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
          v.data_ptr<scalar_t>(), s.data_ptr<int64_t>(), a.data_ptr<bool>(), total, n, h);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  increment_active_kernel<<<static_cast<int>((B + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      s.data_ptr<int64_t>(), a.data_ptr<bool>(), B);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!p.is_same(param)) param.copy_(p);
  if (!m.is_same(exp_avg)) exp_avg.copy_(m);
  if (!v.is_same(exp_avg_sq)) exp_avg_sq.copy_(v);
  if (!s.is_same(step)) step.copy_(s);
}

}  // namespace crossgap
