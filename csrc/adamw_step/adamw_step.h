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

#include "common.h"

namespace crossgap {

struct AdamWHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
};

// Raises, naming the argument, unless the shapes, dtypes, devices and hyperparameters above hold.
inline void check_adamw_step_args(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                                  const at::Tensor& exp_avg_sq, const at::Tensor& step,
                                  const at::Tensor& active, const AdamWHyper& h) {
  constexpr const char* op = "adamw_step";
  TORCH_CHECK(param.dim() >= 1, "adamw_step: param must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(param.scalar_type() == at::kFloat || param.scalar_type() == at::kDouble,
              "adamw_step: param must be float32 or float64, got ", param.scalar_type());
  check_like(op, grad, "grad", param, "param");
  check_like(op, exp_avg, "exp_avg", param, "param");
  check_like(op, exp_avg_sq, "exp_avg_sq", param, "param");
  const int64_t B = param.size(0);
  check_vector_of(op, step, "step", B);
  TORCH_CHECK(step.scalar_type() == at::kLong, "adamw_step: step must be int64, got ", step.scalar_type());
  check_same_device(op, step, "step", param, "param");
  check_vector_of(op, active, "active", B);
  TORCH_CHECK(active.scalar_type() == at::kBool, "adamw_step: active must be bool, got ", active.scalar_type());
  check_same_device(op, active, "active", param, "param");
  TORCH_CHECK(h.lr >= 0, "adamw_step: lr must be >= 0, got ", h.lr);
  TORCH_CHECK(h.beta1 >= 0 && h.beta1 < 1, "adamw_step: beta1 must be in [0, 1), got ", h.beta1);
  TORCH_CHECK(h.beta2 >= 0 && h.beta2 < 1, "adamw_step: beta2 must be in [0, 1), got ", h.beta2);
  TORCH_CHECK(h.eps >= 0, "adamw_step: eps must be >= 0, got ", h.eps);
  TORCH_CHECK(h.weight_decay >= 0, "adamw_step: weight_decay must be >= 0, got ", h.weight_decay);
}

void adamw_step_cpu(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                    const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& active, double lr,
                    double beta1, double beta2, double eps, double weight_decay);

#ifdef WITH_CUDA
void adamw_step_cuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                     const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& active, double lr,
                     double beta1, double beta2, double eps, double weight_decay);
#endif

}  // namespace crossgap
