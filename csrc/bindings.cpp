// Operator schemas of the crossgap namespace and their CPU/CUDA kernels.
#include <torch/library.h>

#include "adamw_step/adamw_step.h"
#include "cosine_loss/cosine_loss.h"
#include "row_matmul/row_matmul.h"

TORCH_LIBRARY(crossgap, m) {
  m.def("cosine_loss(Tensor y, Tensor target) -> Tensor");
  m.def("cosine_loss_backward(Tensor grad_loss, Tensor y, Tensor target) -> Tensor");
  m.def(
      "adamw_step(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor(d!) step, Tensor active, float lr, float beta1, float beta2, float eps, "
      "float weight_decay) -> ()");
  m.def("row_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("row_matmul(Tensor x, Tensor weight) -> Tensor");
}

TORCH_LIBRARY_IMPL(crossgap, CPU, m) {
  m.impl("cosine_loss", &crossgap::cosine_loss_cpu);
  m.impl("cosine_loss_backward", &crossgap::cosine_loss_backward_cpu);
  m.impl("adamw_step", &crossgap::adamw_step_cpu);
  m.impl("row_linear", &crossgap::row_linear_cpu);
  m.impl("row_matmul", &crossgap::row_matmul_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(crossgap, CUDA, m) {
  m.impl("cosine_loss", &crossgap::cosine_loss_cuda);
  m.impl("cosine_loss_backward", &crossgap::cosine_loss_backward_cuda);
  m.impl("adamw_step", &crossgap::adamw_step_cuda);
  m.impl("row_linear", &crossgap::row_linear_cuda);
  m.impl("row_matmul", &crossgap::row_matmul_cuda);
}
#endif
