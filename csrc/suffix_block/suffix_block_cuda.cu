#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <vector>

#include "suffix_block.h"
#include "suffix_block_math.h"

namespace crossgap {
namespace {

constexpr int kThreads = 256;
constexpr int kAttentionThreads = 128;

// Sum (kMax false) or maximum (kMax true) over the block; every thread gets the result. `shared` holds 32.
template <bool kMax, typename acc_t>
__device__ acc_t block_reduce(acc_t v, acc_t* shared) {
  const auto combine = [](acc_t a, acc_t b) { return kMax ? (a > b ? a : b) : a + b; };
  for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_down_sync(0xffffffff, v, offset));
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = (blockDim.x + 31) / 32;
  __syncthreads();  // shared may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : (kMax ? shared[0] : acc_t(0));
    for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_down_sync(0xffffffff, v, offset));
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  return shared[0];
}

// One block per row: LN of x [M, W] into out, mean/rstd into stats[:, col], stats[:, col + 1].
template <typename scalar_t, typename acc_t>
__global__ void layer_norm_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gamma,
                                  const scalar_t* __restrict__ beta, acc_t eps, int64_t W,
                                  scalar_t* __restrict__ out, acc_t* __restrict__ stats, int col) {
  __shared__ acc_t shared[32];
  const int64_t m = blockIdx.x;
  const scalar_t* xr = x + m * W;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < W; i += blockDim.x) sum += static_cast<acc_t>(xr[i]);
  const acc_t mean = block_reduce<false>(sum, shared) / static_cast<acc_t>(W);
  acc_t sq = 0;
  for (int64_t i = threadIdx.x; i < W; i += blockDim.x) {
    const acc_t c = static_cast<acc_t>(xr[i]) - mean;
    sq += c * c;
  }
  const acc_t rstd = acc_t(1) / sqrt(block_reduce<false>(sq, shared) / static_cast<acc_t>(W) + eps);
  for (int64_t i = threadIdx.x; i < W; i += blockDim.x) {
    out[m * W + i] = static_cast<scalar_t>((static_cast<acc_t>(xr[i]) - mean) * rstd * static_cast<acc_t>(gamma[i]) +
                                           static_cast<acc_t>(beta[i]));
  }
  if (threadIdx.x == 0) {
    stats[m * 4 + col] = mean;
    stats[m * 4 + col + 1] = rstd;
  }
}

// One block per row: out = residual + LN backward of dy [M, W].
template <typename scalar_t, typename acc_t>
__global__ void layer_norm_backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                           const acc_t* __restrict__ stats, int col,
                                           const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ residual,
                                           int64_t W, scalar_t* __restrict__ out) {
  __shared__ acc_t shared[32];
  const int64_t m = blockIdx.x;
  const acc_t mean = stats[m * 4 + col];
  const acc_t rstd = stats[m * 4 + col + 1];
  acc_t sum_gy = 0, sum_gy_xhat = 0;
  for (int64_t i = threadIdx.x; i < W; i += blockDim.x) {
    const acc_t gy = static_cast<acc_t>(dy[m * W + i]) * static_cast<acc_t>(gamma[i]);
    sum_gy += gy;
    sum_gy_xhat += gy * (static_cast<acc_t>(x[m * W + i]) - mean) * rstd;
  }
  const acc_t mean_gy = block_reduce<false>(sum_gy, shared) / static_cast<acc_t>(W);
  const acc_t mean_gy_xhat = block_reduce<false>(sum_gy_xhat, shared) / static_cast<acc_t>(W);
  for (int64_t i = threadIdx.x; i < W; i += blockDim.x) {
    const acc_t gy = static_cast<acc_t>(dy[m * W + i]) * static_cast<acc_t>(gamma[i]);
    const acc_t xhat = (static_cast<acc_t>(x[m * W + i]) - mean) * rstd;
    out[m * W + i] = static_cast<scalar_t>(static_cast<acc_t>(residual[m * W + i]) +
                                           suffix_math::layer_norm_grad(gy, xhat, rstd, mean_gy, mean_gy_xhat));
  }
}

// out = (y + bias) rounded, plus residual when given; y [M, N] contiguous.
template <typename scalar_t, typename acc_t>
__global__ void bias_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ bias,
                            const scalar_t* __restrict__ residual, int64_t M, int64_t N, scalar_t* __restrict__ out) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < M * N; idx += (int64_t)gridDim.x * blockDim.x) {
    const scalar_t lin = static_cast<scalar_t>(static_cast<acc_t>(y[idx]) + static_cast<acc_t>(bias[idx % N]));
    out[idx] = residual ? static_cast<scalar_t>(static_cast<acc_t>(residual[idx]) + static_cast<acc_t>(lin)) : lin;
  }
}

// a = act(u) (kBackward false), or g *= act'(u) in place (kBackward true).
template <typename scalar_t, typename acc_t, bool kBackward>
__global__ void activation_kernel(const scalar_t* __restrict__ u, scalar_t* __restrict__ io, int64_t n,
                                  Activation act) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n; idx += (int64_t)gridDim.x * blockDim.x) {
    const acc_t uu = static_cast<acc_t>(u[idx]);
    if constexpr (kBackward) {
      io[idx] = static_cast<scalar_t>(static_cast<acc_t>(io[idx]) * suffix_math::activation_derivative<acc_t>(act, uu));
    } else {
      io[idx] = static_cast<scalar_t>(suffix_math::activation<acc_t>(act, uu));
    }
  }
}

// Key/value row j of sample b, head h: the prefix's for j < P, else the suffix's in qkv [M, 3W].
template <typename scalar_t>
__device__ const scalar_t* key_row(const scalar_t* pk, const scalar_t* qkv, int64_t b, int64_t h, int64_t j,
                                   int64_t P, int64_t S, int64_t W, int64_t D, int part) {
  return j < P ? pk + (h * P + j) * D : qkv + (b * S + (j - P)) * 3 * W + part * W + h * D;
}

// One block per (b, h, i): probabilities over the P + S keys and the attention output row.
template <typename scalar_t, typename acc_t>
__global__ void attention_forward_kernel(const scalar_t* __restrict__ pk, const scalar_t* __restrict__ pv,
                                         const scalar_t* __restrict__ qkv, const acc_t* __restrict__ mask, int64_t H,
                                         int64_t P, int64_t S, int64_t W, int64_t D, acc_t scale,
                                         acc_t* __restrict__ probs, scalar_t* __restrict__ attn) {
  extern __shared__ unsigned char raw[];
  acc_t* scores = reinterpret_cast<acc_t*>(raw);
  __shared__ acc_t shared[32];
  const int64_t row = blockIdx.x;  // (b * H + h) * S + i
  const int64_t i = row % S, bh = row / S, h = bh % H, b = bh / H;
  const int64_t L = P + S;
  const scalar_t* q = qkv + (b * S + i) * 3 * W + h * D;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const scalar_t* k = key_row(pk, qkv, b, h, j, P, S, W, D, 1);
    acc_t dot = 0;
    for (int64_t e = 0; e < D; ++e) dot += static_cast<acc_t>(q[e]) * static_cast<acc_t>(k[e]);
    scores[j] = dot * scale + mask[i * L + j];
  }
  __syncthreads();
  acc_t top = -INFINITY;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) top = scores[j] > top ? scores[j] : top;
  top = block_reduce<true>(top, shared);
  acc_t total = 0;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    scores[j] = suffix_math::exp_(scores[j] - top);
    total += scores[j];
  }
  total = block_reduce<false>(total, shared);  // synchronises: every exp is written
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) probs[row * L + j] = scores[j] / total;
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    acc_t out = 0;
    for (int64_t j = 0; j < L; ++j) {
      out += (scores[j] / total) * static_cast<acc_t>(key_row(pv, qkv, b, h, j, P, S, W, D, 2)[e]);
    }
    attn[(b * S + i) * W + h * D + e] = static_cast<scalar_t>(out);
  }
}

// One block per (b, h, i): score gradients ds [B, H, S, L] and the query gradient.
template <typename scalar_t, typename acc_t>
__global__ void attention_backward_query_kernel(const scalar_t* __restrict__ pk, const scalar_t* __restrict__ pv,
                                                const scalar_t* __restrict__ qkv, const acc_t* __restrict__ probs,
                                                const scalar_t* __restrict__ d_attn, int64_t H, int64_t P, int64_t S,
                                                int64_t W, int64_t D, acc_t scale, acc_t* __restrict__ ds,
                                                scalar_t* __restrict__ d_qkv) {
  __shared__ acc_t shared[32];
  const int64_t row = blockIdx.x;
  const int64_t i = row % S, bh = row / S, h = bh % H, b = bh / H;
  const int64_t L = P + S;
  const scalar_t* go = d_attn + (b * S + i) * W + h * D;
  acc_t weighted = 0;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const scalar_t* v = key_row(pv, qkv, b, h, j, P, S, W, D, 2);
    acc_t dp = 0;
    for (int64_t e = 0; e < D; ++e) dp += static_cast<acc_t>(go[e]) * static_cast<acc_t>(v[e]);
    ds[row * L + j] = dp;
    weighted += probs[row * L + j] * dp;
  }
  weighted = block_reduce<false>(weighted, shared);
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    ds[row * L + j] = probs[row * L + j] * (ds[row * L + j] - weighted);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    acc_t dq = 0;
    for (int64_t j = 0; j < L; ++j) {
      dq += ds[row * L + j] * static_cast<acc_t>(key_row(pk, qkv, b, h, j, P, S, W, D, 1)[e]);
    }
    d_qkv[(b * S + i) * 3 * W + h * D + e] = static_cast<scalar_t>(dq * scale);
  }
}

// One block per (b, h, j), j a suffix key: its key and value gradients, summed over the queries.
template <typename scalar_t, typename acc_t>
__global__ void attention_backward_key_kernel(const scalar_t* __restrict__ qkv, const acc_t* __restrict__ probs,
                                              const acc_t* __restrict__ ds, const scalar_t* __restrict__ d_attn,
                                              int64_t H, int64_t P, int64_t S, int64_t W, int64_t D, acc_t scale,
                                              scalar_t* __restrict__ d_qkv) {
  const int64_t j = blockIdx.x % S, bh = blockIdx.x / S, h = bh % H, b = bh / H;
  const int64_t L = P + S;
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    acc_t dk = 0, dv = 0;
    for (int64_t i = 0; i < S; ++i) {
      const int64_t row = bh * S + i;
      dk += ds[row * L + P + j] * static_cast<acc_t>(qkv[(b * S + i) * 3 * W + h * D + e]);
      dv += probs[row * L + P + j] * static_cast<acc_t>(d_attn[(b * S + i) * W + h * D + e]);
    }
    d_qkv[(b * S + j) * 3 * W + W + h * D + e] = static_cast<scalar_t>(dk * scale);
    d_qkv[(b * S + j) * 3 * W + 2 * W + h * D + e] = static_cast<scalar_t>(dv);
  }
}

int elementwise_blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
}

}  // namespace

SuffixBlockOutputs suffix_block_forward_cuda(const at::Tensor& x, const at::Tensor& prefix_k,
                                             const at::Tensor& prefix_v, const at::Tensor& mask_bias,
                                             at::TensorList params, double ln_1_eps, double ln_2_eps,
                                             c10::string_view activation) {
  check_suffix_block_args("suffix_block_forward", x, prefix_k, prefix_v, params);
  check_suffix_block_mask(x, prefix_k, mask_bias);
  const Activation act = parse_activation(std::string(activation));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), S = x.size(1), W = x.size(2), M = B * S;
  const int64_t H = prefix_k.size(0), P = prefix_k.size(1), D = prefix_k.size(2);
  const int64_t F = params[kFcWeight].size(0);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  auto out = at::empty({B, S, W}, opts);
  auto x1 = at::empty({B, S, W}, opts);
  auto qkv = at::empty({B, S, 3 * W}, opts);
  auto probs = at::empty({B, H, S, P + S}, opts.dtype(acc_type));
  auto u = at::empty({B, S, F}, opts);
  auto stats = at::empty({B, S, 4}, opts.dtype(acc_type));
  if (M == 0) return {out, x1, qkv, probs, u, stats};
  std::vector<at::Tensor> w;
  for (const auto& p : params) w.push_back(p.contiguous());
  const auto xc = x.contiguous().view({M, W});
  const auto pk = prefix_k.contiguous();
  const auto pv = prefix_v.contiguous();
  const auto mask = mask_bias.to(acc_type).contiguous();
  auto h = at::empty({M, W}, opts);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "suffix_block_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ptr = [](const at::Tensor& t) { return t.const_data_ptr<scalar_t>(); };
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    const auto bias = [&](const at::Tensor& y, const at::Tensor& b, const scalar_t* residual, int64_t N,
                          at::Tensor& dst) {
      bias_kernel<scalar_t, acc_t><<<elementwise_blocks(M * N), kThreads, 0, stream>>>(
          ptr(y), ptr(b), residual, M, N, dst.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    layer_norm_kernel<scalar_t, acc_t><<<M, kThreads, 0, stream>>>(
        ptr(xc), ptr(w[kLn1Weight]), ptr(w[kLn1Bias]), static_cast<acc_t>(ln_1_eps), W,
        h.mutable_data_ptr<scalar_t>(), st, 0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bias(at::mm(h, w[kInWeight].t()), w[kInBias], nullptr, 3 * W, qkv);
    const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
    attention_forward_kernel<scalar_t, acc_t><<<B * H * S, kAttentionThreads, (P + S) * sizeof(acc_t), stream>>>(
        ptr(pk), ptr(pv), ptr(qkv), mask.const_data_ptr<acc_t>(), H, P, S, W, D, scale,
        probs.mutable_data_ptr<acc_t>(), h.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bias(at::mm(h, w[kOutWeight].t()), w[kOutBias], ptr(xc), W, x1);
    layer_norm_kernel<scalar_t, acc_t><<<M, kThreads, 0, stream>>>(
        ptr(x1), ptr(w[kLn2Weight]), ptr(w[kLn2Bias]), static_cast<acc_t>(ln_2_eps), W,
        h.mutable_data_ptr<scalar_t>(), st, 2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bias(at::mm(h, w[kFcWeight].t()), w[kFcBias], nullptr, F, u);
    auto a = at::empty({M, F}, opts);
    activation_kernel<scalar_t, acc_t, false><<<elementwise_blocks(M * F), kThreads, 0, stream>>>(
        ptr(u), a.mutable_data_ptr<scalar_t>(), M * F, act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bias(at::mm(a, w[kProjWeight].t()), w[kProjBias], ptr(x1), W, out);
  });
  return {out, x1, qkv, probs, u, stats};
}

at::Tensor suffix_block_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& x1,
                                      const at::Tensor& qkv, const at::Tensor& probs, const at::Tensor& u,
                                      const at::Tensor& stats, const at::Tensor& prefix_k,
                                      const at::Tensor& prefix_v, at::TensorList params,
                                      c10::string_view activation) {
  check_suffix_block_args("suffix_block_backward", x, prefix_k, prefix_v, params);
  check_suffix_block_saved(grad_out, x, x1, qkv, probs, u, stats, prefix_k);
  const Activation act = parse_activation(std::string(activation));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), S = x.size(1), W = x.size(2), M = B * S;
  const int64_t H = prefix_k.size(0), P = prefix_k.size(1), D = prefix_k.size(2);
  const int64_t F = params[kFcWeight].size(0);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  auto grad_x = at::empty({B, S, W}, opts);
  if (M == 0) return grad_x;
  const BackwardInputs in = contiguous_backward_inputs(grad_out, x, x1, qkv, probs, u, stats, prefix_k, prefix_v,
                                                       params);
  auto dx1 = at::empty({M, W}, opts);
  auto d_qkv = at::empty({M, 3 * W}, opts);
  auto ds = at::empty({B, H, S, P + S}, opts.dtype(acc_type));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "suffix_block_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ptr = [](const at::Tensor& t) { return t.const_data_ptr<scalar_t>(); };
    const acc_t* st = in.stats.const_data_ptr<acc_t>();
    auto du = at::mm(in.g, in.w[kProjWeight]);  // [M, F]
    activation_kernel<scalar_t, acc_t, true><<<elementwise_blocks(M * F), kThreads, 0, stream>>>(
        ptr(in.u), du.mutable_data_ptr<scalar_t>(), M * F, act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto dh2 = at::mm(du, in.w[kFcWeight]);
    layer_norm_backward_kernel<scalar_t, acc_t><<<M, kThreads, 0, stream>>>(
        ptr(dh2), ptr(in.x1), st, 2, ptr(in.w[kLn2Weight]), ptr(in.g), W, dx1.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto d_attn = at::mm(dx1, in.w[kOutWeight]);
    const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
    attention_backward_query_kernel<scalar_t, acc_t><<<B * H * S, kAttentionThreads, 0, stream>>>(
        ptr(in.pk), ptr(in.pv), ptr(in.qkv), in.probs.const_data_ptr<acc_t>(), ptr(d_attn), H, P, S, W, D, scale,
        ds.mutable_data_ptr<acc_t>(), d_qkv.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    attention_backward_key_kernel<scalar_t, acc_t><<<B * H * S, kAttentionThreads, 0, stream>>>(
        ptr(in.qkv), in.probs.const_data_ptr<acc_t>(), ds.const_data_ptr<acc_t>(), ptr(d_attn), H, P, S, W, D, scale,
        d_qkv.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto dh1 = at::mm(d_qkv, in.w[kInWeight]);
    layer_norm_backward_kernel<scalar_t, acc_t><<<M, kThreads, 0, stream>>>(
        ptr(dh1), ptr(in.x), st, 0, ptr(in.w[kLn1Weight]), ptr(dx1), W, grad_x.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace crossgap
