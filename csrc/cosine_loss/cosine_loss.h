// Per-sample cosine loss between encoder outputs and their targets.
//
// For a batch of B independent inversion problems:
//
//   loss[b] = 1 - <y[b], t[b]> / (max(|y[b]|, eps) * max(|t[b]|, eps)),   eps = 1e-8
//
// Shapes and dtypes
//   y         [B, E]  float32, float64, bfloat16 or float16; the raw (unnormalised) encoder output
//   target    [B, E]  same dtype family as y is not required: any floating dtype, same device as y;
//                     normally unit vectors
//   loss      [B]     float64 when y is float64, else float32 (reductions accumulate in float32/float64)
//   grad_loss [B]     dtype of loss
//   grad_y    [B, E]  dtype of y
//
// The backward is d loss[b] / d y[b] scaled by grad_loss[b]; the target gets no gradient.
#pragma once

#include <torch/types.h>

#include "common.h"

namespace crossgap {

constexpr double kCosineEps = 1e-8;

// Raises, naming the argument, unless y and target have the shapes, dtypes and device above.
inline void check_cosine_loss_args(const at::Tensor& y, const at::Tensor& target) {
  TORCH_CHECK(y.dim() == 2, "cosine_loss: y must be 2-D [B, E], got shape ", y.sizes());
  TORCH_CHECK(target.dim() == 2, "cosine_loss: target must be 2-D [B, E], got shape ", target.sizes());
  TORCH_CHECK(y.sizes() == target.sizes(), "cosine_loss: target shape ", target.sizes(),
              " does not match y shape ", y.sizes());
  TORCH_CHECK(at::isFloatingType(y.scalar_type()),
              "cosine_loss: y must be float32, float64, bfloat16 or float16, got ", y.scalar_type());
  TORCH_CHECK(at::isFloatingType(target.scalar_type()),
              "cosine_loss: target must be a floating tensor, got ", target.scalar_type());
  check_same_device("cosine_loss", target, "target", y, "y");
}

// The backward's checks: those of the forward, and grad_loss [B] on y's device.
inline void check_cosine_loss_backward_args(const at::Tensor& grad_loss, const at::Tensor& y,
                                            const at::Tensor& target) {
  check_cosine_loss_args(y, target);
  check_vector_of("cosine_loss_backward", grad_loss, "grad_loss", y.size(0));
  check_same_device("cosine_loss_backward", grad_loss, "grad_loss", y, "y");
}

// The dtype of the loss (and of grad_loss): float64 for float64 y, else float32.
inline at::ScalarType cosine_loss_dtype(const at::Tensor& y) {
  return y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor cosine_loss_cpu(const at::Tensor& y, const at::Tensor& target);
at::Tensor cosine_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& y,
                                    const at::Tensor& target);

#ifdef WITH_CUDA
at::Tensor cosine_loss_cuda(const at::Tensor& y, const at::Tensor& target);
at::Tensor cosine_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& y,
                                     const at::Tensor& target);
#endif

}  // namespace crossgap
