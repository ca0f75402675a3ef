#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "few_rows/few_rows.h"
#include "suffix_block.h"
#include "suffix_block_math.h"

// The Fortran BLAS interface that PyTorch's own CPU products end in (exported by libtorch_cpu when it is built
// with MKL or OpenBLAS). Weak, so that a PyTorch without it loads this library and falls back to at::mm.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace crossgap {

namespace {

// Column-major C (m x n, ldc) = op(A) op(B) through the BLAS ATen itself calls, when PyTorch exports it.
template <typename scalar_t>
bool blas_gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
               const scalar_t* b, int64_t ldb, scalar_t* c, int64_t ldc) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (m > kMax || n > kMax || k > kMax || lda > kMax || ldb > kMax || ldc > kMax) return false;
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (sgemm_ == nullptr) return false;
    const float one = 1, zero = 0;
    sgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &zero, c, &lc);
    return true;
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    if (dgemm_ == nullptr) return false;
    const double one = 1, zero = 0;
    dgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &zero, c, &lc);
    return true;
  }
  return false;
}

// x W^T for x [M, K] and W [N, K], both contiguous -> [M, N] contiguous. Few float32 rows go to the few-rows kernel (which reads the
// weight once at any row count); otherwise BLAS is called directly, which spares the per-call work of at::mm
// (dispatch, checks, views) that adds up over a step's hundred products.
template <typename scalar_t>
at::Tensor product(const at::Tensor& x, const at::Tensor& w) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto out = at::empty({M, N}, x.options());
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (M <= kFewRows) {
      few_rows_product(x.const_data_ptr<float>(), w.const_data_ptr<float>(), out.mutable_data_ptr<float>(), M, N,
                       K);
      return out;
    }
  }
  if (blas_gemm<scalar_t>('T', 'N', N, M, K, w.const_data_ptr<scalar_t>(), K, x.const_data_ptr<scalar_t>(), K,
                          out.mutable_data_ptr<scalar_t>(), N)) {
    return out;
  }
  return at::mm(x, w.t());
}

// g W for g [M, N] and W [N, K], both contiguous -> [M, K] contiguous.
template <typename scalar_t>
at::Tensor product_backward(const at::Tensor& g, const at::Tensor& w) {
  const int64_t M = g.size(0), N = g.size(1), K = w.size(1);
  auto out = at::empty({M, K}, g.options());
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (M <= kFewRows) {
      few_rows_product_backward(g.const_data_ptr<float>(), w.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                M, N, K);
      return out;
    }
  }
  if (blas_gemm<scalar_t>('N', 'N', K, M, N, w.const_data_ptr<scalar_t>(), K, g.const_data_ptr<scalar_t>(), N,
                          out.mutable_data_ptr<scalar_t>(), K)) {
    return out;
  }
  return at::mm(g, w);
}

template <typename scalar_t, typename acc_t>
void layer_norm_rows(const scalar_t* x, const scalar_t* gamma, const scalar_t* beta, acc_t eps, int64_t M,
                     int64_t W, scalar_t* out, acc_t* stats, int64_t stats_col) {
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const scalar_t* xr = x + m * W;
      acc_t sum = 0;
      for (const auto i : c10::irange(W)) sum += static_cast<acc_t>(xr[i]);
      const acc_t mean = sum / static_cast<acc_t>(W);
      acc_t sq = 0;
      for (const auto i : c10::irange(W)) {
        const acc_t c = static_cast<acc_t>(xr[i]) - mean;
        sq += c * c;
      }
      const acc_t rstd = acc_t(1) / std::sqrt(sq / static_cast<acc_t>(W) + eps);
      scalar_t* orow = out + m * W;
      for (const auto i : c10::irange(W)) {
        orow[i] = static_cast<scalar_t>((static_cast<acc_t>(xr[i]) - mean) * rstd * static_cast<acc_t>(gamma[i]) +
                                        static_cast<acc_t>(beta[i]));
      }
      stats[m * 4 + stats_col] = mean;
      stats[m * 4 + stats_col + 1] = rstd;
    }
  });
}

// out[m] = residual[m] + LN backward of dy[m] (dy given as an [M, W] view with strides).
template <typename scalar_t, typename acc_t>
void layer_norm_backward_rows(const at::Tensor& dy, const scalar_t* x, const acc_t* stats, int64_t stats_col,
                              const scalar_t* gamma, const scalar_t* residual, int64_t M, int64_t W,
                              scalar_t* out) {
  const scalar_t* dp = dy.const_data_ptr<scalar_t>();
  const int64_t sm = dy.stride(0), sn = dy.stride(1);
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const acc_t mean = stats[m * 4 + stats_col];
      const acc_t rstd = stats[m * 4 + stats_col + 1];
      const scalar_t* xr = x + m * W;
      acc_t sum_gy = 0, sum_gy_xhat = 0;
      for (const auto i : c10::irange(W)) {
        const acc_t gy = static_cast<acc_t>(dp[m * sm + i * sn]) * static_cast<acc_t>(gamma[i]);
        sum_gy += gy;
        sum_gy_xhat += gy * (static_cast<acc_t>(xr[i]) - mean) * rstd;
      }
      const acc_t mean_gy = sum_gy / static_cast<acc_t>(W);
      const acc_t mean_gy_xhat = sum_gy_xhat / static_cast<acc_t>(W);
      for (const auto i : c10::irange(W)) {
        const acc_t gy = static_cast<acc_t>(dp[m * sm + i * sn]) * static_cast<acc_t>(gamma[i]);
        const acc_t xhat = (static_cast<acc_t>(xr[i]) - mean) * rstd;
        const acc_t g = suffix_math::layer_norm_grad(gy, xhat, rstd, mean_gy, mean_gy_xhat);
        out[m * W + i] = static_cast<scalar_t>(static_cast<acc_t>(residual[m * W + i]) + g);
      }
    }
  });
}

// Keys and values of key j for sample b and head h: the prefix's for j < P, else the suffix's in qkv.
template <typename scalar_t>
struct KeyValues {
  const scalar_t* pk;
  const scalar_t* pv;
  const scalar_t* qkv;
  int64_t P, S, W, D;
  const scalar_t* key(int64_t b, int64_t h, int64_t j) const {
    return j < P ? pk + (h * P + j) * D : qkv + (b * S + (j - P)) * 3 * W + W + h * D;
  }
  const scalar_t* value(int64_t b, int64_t h, int64_t j) const {
    return j < P ? pv + (h * P + j) * D : qkv + (b * S + (j - P)) * 3 * W + 2 * W + h * D;
  }
  const scalar_t* query(int64_t b, int64_t h, int64_t i) const { return qkv + (b * S + i) * 3 * W + h * D; }
};

template <typename scalar_t, typename acc_t>
void attention_forward(const KeyValues<scalar_t>& kv, const acc_t* mask, int64_t B, int64_t H, acc_t* probs,
                       scalar_t* attn) {
  const int64_t P = kv.P, S = kv.S, W = kv.W, D = kv.D, L = P + S;
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
  at::parallel_for(0, B * H, 8, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> out(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (const auto i : c10::irange(S)) {
        const scalar_t* q = kv.query(b, h, i);
        acc_t* pr = probs + (bh * S + i) * L;
        acc_t top = -std::numeric_limits<acc_t>::infinity();
        for (const auto j : c10::irange(L)) {
          const scalar_t* k = kv.key(b, h, j);
          acc_t dot = 0;
          for (const auto e : c10::irange(D)) dot += static_cast<acc_t>(q[e]) * static_cast<acc_t>(k[e]);
          pr[j] = dot * scale + mask[i * L + j];
          top = std::max(top, pr[j]);
        }
        acc_t total = 0;
        for (const auto j : c10::irange(L)) {
          pr[j] = suffix_math::exp_(pr[j] - top);
          total += pr[j];
        }
        std::fill(out.begin(), out.end(), acc_t(0));
        for (const auto j : c10::irange(L)) {
          pr[j] /= total;
          if (pr[j] == acc_t(0)) continue;
          const scalar_t* v = kv.value(b, h, j);
          for (const auto e : c10::irange(D)) out[e] += pr[j] * static_cast<acc_t>(v[e]);
        }
        scalar_t* o = attn + (b * S + i) * W + h * D;
        for (const auto e : c10::irange(D)) o[e] = static_cast<scalar_t>(out[e]);
      }
    }
  });
}

// d_qkv [M, 3W] from d_attn [M, W]: queries get their own gradient, suffix keys/values sum over queries.
template <typename scalar_t, typename acc_t>
void attention_backward(const KeyValues<scalar_t>& kv, const acc_t* probs, const scalar_t* d_attn, int64_t B,
                        int64_t H, scalar_t* d_qkv) {
  const int64_t P = kv.P, S = kv.S, W = kv.W, D = kv.D, L = P + S;
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(D));
  at::parallel_for(0, B * H, 8, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ds(L), dq(D), dk(S * D), dv(S * D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      std::fill(dk.begin(), dk.end(), acc_t(0));
      std::fill(dv.begin(), dv.end(), acc_t(0));
      for (const auto i : c10::irange(S)) {
        const acc_t* pr = probs + (bh * S + i) * L;
        const scalar_t* go = d_attn + (b * S + i) * W + h * D;
        acc_t weighted = 0;
        for (const auto j : c10::irange(L)) {
          const scalar_t* v = kv.value(b, h, j);
          acc_t dp = 0;
          for (const auto e : c10::irange(D)) dp += static_cast<acc_t>(go[e]) * static_cast<acc_t>(v[e]);
          ds[j] = dp;
          weighted += pr[j] * dp;
        }
        for (const auto j : c10::irange(L)) ds[j] = pr[j] * (ds[j] - weighted);
        std::fill(dq.begin(), dq.end(), acc_t(0));
        const scalar_t* q = kv.query(b, h, i);
        for (const auto j : c10::irange(L)) {
          const scalar_t* k = kv.key(b, h, j);
          for (const auto e : c10::irange(D)) dq[e] += ds[j] * static_cast<acc_t>(k[e]);
          if (j >= P) {
            acc_t* dkr = dk.data() + (j - P) * D;
            acc_t* dvr = dv.data() + (j - P) * D;
            for (const auto e : c10::irange(D)) {
              dkr[e] += ds[j] * static_cast<acc_t>(q[e]);
              dvr[e] += pr[j] * static_cast<acc_t>(go[e]);
            }
          }
        }
        scalar_t* dqr = d_qkv + (b * S + i) * 3 * W + h * D;
        for (const auto e : c10::irange(D)) dqr[e] = static_cast<scalar_t>(dq[e] * scale);
      }
      for (const auto j : c10::irange(S)) {
        scalar_t* dkr = d_qkv + (b * S + j) * 3 * W + W + h * D;
        scalar_t* dvr = d_qkv + (b * S + j) * 3 * W + 2 * W + h * D;
        for (const auto e : c10::irange(D)) {
          dkr[e] = static_cast<scalar_t>(dk[j * D + e] * scale);
          dvr[e] = static_cast<scalar_t>(dv[j * D + e]);
        }
      }
    }
  });
}

// out[m, n] = y[m, n] + bias[n] (+ residual[m, n]), y [M, N] contiguous.
template <typename scalar_t, typename acc_t>
void add_bias_rows(const at::Tensor& y, const scalar_t* bias, const scalar_t* residual, int64_t M, int64_t N,
                   scalar_t* out) {
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  for (const auto m : c10::irange(M)) {
    for (const auto n : c10::irange(N)) {
      // Rounded to the dtype before the residual, as a linear layer's output is.
      const scalar_t lin = static_cast<scalar_t>(static_cast<acc_t>(yp[m * N + n]) + static_cast<acc_t>(bias[n]));
      out[m * N + n] = residual ? static_cast<scalar_t>(static_cast<acc_t>(residual[m * N + n]) + static_cast<acc_t>(lin))
                                : lin;
    }
  }
}

// a = act(u) for u [M, F]. The transcendental part goes to ATen's vectorised kernels: scalar erf/exp over
// the F-wide rows would cost more than the rest of the block's non-matrix work.
void activation_forward(Activation act, const at::Tensor& u, at::Tensor& a) {
  if (act == Activation::kQuickGelu) {
    at::sigmoid_out(a, at::mul(u, 1.702));
    a.mul_(u);
    return;
  }
  at::gelu_out(a, u, act == Activation::kGeluTanh ? "tanh" : "none");
}

// du = da * act'(u), written over da.
template <typename scalar_t, typename acc_t>
void activation_backward(Activation act, const at::Tensor& u, at::Tensor& da) {
  if (act != Activation::kQuickGelu) {
    da = at::gelu_backward(da, u, act == Activation::kGeluTanh ? "tanh" : "none");
    return;
  }
  const auto s = at::sigmoid(at::mul(u, 1.702));
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* up = u.const_data_ptr<scalar_t>();
  scalar_t* dp = da.mutable_data_ptr<scalar_t>();
  for (const auto i : c10::irange(u.numel())) {
    const acc_t sv = static_cast<acc_t>(sp[i]);
    const acc_t uv = static_cast<acc_t>(up[i]);
    dp[i] = static_cast<scalar_t>(static_cast<acc_t>(dp[i]) * (sv + acc_t(1.702) * uv * sv * (acc_t(1) - sv)));
  }
}

}  // namespace

SuffixBlockOutputs suffix_block_forward_cpu(const at::Tensor& x, const at::Tensor& prefix_k,
                                            const at::Tensor& prefix_v, const at::Tensor& mask_bias,
                                            at::TensorList params, double ln_1_eps, double ln_2_eps,
                                            c10::string_view activation) {
  check_suffix_block_args("suffix_block_forward", x, prefix_k, prefix_v, params);
  check_suffix_block_mask(x, prefix_k, mask_bias);
  const Activation act = parse_activation(std::string(activation));
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
  const auto xc = x.contiguous();
  const auto pk = prefix_k.contiguous();
  const auto pv = prefix_v.contiguous();
  const auto mask = mask_bias.to(acc_type).contiguous();
  auto h = at::empty({M, W}, opts);
  auto a = at::empty({M, F}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "suffix_block_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ptr = [](const at::Tensor& t) { return t.const_data_ptr<scalar_t>(); };
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    layer_norm_rows<scalar_t, acc_t>(ptr(xc), ptr(w[kLn1Weight]), ptr(w[kLn1Bias]), static_cast<acc_t>(ln_1_eps), M,
                                     W, h.mutable_data_ptr<scalar_t>(), st, 0);
    add_bias_rows<scalar_t, acc_t>(product<scalar_t>(h, w[kInWeight]), ptr(w[kInBias]), nullptr, M, 3 * W,
                                   qkv.mutable_data_ptr<scalar_t>());
    const KeyValues<scalar_t> kv{ptr(pk), ptr(pv), ptr(qkv), P, S, W, D};
    attention_forward<scalar_t, acc_t>(kv, mask.const_data_ptr<acc_t>(), B, H, probs.mutable_data_ptr<acc_t>(),
                                       h.mutable_data_ptr<scalar_t>());
    add_bias_rows<scalar_t, acc_t>(product<scalar_t>(h, w[kOutWeight]), ptr(w[kOutBias]), ptr(xc), M, W,
                                   x1.mutable_data_ptr<scalar_t>());
    layer_norm_rows<scalar_t, acc_t>(ptr(x1), ptr(w[kLn2Weight]), ptr(w[kLn2Bias]), static_cast<acc_t>(ln_2_eps), M,
                                     W, h.mutable_data_ptr<scalar_t>(), st, 2);
    add_bias_rows<scalar_t, acc_t>(product<scalar_t>(h, w[kFcWeight]), ptr(w[kFcBias]), nullptr, M, F,
                                   u.mutable_data_ptr<scalar_t>());
    activation_forward(act, u.view({M, F}), a);
    add_bias_rows<scalar_t, acc_t>(product<scalar_t>(a, w[kProjWeight]), ptr(w[kProjBias]), ptr(x1), M, W,
                                   out.mutable_data_ptr<scalar_t>());
  });
  return {out, x1, qkv, probs, u, stats};
}

at::Tensor suffix_block_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& x1,
                                     const at::Tensor& qkv, const at::Tensor& probs, const at::Tensor& u,
                                     const at::Tensor& stats, const at::Tensor& prefix_k,
                                     const at::Tensor& prefix_v, at::TensorList params,
                                     c10::string_view activation) {
  check_suffix_block_args("suffix_block_backward", x, prefix_k, prefix_v, params);
  check_suffix_block_saved(grad_out, x, x1, qkv, probs, u, stats, prefix_k);
  const Activation act = parse_activation(std::string(activation));
  const int64_t B = x.size(0), S = x.size(1), W = x.size(2), M = B * S;
  const int64_t H = prefix_k.size(0), P = prefix_k.size(1), D = prefix_k.size(2);
  const int64_t F = params[kFcWeight].size(0);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  auto grad_x = at::empty({B, S, W}, opts);
  if (M == 0) return grad_x;
  const BackwardInputs in = contiguous_backward_inputs(grad_out, x, x1, qkv, probs, u, stats, prefix_k, prefix_v,
                                                       params);
  auto dx1 = at::empty({M, W}, opts);
  auto d_qkv = at::empty({M, 3 * W}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "suffix_block_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ptr = [](const at::Tensor& t) { return t.const_data_ptr<scalar_t>(); };
    const acc_t* st = in.stats.const_data_ptr<acc_t>();
    // MLP branch: out = x1 + proj(act(fc(LN_2(x1)))); in.g @ W reads the row-major weight in order.
    auto du = product_backward<scalar_t>(in.g, in.w[kProjWeight]);  // [M, F]
    activation_backward<scalar_t, acc_t>(act, in.u.view({M, F}), du);
    layer_norm_backward_rows<scalar_t, acc_t>(product_backward<scalar_t>(du, in.w[kFcWeight]), ptr(in.x1), st, 2,
                                              ptr(in.w[kLn2Weight]), ptr(in.g), M, W,
                                              dx1.mutable_data_ptr<scalar_t>());
    // Attention branch: x1 = x + out_proj(attention(LN_1(x))).
    const auto d_attn = product_backward<scalar_t>(dx1, in.w[kOutWeight]).contiguous();
    const KeyValues<scalar_t> kv{ptr(in.pk), ptr(in.pv), ptr(in.qkv), P, S, W, D};
    attention_backward<scalar_t, acc_t>(kv, in.probs.const_data_ptr<acc_t>(), ptr(d_attn), B, H,
                                        d_qkv.mutable_data_ptr<scalar_t>());
    layer_norm_backward_rows<scalar_t, acc_t>(product_backward<scalar_t>(d_qkv, in.w[kInWeight]), ptr(in.x), st, 0,
                                              ptr(in.w[kLn1Weight]), ptr(dx1), M, W,
                                              grad_x.mutable_data_ptr<scalar_t>());
  });
  return grad_x;
}

}  // namespace crossgap
