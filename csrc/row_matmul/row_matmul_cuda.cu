// CUDA side of row_linear / row_matmul: cuBLAS through ATen (the row-count invariance is a CPU promise).
#include <ATen/ATen.h>

#include "row_matmul.h"

namespace crossgap {

at::Tensor row_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_row_linear_args(x, weight, bias);
  return at::linear(x, weight, bias);
}

at::Tensor row_matmul_cuda(const at::Tensor& x, const at::Tensor& weight) {
  check_row_matmul_args(x, weight);
  return at::mm(x, weight);
}

}  // namespace crossgap
