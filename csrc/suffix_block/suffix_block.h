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
// Matrix products of up to kFewRows float32 rows go to the few-rows kernels (csrc/few_rows: the weight read
// once), the others to BLAS (CPU) or cuBLAS; everything between them (layer norms, attention, activation,
// residuals) is fused here. Arithmetic accumulates in acc.
#pragma once

#include <torch/types.h>

#include <string>
#include <tuple>
#include <vector>

#include "common.h"

namespace crossgap {

enum class Activation { kGelu = 0, kGeluTanh = 1, kQuickGelu = 2 };

constexpr int kSuffixBlockParams = 12;

// Index of each tensor in params.
enum SuffixBlockParam {
  kLn1Weight = 0, kLn1Bias, kInWeight, kInBias, kOutWeight, kOutBias,
  kLn2Weight, kLn2Bias, kFcWeight, kFcBias, kProjWeight, kProjBias,
};

// "gelu" / "gelu_tanh" / "quick_gelu"; anything else is an error naming the accepted values.
inline Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  if (name == "quick_gelu") return Activation::kQuickGelu;
  TORCH_CHECK(false, "suffix_block: activation must be \"gelu\", \"gelu_tanh\" or \"quick_gelu\", got \"", name,
              "\"");
}

// Raises, naming the argument, unless x, the prefix cache and params have the shapes, dtypes and device above;
// `op` names the operator in messages.
inline void check_suffix_block_args(const char* op, const at::Tensor& x, const at::Tensor& prefix_k,
                                    const at::Tensor& prefix_v, at::TensorList params) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D [B, S, W], got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16, op,
              ": x must be float32, float64 or bfloat16, got ", dtype);
  const int64_t W = x.size(2);
  TORCH_CHECK(prefix_k.dim() == 3, op, ": prefix_k must be 3-D [H, P, D], got shape ", prefix_k.sizes());
  TORCH_CHECK(prefix_k.scalar_type() == dtype, op, ": prefix_k dtype ", prefix_k.scalar_type(),
              " does not match x dtype ", dtype);
  check_same_device(op, prefix_k, "prefix_k", x, "x");
  check_like(op, prefix_v, "prefix_v", prefix_k, "prefix_k");
  TORCH_CHECK(prefix_k.size(0) * prefix_k.size(2) == W, op, ": prefix_k heads x head width (",
              prefix_k.size(0), " x ", prefix_k.size(2), ") must equal the width of x, ", W);
  TORCH_CHECK(params.size() == kSuffixBlockParams, op, ": params must hold ", kSuffixBlockParams,
              " tensors (ln_1 weight/bias, in_proj, out_proj, ln_2, fc, proj weight/bias), got ", params.size());
  const int64_t F = params[kFcWeight].dim() == 2 ? params[kFcWeight].size(0) : -1;
  const std::vector<std::vector<int64_t>> shapes = {
      {W}, {W}, {3 * W, W}, {3 * W}, {W, W}, {W}, {W}, {W}, {F, W}, {F}, {W, F}, {W}};
  const char* names[] = {"ln_1_weight", "ln_1_bias", "in_proj_weight", "in_proj_bias",
                         "out_proj_weight", "out_proj_bias", "ln_2_weight", "ln_2_bias",
                         "fc_weight", "fc_bias", "proj_weight", "proj_bias"};
  for (int i = 0; i < kSuffixBlockParams; ++i) {
    const auto& p = params[i];
    TORCH_CHECK(p.sizes() == at::IntArrayRef(shapes[i]), op, ": ", names[i], " must have shape ",
                at::IntArrayRef(shapes[i]), ", got ", p.sizes());
    TORCH_CHECK(p.scalar_type() == dtype, op, ": ", names[i], " dtype ", p.scalar_type(),
                " does not match x dtype ", dtype);
    check_same_device(op, p, names[i], x, "x");
  }
}

// The forward's further check: mask_bias [S, P + S], floating, on x's device.
inline void check_suffix_block_mask(const at::Tensor& x, const at::Tensor& prefix_k, const at::Tensor& mask_bias) {
  constexpr const char* op = "suffix_block_forward";
  const int64_t S = x.size(1);
  const int64_t P = prefix_k.size(1);
  TORCH_CHECK(mask_bias.dim() == 2 && mask_bias.size(0) == S && mask_bias.size(1) == P + S, op,
              ": mask_bias must have shape [S, P + S] = [", S, ", ", P + S, "], got ", mask_bias.sizes());
  TORCH_CHECK(at::isFloatingType(mask_bias.scalar_type()), op, ": mask_bias must be floating (0 or -inf), got ",
              mask_bias.scalar_type());
  check_same_device(op, mask_bias, "mask_bias", x, "x");
}

// The backward's further check: grad_out and the forward's outputs given back have the shapes and dtypes the
// forward returned, on x's device.
inline void check_suffix_block_saved(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& x1,
                                     const at::Tensor& qkv, const at::Tensor& probs, const at::Tensor& u,
                                     const at::Tensor& stats, const at::Tensor& prefix_k) {
  constexpr const char* op = "suffix_block_backward";
  const int64_t B = x.size(0), S = x.size(1), W = x.size(2);
  const int64_t H = prefix_k.size(0), P = prefix_k.size(1);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto check = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype) {
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, " (as the forward returned it), got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
    check_same_device(op, t, name, x, "x");
  };
  check(grad_out, "grad_out", {B, S, W}, x.scalar_type());
  check(x1, "x1", {B, S, W}, x.scalar_type());
  check(qkv, "qkv", {B, S, 3 * W}, x.scalar_type());
  check(probs, "probs", {B, H, S, P + S}, acc);
  TORCH_CHECK(u.dim() == 3 && u.size(0) == B && u.size(1) == S, op, ": u must have shape [B, S, F], got ", u.sizes());
  check(u, "u", {B, S, u.size(2)}, x.scalar_type());
  check(stats, "stats", {B, S, 4}, acc);
}

// What the backward reads, each made contiguous once (both units index them as raw arrays): the 12 params,
// grad_out as [M, W] rows, and the forward's input, outputs and prefix cache.
struct BackwardInputs {
  std::vector<at::Tensor> w;
  at::Tensor g, x, x1, qkv, probs, u, stats, pk, pv;
};

inline BackwardInputs contiguous_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x,
                                                 const at::Tensor& x1, const at::Tensor& qkv,
                                                 const at::Tensor& probs, const at::Tensor& u,
                                                 const at::Tensor& stats, const at::Tensor& prefix_k,
                                                 const at::Tensor& prefix_v, at::TensorList params) {
  BackwardInputs in;
  for (const auto& p : params) in.w.push_back(p.contiguous());
  in.g = grad_out.contiguous().view({x.size(0) * x.size(1), x.size(2)});
  in.x = x.contiguous();
  in.x1 = x1.contiguous();
  in.qkv = qkv.contiguous();
  in.probs = probs.contiguous();
  in.u = u.contiguous();
  in.stats = stats.contiguous();
  in.pk = prefix_k.contiguous();
  in.pv = prefix_v.contiguous();
  return in;
}

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
