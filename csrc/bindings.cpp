// Operator schemas of the crossgap namespace and their CPU/CUDA kernels.
#include <torch/library.h>

#include "adamw_step/adamw_step.h"
#include "cosine_loss/cosine_loss.h"

TORCH_LIBRARY(crossgap, m) {
  m.def("cosine_loss(Tensor y, Tensor target) -> Tensor");
  m.def("cosine_loss_backward(Tensor grad_loss, Tensor y, Tensor target) -> Tensor");
  m.def(
      "adamw_step(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor(d!) step, Tensor active, float lr, float beta1, float beta2, float eps, "
      "float weight_decay) -> ()");
}

TORCH_LIBRARY_IMPL(crossgap, CPU, m) {
  m.impl("cosine_loss", &crossgap::cosine_loss_cpu);
  m.impl("cosine_loss_backward", &crossgap::cosine_loss_backward_cpu);
  m.impl("adamw_step", &crossgap::adamw_step_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(crossgap, CUDA, m) {
  m.impl("cosine_loss", &crossgap::cosine_loss_cuda);
  m.impl("cosine_loss_backward", &crossgap::cosine_loss_backward_cuda);
  m.impl("adamw_step", &crossgap::adamw_step_cuda);
}
#endif
