#include "cosine_loss.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>

namespace crossgap {

namespace {

// Sums <y, t>, |y|^2 and |t|^2 of one row in acc_t.
template <typename scalar_t, typename acc_t>
inline void row_moments(const scalar_t* y, const acc_t* t, int64_t n, acc_t& yt, acc_t& yy,
                        acc_t& tt) {
  yt = 0;
  yy = 0;
  tt = 0;
  for (const auto i : c10::irange(n)) {
    const acc_t a = static_cast<acc_t>(y[i]);
    const acc_t b = t[i];
    yt += a * b;
    yy += a * a;
    tt += b * b;
  }
}

}  // namespace

at::Tensor cosine_loss_cpu(const at::Tensor& y, const at::Tensor& target) {
  check_cosine_loss_args(y, target);
  const auto loss_dtype = cosine_loss_dtype(y);
  const int64_t B = y.size(0);
  const int64_t E = y.size(1);
  auto loss = at::empty({B}, y.options().dtype(loss_dtype));
  if (B == 0) return loss;
  const auto yc = y.contiguous();
  const auto tc = target.to(loss_dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "cosine_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = yc.data_ptr<scalar_t>();
    const acc_t* tp = tc.data_ptr<acc_t>();
    acc_t* lp = loss.data_ptr<acc_t>();
    const acc_t eps = static_cast<acc_t>(kCosineEps);
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        acc_t yt, yy, tt;
        row_moments(yp + b * E, tp + b * E, E, yt, yy, tt);
        const acc_t ny = std::max(std::sqrt(yy), eps);
        const acc_t nt = std::max(std::sqrt(tt), eps);
        lp[b] = acc_t(1) - yt / (ny * nt);
      }
    });
  });
  return loss;
}

at::Tensor cosine_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& y,
                                    const at::Tensor& target) {
  check_cosine_loss_backward_args(grad_loss, y, target);
  const auto loss_dtype = cosine_loss_dtype(y);
  const int64_t B = y.size(0);
  const int64_t E = y.size(1);
  auto grad_y = at::empty({B, E}, y.options().memory_format(at::MemoryFormat::Contiguous));
  if (B == 0) return grad_y;
  const auto yc = y.contiguous();
  const auto tc = target.to(loss_dtype).contiguous();
  const auto gc = grad_loss.to(loss_dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "cosine_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = yc.data_ptr<scalar_t>();
    const acc_t* tp = tc.data_ptr<acc_t>();
    const acc_t* gp = gc.data_ptr<acc_t>();
    scalar_t* op = grad_y.data_ptr<scalar_t>();
    const acc_t eps = static_cast<acc_t>(kCosineEps);
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* yr = yp + b * E;
        const acc_t* tr = tp + b * E;
        scalar_t* orow = op + b * E;
        acc_t yt, yy, tt;
        row_moments(yr, tr, E, yt, yy, tt);
        const acc_t norm_y = std::sqrt(yy);
        const acc_t ny = std::max(norm_y, eps);
        const acc_t nt = std::max(std::sqrt(tt), eps);
        const acc_t cos = yt / (ny * nt);
        // d(1 - cos)/dy = -(t / (ny nt) - cos y / ny^2); the second term vanishes where |y| is clamped.
        const acc_t a = -gp[b] / (ny * nt);
        const acc_t c = norm_y > eps ? gp[b] * cos / (ny * ny) : acc_t(0);
        for (const auto i : c10::irange(E)) {
          orow[i] = static_cast<scalar_t>(a * tr[i] + c * static_cast<acc_t>(yr[i]));
        }
      }
    });
  });
  return grad_y;
}

}  // namespace crossgap
