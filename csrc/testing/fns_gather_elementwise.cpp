// Test-only library (never part of the production build): the CUDA kernels' per-element formulas
// (fns_gather_common.h) run serially on CPU, so the CUDA maths, including the deterministic gather backward and its HR
// ranges, is checked against the reference on machines without a GPU. Built by resfu_med.ops.build.load_testing().
//
// resfu_med_testing::fns_gather_elementwise(grad_out, attn, x, kernel_depth, deterministic) -> (out, grad_attn, grad_x)
// deterministic: grad_x by the gather (CUDA deterministic=True), else by the scatter (the atomic kernel's formula).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "../fns_gather.h"

namespace resfu_med {
namespace fns {
namespace {

// The CUDA kernels' formulas, run serially, dispatched exactly as the .cu file does: per-pixel forward for K <=
// kMaxAxisTaps (per-element beyond); grad_x by the atomic-style scatter, or by the 4-channel gather when deterministic
// or K > kMaxAxisTaps.
std::tuple<at::Tensor, at::Tensor, at::Tensor> elementwise_cpu(const at::Tensor& grad_in, const at::Tensor& attn_in,
                                                               const at::Tensor& x_in, int64_t kernel_depth,
                                                               bool deterministic) {
  const Geometry g = make_geometry(attn_in, x_in, kernel_depth);
  const at::Tensor attn = attn_in.contiguous(), x = x_in.contiguous(), go = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor out = at::empty({g.N, g.C, g.D, g.H, g.W}, x.options());
  at::Tensor grad_attn = at::empty_like(attn);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_x = at::zeros(x.sizes(), x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fns_gather_elementwise_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *a = attn.data_ptr<scalar_t>(), *xv = x.data_ptr<scalar_t>(), *gv = go.data_ptr<scalar_t>();
    scalar_t *o = out.data_ptr<scalar_t>(), *ga = grad_attn.data_ptr<scalar_t>();
    acc_t* gx = grad_x.data_ptr<acc_t>();
    const int64_t P = g.hr_plane(), Q = g.lr_plane(), T = g.taps(), C = g.C;
    const bool per_pixel = g.k <= kMaxAxisTaps;
    const auto add = [](acc_t* ptr, acc_t value) { *ptr += value; };
    for (int64_t n = 0; n < g.N; ++n) {
      const scalar_t *an = a + n * T * P, *xn = xv + n * C * Q, *gn = gv + n * C * P;
      for (int64_t p = 0; p < P; ++p) {
        if (per_pixel) {
          forward_pixel<scalar_t, acc_t>(g, xn, an, p, 0, C, o + n * C * P);
          if (!deterministic) grad_x_scatter_pixel<scalar_t, acc_t>(g, gn, an, p, 0, C, gx + n * C * Q, add);
        } else {
          for (int64_t c = 0; c < C; ++c)
            o[(n * C + c) * P + p] = static_cast<scalar_t>(forward_element<scalar_t, acc_t>(g, xn + c * Q, an, p));
        }
      }
      if (deterministic || !per_pixel) {
        for (int64_t l = 0; l < Q; ++l) {
          for (int64_t c0 = 0; c0 < C; c0 += 4) grad_x_gather_channels<scalar_t, acc_t, 4>(g, gn, an, l, c0, std::min(C, c0 + 4), gx + n * C * Q);
        }
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t p = 0; p < P; ++p)
          ga[(n * T + t) * P + p] = static_cast<scalar_t>(grad_attn_element<scalar_t, acc_t>(g, gn, xn, t, p));
    }
  });
  return {out, grad_attn, grad_x.to(x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY(resfu_med_testing, m) {
  m.def(
      "fns_gather_elementwise(Tensor grad_out, Tensor attn, Tensor x, int kernel_depth, bool deterministic) -> (Tensor, Tensor, "
      "Tensor)");
}

TORCH_LIBRARY_IMPL(resfu_med_testing, CPU, m) { m.impl("fns_gather_elementwise", &elementwise_cpu); }

}  // namespace fns
}  // namespace resfu_med
