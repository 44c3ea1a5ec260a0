// Test-only library (never part of the production build): the CUDA kernels' per-element formulas
// (fns_gather_common.h) run serially on CPU, so the CUDA maths, including the deterministic gather backward and its HR
// ranges, is checked against the reference on machines without a GPU. Built by resfu_med.ops.build.load_testing().
//
// resfu_med_testing::fns_gather_elementwise(grad_out, attn, x, kernel_depth) -> (out, grad_attn, grad_x)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../fns_gather.h"

namespace resfu_med {
namespace fns {
namespace {

// Test-only: the CUDA kernels' per-element formulas (fns_gather_common.h) run serially on CPU, so the CUDA maths,
// including the deterministic gather backward and its HR ranges, is checked against the reference without a GPU.
std::tuple<at::Tensor, at::Tensor, at::Tensor> elementwise_cpu(const at::Tensor& grad_in, const at::Tensor& attn_in,
                                                               const at::Tensor& x_in, int64_t kernel_depth) {
  const Geometry g = make_geometry(attn_in, x_in, kernel_depth);
  const at::Tensor attn = attn_in.contiguous(), x = x_in.contiguous(), go = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor out = at::empty({g.N, g.C, g.D, g.H, g.W}, x.options());
  at::Tensor grad_attn = at::empty_like(attn), grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fns_gather_elementwise_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *a = attn.data_ptr<scalar_t>(), *xv = x.data_ptr<scalar_t>(), *gv = go.data_ptr<scalar_t>();
    scalar_t *o = out.data_ptr<scalar_t>(), *ga = grad_attn.data_ptr<scalar_t>(), *gx = grad_x.data_ptr<scalar_t>();
    const int64_t P = g.hr_plane(), Q = g.lr_plane(), T = g.taps();
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t c = 0; c < g.C; ++c) {
        for (int64_t p = 0; p < P; ++p)
          o[(n * g.C + c) * P + p] = static_cast<scalar_t>(forward_element<scalar_t, acc_t>(g, xv + (n * g.C + c) * Q, a + n * T * P, p));
        for (int64_t l = 0; l < Q; ++l)
          gx[(n * g.C + c) * Q + l] = static_cast<scalar_t>(grad_x_gather_element<scalar_t, acc_t>(g, gv + (n * g.C + c) * P, a + n * T * P, l));
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t p = 0; p < P; ++p)
          ga[(n * T + t) * P + p] = static_cast<scalar_t>(grad_attn_element<scalar_t, acc_t>(g, gv + n * g.C * P, xv + n * g.C * Q, t, p));
    }
  });
  return {out, grad_attn, grad_x};
}

}  // namespace

TORCH_LIBRARY(resfu_med_testing, m) {
  m.def("fns_gather_elementwise(Tensor grad_out, Tensor attn, Tensor x, int kernel_depth) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(resfu_med_testing, CPU, m) { m.impl("fns_gather_elementwise", &elementwise_cpu); }

}  // namespace fns
}  // namespace resfu_med
