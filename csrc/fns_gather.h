// Argument checks and geometry of the FNS gather op, shared by the CPU and CUDA kernel files.
// The Python wrapper validates user input with ValueError; these TORCH_CHECKs guard direct torch.ops calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "fns_gather_common.h"

namespace resfu_med {
namespace fns {

inline Geometry make_geometry(const at::Tensor& attn, const at::Tensor& x, int64_t kernel_depth) {
  TORCH_CHECK(attn.dim() == 5 && x.dim() == 5, "fns_gather: expected 5D attn and x, got ", attn.sizes(), " and ", x.sizes());
  TORCH_CHECK(attn.size(0) == x.size(0), "fns_gather: batch mismatch ", attn.sizes(), " vs ", x.sizes());
  TORCH_CHECK(kernel_depth >= 1 && kernel_depth % 2 == 1, "fns_gather: kernel_depth must be odd, got ", kernel_depth);
  TORCH_CHECK(attn.scalar_type() == x.scalar_type(), "fns_gather: dtype mismatch");
  TORCH_CHECK(attn.device() == x.device(), "fns_gather: device mismatch");
  Geometry g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.d = x.size(2);
  g.h = x.size(3);
  g.w = x.size(4);
  g.D = attn.size(2);
  g.H = attn.size(3);
  g.W = attn.size(4);
  g.kd = kernel_depth;
  const int64_t plane = attn.size(1) / kernel_depth;
  int64_t k = 1;
  while (k * k < plane) ++k;
  g.k = k;
  TORCH_CHECK(attn.size(1) == kernel_depth * k * k && k % 2 == 1,
              "fns_gather: attn channels ", attn.size(1), " are not kernel_depth * K^2 for an odd K");
  TORCH_CHECK(kernel_depth == 1 || kernel_depth == k, "fns_gather: kernel_depth must be 1 (2D) or K (3D)");
  TORCH_CHECK(g.D >= g.d && g.H >= g.h && g.W >= g.w, "fns_gather: output smaller than x ", attn.sizes(), " vs ", x.sizes());
  TORCH_CHECK(g.d > 0 && g.h > 0 && g.w > 0 && g.C > 0 && g.N > 0, "fns_gather: empty input ", x.sizes());
  g.sd = axis_scale(g.d, g.D);
  g.sh = axis_scale(g.h, g.H);
  g.sw = axis_scale(g.w, g.W);
  g.ed = axis_exact_f32(g.d, g.D);
  g.eh = axis_exact_f32(g.h, g.H);
  g.ew = axis_exact_f32(g.w, g.W);
  return g;
}

}  // namespace fns
}  // namespace resfu_med
