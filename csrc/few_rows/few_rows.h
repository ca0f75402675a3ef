// Matrix products of a few rows against a row-major weight, streaming the weight once from memory.
//
// At batch 1 an inversion step multiplies a handful of rows (the cached suffix's positions) by every weight
// matrix of the tower, forward and backward. Such a product reads far more weight than it does arithmetic, so
// its floor is the time to read the weight once. How close BLAS comes at two to eight rows depends on the CPU
// and on the form of the product (MKL's W x^T at two rows took twice the one-row time on an AVX-512 Xeon and was
// the faster form on an AVX2 EPYC). These kernels read each weight element once whatever the row count and keep
// the rows and partial sums in registers and L1; at one or two rows they run at the read floor, with more rows
// the arithmetic starts to count (benchmarks/bench_ops.py times them against BLAS).
//
// Shapes (float32, CPU, all contiguous; any M >= 0 works, the gain is for M <= kFewRows):
//   few_rows_product(x [M, K], weight [N, K])            -> [M, N] = x weight^T
//   few_rows_product_backward(grad [M, N], weight [N, K]) -> [M, K] = grad weight
//
// The kernels are compiled for AVX-512, AVX2 (+FMA) and baseline x86-64 (elsewhere: the compiler's default
// target) and the widest the CPU reports is used, so no instruction set is assumed; few_rows_isa caps it (to
// test or time the narrower ones on a wide CPU). Sums accumulate in float32 in a different order than BLAS:
// results agree with x @ weight.T to float rounding (tests/test_few_rows.py).
#pragma once

#include <torch/types.h>

#include <string>

namespace crossgap {

// Row counts up to which the suffix-block ops use these kernels instead of BLAS.
constexpr int64_t kFewRows = 8;

at::Tensor few_rows_product_cpu(const at::Tensor& x, const at::Tensor& weight);

// The instruction set the kernels use ("avx512", "avx2" or "baseline"); a non-empty cap switches to that one
// (for the whole process), which must be one the CPU runs.
std::string few_rows_isa(const std::string& cap);
at::Tensor few_rows_product_backward_cpu(const at::Tensor& grad, const at::Tensor& weight);

// The same on raw pointers (the suffix-block ops call these between their fused steps).
//   out [M, N] = x [M, K] weight[N, K]^T;   out [M, K] = grad [M, N] weight [N, K]
void few_rows_product(const float* x, const float* weight, float* out, int64_t M, int64_t N, int64_t K);
void few_rows_product_backward(const float* grad, const float* weight, float* out, int64_t M, int64_t N,
                               int64_t K);

}  // namespace crossgap
