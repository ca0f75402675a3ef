// Scalar arithmetic of the suffix block (acc = float or double): the layer-norm gradient and softmax exp are
// shared by the CPU and CUDA kernels; the activations are the CUDA kernels' (on CPU, ATen's vectorised GELU and
// sigmoid compute them faster than scalar erf/exp).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

#include "suffix_block.h"

namespace crossgap {
namespace suffix_math {

C10_HOST_DEVICE inline float erf_(float x) {
#ifdef __CUDA_ARCH__
  return erff(x);
#else
  return std::erf(x);
#endif
}
C10_HOST_DEVICE inline double erf_(double x) {
#ifdef __CUDA_ARCH__
  return ::erf(x);
#else
  return std::erf(x);
#endif
}
C10_HOST_DEVICE inline float exp_(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  return std::exp(x);
#endif
}
C10_HOST_DEVICE inline double exp_(double x) {
#ifdef __CUDA_ARCH__
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
C10_HOST_DEVICE inline float tanh_(float x) {
#ifdef __CUDA_ARCH__
  return tanhf(x);
#else
  return std::tanh(x);
#endif
}
C10_HOST_DEVICE inline double tanh_(double x) {
#ifdef __CUDA_ARCH__
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}

// act(u) of the MLP.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t activation(Activation kind, acc_t u) {
  if (kind == Activation::kQuickGelu) {
    return u / (acc_t(1) + exp_(acc_t(-1.702) * u));
  }
  if (kind == Activation::kGeluTanh) {
    const acc_t inner = acc_t(0.7978845608028654) * (u + acc_t(0.044715) * u * u * u);
    return acc_t(0.5) * u * (acc_t(1) + tanh_(inner));
  }
  return acc_t(0.5) * u * (acc_t(1) + erf_(u * acc_t(0.7071067811865476)));
}

// d act(u) / du.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t activation_derivative(Activation kind, acc_t u) {
  if (kind == Activation::kQuickGelu) {
    const acc_t s = acc_t(1) / (acc_t(1) + exp_(acc_t(-1.702) * u));
    return s + acc_t(1.702) * u * s * (acc_t(1) - s);
  }
  if (kind == Activation::kGeluTanh) {
    const acc_t k = acc_t(0.7978845608028654);
    const acc_t t = tanh_(k * (u + acc_t(0.044715) * u * u * u));
    return acc_t(0.5) * (acc_t(1) + t) +
           acc_t(0.5) * u * (acc_t(1) - t * t) * k * (acc_t(1) + acc_t(3 * 0.044715) * u * u);
  }
  const acc_t cdf = acc_t(0.5) * (acc_t(1) + erf_(u * acc_t(0.7071067811865476)));
  return cdf + u * acc_t(0.3989422804014327) * exp_(acc_t(-0.5) * u * u);
}

// Layer-norm input gradient of one element: rstd * (gy - mean(gy) - xhat * mean(gy * xhat)), gy = dy * gamma.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t layer_norm_grad(acc_t gy, acc_t xhat, acc_t rstd, acc_t mean_gy,
                                             acc_t mean_gy_xhat) {
  return rstd * (gy - mean_gy - xhat * mean_gy_xhat);
}

}  // namespace suffix_math
}  // namespace crossgap
