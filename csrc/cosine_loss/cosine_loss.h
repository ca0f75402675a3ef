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

namespace crossgap {

constexpr double kCosineEps = 1e-8;

// Validates arguments and returns the dtype of the loss.
void check_cosine_loss_args(const at::Tensor& y, const at::Tensor& target);
at::ScalarType cosine_loss_dtype(const at::Tensor& y);

at::Tensor cosine_loss_cpu(const at::Tensor& y, const at::Tensor& target);
at::Tensor cosine_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& y,
                                    const at::Tensor& target);

#ifdef WITH_CUDA
at::Tensor cosine_loss_cuda(const at::Tensor& y, const at::Tensor& target);
at::Tensor cosine_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& y,
                                     const at::Tensor& target);
#endif

}  // namespace crossgap
