// Operator schemas of the crossgap namespace and their CPU/CUDA kernels.
#include <torch/library.h>

#include "adamw_step/adamw_step.h"
#include "cosine_loss/cosine_loss.h"
#include "few_rows/few_rows.h"
#include "suffix_block/suffix_block.h"

TORCH_LIBRARY(crossgap, m) {
  m.def("cosine_loss(Tensor y, Tensor target) -> Tensor");
  m.def("cosine_loss_backward(Tensor grad_loss, Tensor y, Tensor target) -> Tensor");
  m.def(
      "adamw_step(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor(d!) step, Tensor active, float lr, float beta1, float beta2, float eps, "
      "float weight_decay) -> ()");
  m.def(
      "suffix_block_forward(Tensor x, Tensor prefix_k, Tensor prefix_v, Tensor mask_bias, Tensor[] params, "
      "float ln_1_eps, float ln_2_eps, str activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "suffix_block_backward(Tensor grad_out, Tensor x, Tensor x1, Tensor qkv, Tensor probs, Tensor u, "
      "Tensor stats, Tensor prefix_k, Tensor prefix_v, Tensor[] params, str activation) -> Tensor");
  m.def("few_rows_product(Tensor x, Tensor weight) -> Tensor");
  m.def("few_rows_product_backward(Tensor grad, Tensor weight) -> Tensor");
  m.def("few_rows_isa(str cap) -> str", &crossgap::few_rows_isa);
}

TORCH_LIBRARY_IMPL(crossgap, CPU, m) {
  m.impl("cosine_loss", &crossgap::cosine_loss_cpu);
  m.impl("cosine_loss_backward", &crossgap::cosine_loss_backward_cpu);
  m.impl("adamw_step", &crossgap::adamw_step_cpu);
  m.impl("suffix_block_forward", &crossgap::suffix_block_forward_cpu);
  m.impl("suffix_block_backward", &crossgap::suffix_block_backward_cpu);
  m.impl("few_rows_product", &crossgap::few_rows_product_cpu);
  m.impl("few_rows_product_backward", &crossgap::few_rows_product_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(crossgap, CUDA, m) {
  m.impl("cosine_loss", &crossgap::cosine_loss_cuda);
  m.impl("cosine_loss_backward", &crossgap::cosine_loss_backward_cuda);
  m.impl("adamw_step", &crossgap::adamw_step_cuda);
  m.impl("suffix_block_forward", &crossgap::suffix_block_forward_cuda);
  m.impl("suffix_block_backward", &crossgap::suffix_block_backward_cuda);
}
#endif
