// Schema of the FNS gather operators (docs/fns_operator.md). Device kernels register themselves in cpu/ and cuda/ (separate
// libraries: the CUDA one is loaded after this one).
//
// fns_gather_forward(attn (N, Kd*K*K, D, H, W), x (N, C, d, h, w), kernel_depth, deterministic) -> (N, C, D, H, W)
// fns_gather_backward(grad_out, attn, x, kernel_depth, deterministic, need_attn, need_x) -> (grad_attn, grad_x)
// kernel_depth is K for the 3D op and 1 for the 2D op (called with a depth-1 slice). `deterministic` selects the
// atomic-free grad_x on CUDA (the CPU backward is always deterministic); the forward ignores it but carries it so the
// autograd formula registered from Python can see it. A gradient whose need_* flag is false is not computed and comes
// back empty (numel 0).
#include <torch/library.h>

TORCH_LIBRARY(resfu_med, m) {
  m.def("fns_gather_forward(Tensor attn, Tensor x, int kernel_depth, bool deterministic) -> Tensor");
  m.def(
      "fns_gather_backward(Tensor grad_out, Tensor attn, Tensor x, int kernel_depth, bool deterministic, bool need_attn, "
      "bool need_x) -> (Tensor, Tensor)");
}
