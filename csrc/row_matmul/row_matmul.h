// Matrix products whose every output row is summed in an order that does not depend on the row count.
//
// For the few-row products of an inversion step (rows = samples x suffix positions) on CPU:
//
//   row_linear(x, weight, bias)  y[m, n] = sum_k x[m, k] * weight[n, k] + bias[n]
//   row_matmul(x, weight)        y[m, k] = sum_n x[m, n] * weight[n, k]
//
// Shapes and dtypes (float32, contiguous, same device)
//   row_linear: x [M, K], weight [N, K], bias [N] or none  ->  y [M, N]
//   row_matmul: x [M, N], weight [N, K]                     ->  y [M, K]
//
// Why: with a handful of rows a BLAS GEMM is bound by reading the weight and reads it slowly; these kernels
// stream the weight once for all rows. And since the CPU kernels sum each output in a fixed order (blocks of
// 8 lanes over the reduced dimension, then the lanes in order), a sample's result is bit-identical whether it
// is computed alone or in a batch. The CUDA kernels call cuBLAS and make no such promise.
#pragma once

#include <torch/types.h>

namespace crossgap {

void check_row_linear_args(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
void check_row_matmul_args(const at::Tensor& x, const at::Tensor& weight);

at::Tensor row_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
at::Tensor row_matmul_cpu(const at::Tensor& x, const at::Tensor& weight);

#ifdef WITH_CUDA
at::Tensor row_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
at::Tensor row_matmul_cuda(const at::Tensor& x, const at::Tensor& weight);
#endif

}  // namespace crossgap
