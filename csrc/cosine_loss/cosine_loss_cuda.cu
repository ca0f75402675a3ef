#include "cosine_loss.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace crossgap {
namespace {

constexpr int kThreads = 256;

// Block-wide sum of three values; every thread gets the totals.
template <typename acc_t>
__device__ void block_sum3(acc_t& a, acc_t& b, acc_t& c) {
  __shared__ acc_t sa[kThreads / 32], sb[kThreads / 32], sc[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_down_sync(0xffffffff, a, offset);
    b += __shfl_down_sync(0xffffffff, b, offset);
    c += __shfl_down_sync(0xffffffff, c, offset);
  }
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
    sc[warp] = c;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kThreads / 32 ? sa[lane] : acc_t(0);
    b = lane < kThreads / 32 ? sb[lane] : acc_t(0);
    c = lane < kThreads / 32 ? sc[lane] : acc_t(0);
    for (int offset = 16; offset > 0; offset >>= 1) {
      a += __shfl_down_sync(0xffffffff, a, offset);
      b += __shfl_down_sync(0xffffffff, b, offset);
      c += __shfl_down_sync(0xffffffff, c, offset);
    }
    if (lane == 0) {
      sa[0] = a;
      sb[0] = b;
      sc[0] = c;
    }
  }
  __syncthreads();
  a = sa[0];
  b = sb[0];
  c = sc[0];
}

// One block per sample: moments of the row, then (backward only) the gradient row.
template <typename scalar_t, typename acc_t, bool kBackward>
__global__ void cosine_loss_kernel(const scalar_t* __restrict__ y, const acc_t* __restrict__ t,
                                   const acc_t* __restrict__ grad_loss, acc_t* __restrict__ loss,
                                   scalar_t* __restrict__ grad_y, int64_t E, acc_t eps) {
  const int64_t b = blockIdx.x;
  const scalar_t* yr = y + b * E;
  const acc_t* tr = t + b * E;
  acc_t yt = 0, yy = 0, tt = 0;
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
    const acc_t a = static_cast<acc_t>(yr[i]);
    const acc_t c = tr[i];
    yt += a * c;
    yy += a * a;
    tt += c * c;
  }
  block_sum3(yt, yy, tt);
  const acc_t norm_y = sqrt(yy);
  const acc_t ny = max(norm_y, eps);
  const acc_t nt = max(sqrt(tt), eps);
  const acc_t cos = yt / (ny * nt);
  if constexpr (!kBackward) {
    if (threadIdx.x == 0) loss[b] = acc_t(1) - cos;
  } else {
    const acc_t g = grad_loss[b];
    const acc_t a = -g / (ny * nt);
    const acc_t c = norm_y > eps ? g * cos / (ny * ny) : acc_t(0);
    scalar_t* orow = grad_y + b * E;
    for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
      orow[i] = static_cast<scalar_t>(a * tr[i] + c * static_cast<acc_t>(yr[i]));
    }
  }
}

template <bool kBackward>
void launch(const at::Tensor& y, const at::Tensor& target, const at::Tensor* grad_loss,
            at::Tensor& loss, at::Tensor& grad_y) {
  const int64_t B = y.size(0);
  const int64_t E = y.size(1);
  if (B == 0) return;
  const auto loss_dtype = cosine_loss_dtype(y);
  const auto yc = y.contiguous();
  const auto tc = target.to(loss_dtype).contiguous();
  const at::Tensor gc = grad_loss ? grad_loss->to(loss_dtype).contiguous() : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "cosine_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cosine_loss_kernel<scalar_t, acc_t, kBackward><<<B, kThreads, 0, stream>>>(
        yc.data_ptr<scalar_t>(), tc.data_ptr<acc_t>(), kBackward ? gc.data_ptr<acc_t>() : nullptr,
        kBackward ? nullptr : loss.data_ptr<acc_t>(), kBackward ? grad_y.data_ptr<scalar_t>() : nullptr,
        E, static_cast<acc_t>(kCosineEps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

at::Tensor cosine_loss_cuda(const at::Tensor& y, const at::Tensor& target) {
  check_cosine_loss_args(y, target);
  const c10::cuda::CUDAGuard guard(y.device());
  auto loss = at::empty({y.size(0)}, y.options().dtype(cosine_loss_dtype(y)));
  at::Tensor unused;
  launch<false>(y, target, nullptr, loss, unused);
  return loss;
}

at::Tensor cosine_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& y,
                                     const at::Tensor& target) {
  check_cosine_loss_backward_args(grad_loss, y, target);
  const c10::cuda::CUDAGuard guard(y.device());
  auto grad_y = at::empty({y.size(0), y.size(1)}, y.options());
  at::Tensor unused;
  launch<true>(y, target, &grad_loss, unused, grad_y);
  return grad_y;
}

}  // namespace crossgap
