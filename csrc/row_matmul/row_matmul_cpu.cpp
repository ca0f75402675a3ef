#include "row_matmul.h"

#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <algorithm>

namespace crossgap {

void check_row_linear_args(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "row_linear: x must be 2-D [M, K], got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, "row_linear: weight must be 2-D [N, K], got shape ", weight.sizes());
  TORCH_CHECK(x.size(1) == weight.size(1), "row_linear: x has ", x.size(1), " columns but weight has ",
              weight.size(1));
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "row_linear: x and weight must be float32, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(x.device() == weight.device(), "row_linear: weight is on ", weight.device(), " but x is on ",
              x.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "row_linear: bias must be [N] = [",
                weight.size(0), "], got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == at::kFloat, "row_linear: bias must be float32, got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == x.device(), "row_linear: bias is on ", bias->device(), " but x is on ",
                x.device());
  }
}

void check_row_matmul_args(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2, "row_matmul: x must be 2-D [M, N], got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, "row_matmul: weight must be 2-D [N, K], got shape ", weight.sizes());
  TORCH_CHECK(x.size(1) == weight.size(0), "row_matmul: x has ", x.size(1), " columns but weight has ",
              weight.size(0), " rows");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "row_matmul: x and weight must be float32, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(x.device() == weight.device(), "row_matmul: weight is on ", weight.device(), " but x is on ",
              x.device());
}

namespace {

constexpr int64_t kLanes = 8;  // partial sums per dot product; the compiler maps them to one AVX2 register
constexpr int64_t kRowBlock = 4;  // weight rows per pass over x in row_linear
constexpr int64_t kColBlock = 256;  // output columns per task in row_matmul

// Dot product of two length-n rows, lanes summed in a fixed order.
__attribute__((target_clones("avx2,fma", "default"))) float dot(const float* a, const float* b, int64_t n) {
  float lane[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      lane[j] += a[k + j] * b[k + j];
    }
  }
  for (int64_t j = 0; k < n; ++k, ++j) {
    lane[j] += a[k] * b[k];
  }
  float s = 0;
  for (int64_t j = 0; j < kLanes; ++j) {
    s += lane[j];
  }
  return s;
}

// acc[0:n] += s * w[0:n]
__attribute__((target_clones("avx2,fma", "default"))) void axpy(float* acc, float s, const float* w, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    acc[k] += s * w[k];
  }
}

}  // namespace

at::Tensor row_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                          const c10::optional<at::Tensor>& bias_in) {
  check_row_linear_args(x_in, weight_in, bias_in);
  const auto x = x_in.contiguous();
  const auto weight = weight_in.contiguous();
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  auto y = at::empty({m, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = nullptr;
  at::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->contiguous();
    bp = bias.data_ptr<float>();
  }
  float* yp = y.data_ptr<float>();
  // Each task owns a block of weight rows (read from memory once) and sweeps all rows of x over it.
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
    for (const auto blk : c10::irange(lo, hi)) {
      const int64_t r0 = blk * kRowBlock, r1 = std::min(n, r0 + kRowBlock);
      for (const auto i : c10::irange(m)) {
        for (int64_t r = r0; r < r1; ++r) {
          const float s = dot(xp + i * k, wp + r * k, k);
          yp[i * n + r] = bp ? s + bp[r] : s;
        }
      }
    }
  });
  return y;
}

at::Tensor row_matmul_cpu(const at::Tensor& x_in, const at::Tensor& weight_in) {
  check_row_matmul_args(x_in, weight_in);
  const auto x = x_in.contiguous();
  const auto weight = weight_in.contiguous();
  const int64_t m = x.size(0), n = x.size(1), k = weight.size(1);
  auto y = at::zeros({m, k}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Each task owns a block of output columns; the weight rows are added in order 0..N-1 for every output.
  const int64_t blocks = (k + kColBlock - 1) / kColBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
    for (const auto blk : c10::irange(lo, hi)) {
      const int64_t c0 = blk * kColBlock, width = std::min(k, c0 + kColBlock) - c0;
      for (const auto j : c10::irange(n)) {
        const float* wrow = wp + j * k + c0;
        for (const auto i : c10::irange(m)) {
          axpy(yp + i * k + c0, xp[i * n + j], wrow, width);
        }
      }
    }
  });
  return y;
}

}  // namespace crossgap
