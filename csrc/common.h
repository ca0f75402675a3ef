// Argument checks shared by the CPU and CUDA units of every op.
//
// Each check raises (TORCH_CHECK) with a message that starts with the op's name and names the bad argument,
// e.g. "adamw_step: step must have shape [4], got [5]". Header-only and inline, so a .cpp and a .cu that
// include it run the same checks without either unit depending on the other.
#pragma once

#include <torch/types.h>

namespace crossgap {

// `t` is on the device of `ref`.
inline void check_same_device(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

// `t` has shape [n].
inline void check_vector_of(const char* op, const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, op, ": ", name, " must have shape [", n, "], got ", t.sizes());
}

// `t` has the shape, dtype and device of `ref`.
inline void check_like(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " shape ", t.sizes(), " does not match ", ref_name,
              " shape ", ref.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
              " does not match ", ref_name, " dtype ", ref.scalar_type());
  check_same_device(op, t, name, ref, ref_name);
}

}  // namespace crossgap
