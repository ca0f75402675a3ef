// One residual block of a causal text transformer over the few positions of a cached suffix.
//
// The suffix (S positions per sample, e.g. the pseudo-token slots and the pooled position) attends to the
// keys/values of a fixed prefix, cached once, and to its own. The forward returns what its backward needs;
// the backward returns only the gradient in the block's input: the weights are frozen, so no weight
// gradient is ever formed. For x [B, S, W], H heads of width D = W / H, a prefix of P positions, M = B * S:
//
//   h      = LN_1(x)                                       mean/rstd over W, biased variance, ln_1_eps
//   qkv    = h in_proj_weight^T + in_proj_bias             [B, S, 3W]: q | k | v, head-major within each
//   scores = q_i . [prefix_k[h]; k_b] / sqrt(D) + mask_bias[i]      per sample b, head h, query i: P + S keys
//   probs  = softmax(scores)                               float32 (float64 when x is float64)
//   attn_i = probs . [prefix_v[h]; v_b]                    heads merged back to [B, S, W]
//   x1     = x + (attn out_proj_weight^T + out_proj_bias)
//   u      = LN_2(x1) fc_weight^T + fc_bias                [B, S, F]
//   out    = x1 + (act(u) proj_weight^T + proj_bias)
//
// act is "gelu" (erf form), "gelu_tanh" (tanh approximation) or "quick_gelu" (u * sigmoid(1.702 u)).
//
// Shapes and dtypes (one floating dtype T for x, the weights and the prefix: float32, float64 or bfloat16;
// acc = float64 when T is float64, else float32; all on one device)
//   x          [B, S, W]       T
//   prefix_k   [H, P, D]       T, the prefix keys of this block (P >= 0)
//   prefix_v   [H, P, D]       T
//   mask_bias  [S, P + S]      any floating dtype: 0 where query i may see key j, -inf elsewhere (row i
//                              must allow at least one key)
//   params     12 tensors of dtype T, in this order:
//                ln_1_weight [W], ln_1_bias [W], in_proj_weight [3W, W], in_proj_bias [3W],
//                out_proj_weight [W, W], out_proj_bias [W], ln_2_weight [W], ln_2_bias [W],
//                fc_weight [F, W], fc_bias [F], proj_weight [W, F], proj_bias [W]
// Forward outputs (all contiguous)
//   out        [B, S, W]       T
//   x1         [B, S, W]       T, the residual stream after attention
//   qkv        [B, S, 3W]      T, the in-projection (queries unscaled)
//   probs      [B, H, S, P+S]  acc, attention probabilities
//   u          [B, S, F]       T, the MLP pre-activation
//   stats      [B, S, 4]       acc: mean and rstd of LN_1, then of LN_2
// Backward
//   grad_out   [B, S, W]       T, gradient in out; x, x1, qkv, probs, u, stats as the forward gave them
//   grad_x     [B, S, W]       T, gradient in x
//
// Matrix products go to ATen (BLAS); with few rows they take the W x^T form, which streams a row-major
// weight fastest, and everything between them (layer norms, attention, activation, residuals) is fused
// here. Arithmetic accumulates in acc.
#pragma once

#include <torch/types.h>

#include <string>
#include <tuple>

namespace crossgap {

enum class Activation { kGelu = 0, kGeluTanh = 1, kQuickGelu = 2 };

constexpr int kSuffixBlockParams = 12;

// Index of each tensor in params.
enum SuffixBlockParam {
  kLn1Weight = 0, kLn1Bias, kInWeight, kInBias, kOutWeight, kOutBias,
  kLn2Weight, kLn2Bias, kFcWeight, kFcBias, kProjWeight, kProjBias,
};

// "gelu" / "gelu_tanh" / "quick_gelu"; anything else is an error naming the accepted values.
Activation parse_activation(const std::string& name);

// Validate the arguments (shapes, dtypes, devices); `op` names the operator in messages.
void check_suffix_block_args(const char* op, const at::Tensor& x, const at::Tensor& prefix_k,
                             const at::Tensor& prefix_v, at::TensorList params);
void check_suffix_block_mask(const at::Tensor& x, const at::Tensor& prefix_k, const at::Tensor& mask_bias);
// Validates the forward's outputs given back to the backward.
void check_suffix_block_saved(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& x1,
                              const at::Tensor& qkv, const at::Tensor& probs, const at::Tensor& u,
                              const at::Tensor& stats, const at::Tensor& prefix_k);

using SuffixBlockOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

SuffixBlockOutputs suffix_block_forward_cpu(const at::Tensor& x, const at::Tensor& prefix_k,
                                            const at::Tensor& prefix_v, const at::Tensor& mask_bias,
                                            at::TensorList params, double ln_1_eps, double ln_2_eps,
                                            c10::string_view activation);
at::Tensor suffix_block_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& x1,
                                     const at::Tensor& qkv, const at::Tensor& probs, const at::Tensor& u,
                                     const at::Tensor& stats, const at::Tensor& prefix_k,
                                     const at::Tensor& prefix_v, at::TensorList params,
                                     c10::string_view activation);

#ifdef WITH_CUDA
SuffixBlockOutputs suffix_block_forward_cuda(const at::Tensor& x, const at::Tensor& prefix_k,
                                             const at::Tensor& prefix_v, const at::Tensor& mask_bias,
                                             at::TensorList params, double ln_1_eps, double ln_2_eps,
                                             c10::string_view activation);
at::Tensor suffix_block_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& x1,
                                      const at::Tensor& qkv, const at::Tensor& probs, const at::Tensor& u,
                                      const at::Tensor& stats, const at::Tensor& prefix_k,
                                      const at::Tensor& prefix_v, at::TensorList params,
                                      c10::string_view activation);
#endif

}  // namespace crossgap
