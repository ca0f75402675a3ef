// One AdamW step for a batch of independent optimisation problems, each with its own step count.
//
// For every sample b with active[b] true (all tensors updated in place):
//
//   step[b]       += 1
//   param[b]      *= 1 - lr * weight_decay                         (decoupled weight decay)
//   exp_avg[b]     = lerp(exp_avg[b], grad[b], 1 - beta1)              (PyTorch's lerp: from exp_avg
//                    when 1 - beta1 < 0.5, else from grad[b]: grad[b] - beta1 * (grad[b] - exp_avg[b]))
//   exp_avg_sq[b]  = exp_avg_sq[b] * beta2 + (1 - beta2) * grad[b]^2
//   denom          = sqrt(exp_avg_sq[b]) / sqrt(1 - beta2^step[b]) + eps
//   param[b]      -= lr / (1 - beta1^step[b]) * exp_avg[b] / denom
//
// which is torch.optim.AdamW's single-tensor update, operation for operation, so a sequence of calls
// reproduces it. Samples with active[b] false are left bit-identical, their step count included.
//
// Shapes and dtypes
//   param, grad, exp_avg, exp_avg_sq  [B, R, D] (any trailing shape; dim 0 is the sample)
//                                     float32 or float64, all the same dtype and device
//   step                              [B] int64, same device
//   active                            [B] bool, same device
#pragma once

#include <torch/types.h>

namespace crossgap {

struct AdamWHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
};

void check_adamw_step_args(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                           const at::Tensor& exp_avg_sq, const at::Tensor& step,
                           const at::Tensor& active, const AdamWHyper& h);

void adamw_step_cpu(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                    const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& active, double lr,
                    double beta1, double beta2, double eps, double weight_decay);

#ifdef WITH_CUDA
void adamw_step_cuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                     const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& active, double lr,
                     double beta1, double beta2, double eps, double weight_decay);
#endif

}  // namespace crossgap
