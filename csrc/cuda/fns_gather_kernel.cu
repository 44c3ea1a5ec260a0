// CUDA kernels of the FNS gather: fp64/fp32 and fp16/bf16 inputs with fp32 accumulation, launched on the current
// stream, 64-bit indexing throughout (grid-stride loops over int64 element counts).
//
// forward:   one thread per (n, 8-channel chunk, HR pixel): the pixel's sampling taps (K per axis, fns::pixel_taps) are
//            computed once and reused for its channels; the pixel index is fastest across threads.
// grad_attn: one thread per (n, neighbour, pixel); dot product over channels of grad_out and the sampled x (its three
//            taps are computed once per thread, i.e. once for all channels).
// grad_x:    default: one thread per (n, 8-channel chunk, pixel) scattering with atomicAdd into an fp32/fp64 buffer,
//            zero-weight corners skipped (4 of the 8 in every 2D call); deterministic: one thread per (n, 4-channel
//            chunk, LR element) GATHERING from the HR pixels whose taps touch it (fns::hr_range), in a fixed order,
//            without atomics: bit-identical across runs.
// Coordinates are float32 on axes where that is exact (power-of-two ratios), float64 elsewhere (fns::axis_tap_auto).
// K > fns::kMaxAxisTaps: per-element forward threads and the gather grad_x. All formulas are the host/device functions of
// fns_gather_common.h, which the CPU test library runs too (tests/ops: "mirror").
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../fns_gather.h"

namespace resfu_med {
namespace fns {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20));
}

#define RESFU_GRID_STRIDE(idx, total)                                                        \
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < (total); \
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Channels per thread of the per-pixel kernels: the pixel's taps are computed once for this many channels.
constexpr int64_t kChannels = 8;
constexpr int kGatherChannels = 4;

RESFU_HD int64_t chunks(int64_t channels, int64_t per) { return (channels + per - 1) / per; }

// Thread index -> (n, channel chunk, pixel) with the pixel fastest, so neighbouring threads read neighbouring pixels.
#define RESFU_SPLIT(idx, inner, nchunks, n, chunk, pos) \
  const int64_t pos = (idx) % (inner), chunk = ((idx) / (inner)) % (nchunks), n = (idx) / ((inner) * (nchunks))

template <typename scalar_t>
__global__ void forward_kernel(const Geometry g, const scalar_t* __restrict__ attn, const scalar_t* __restrict__ x,
                               scalar_t* __restrict__ out, const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = g.hr_plane(), nch = chunks(g.C, kChannels);
  RESFU_GRID_STRIDE(idx, total) {
    RESFU_SPLIT(idx, P, nch, n, chunk, p);
    const int64_t c0 = chunk * kChannels, c1 = c0 + kChannels < g.C ? c0 + kChannels : g.C;
    forward_pixel<scalar_t, acc_t>(g, x + n * g.C * g.lr_plane(), attn + n * g.taps() * P, p, c0, c1, out + n * g.C * P);
  }
}

// K > kMaxAxisTaps: one thread per output element (per-element formula).
template <typename scalar_t>
__global__ void forward_element_kernel(const Geometry g, const scalar_t* __restrict__ attn, const scalar_t* __restrict__ x,
                                       scalar_t* __restrict__ out, const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = g.hr_plane();
  RESFU_GRID_STRIDE(idx, total) {
    const int64_t p = idx % P, nc = idx / P, n = nc / g.C;
    out[idx] = static_cast<scalar_t>(forward_element<scalar_t, acc_t>(g, x + nc * g.lr_plane(), attn + n * g.taps() * P, p));
  }
}

template <typename scalar_t>
__global__ void grad_attn_kernel(const Geometry g, const scalar_t* __restrict__ go, const scalar_t* __restrict__ x,
                                 scalar_t* __restrict__ ga, const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = g.hr_plane(), T = g.taps();
  RESFU_GRID_STRIDE(idx, total) {
    const int64_t p = idx % P, t = (idx / P) % T, n = idx / (P * T);
    ga[idx] = static_cast<scalar_t>(
        grad_attn_element<scalar_t, acc_t>(g, go + n * g.C * P, x + n * g.C * g.lr_plane(), t, p));
  }
}

struct AtomicAdd {
  template <typename acc_t>
  __device__ __forceinline__ void operator()(acc_t* ptr, acc_t value) const {
    atomicAdd(ptr, value);
  }
};

template <typename scalar_t, typename acc_t>
__global__ void grad_x_atomic_kernel(const Geometry g, const scalar_t* __restrict__ go, const scalar_t* __restrict__ attn,
                                     acc_t* __restrict__ gx, const int64_t total) {
  const int64_t P = g.hr_plane(), nch = chunks(g.C, kChannels);
  RESFU_GRID_STRIDE(idx, total) {
    RESFU_SPLIT(idx, P, nch, n, chunk, p);
    const int64_t c0 = chunk * kChannels, c1 = c0 + kChannels < g.C ? c0 + kChannels : g.C;
    grad_x_scatter_pixel<scalar_t, acc_t>(g, go + n * g.C * P, attn + n * g.taps() * P, p, c0, c1, gx + n * g.C * g.lr_plane(),
                                          AtomicAdd());
  }
}

template <typename scalar_t, typename acc_t>
__global__ void grad_x_gather_kernel(const Geometry g, const scalar_t* __restrict__ go, const scalar_t* __restrict__ attn,
                                     acc_t* __restrict__ gx, const int64_t total) {
  const int64_t P = g.hr_plane(), Q = g.lr_plane(), nch = chunks(g.C, kGatherChannels);
  RESFU_GRID_STRIDE(idx, total) {
    RESFU_SPLIT(idx, Q, nch, n, chunk, l);
    const int64_t c0 = chunk * kGatherChannels, c1 = c0 + kGatherChannels < g.C ? c0 + kGatherChannels : g.C;
    grad_x_gather_channels<scalar_t, acc_t, kGatherChannels>(g, go + n * g.C * P, attn + n * g.taps() * P, l, c0, c1,
                                                             gx + n * g.C * Q);
  }
}

at::Tensor forward_cuda(const at::Tensor& attn_in, const at::Tensor& x_in, int64_t kernel_depth, bool /*deterministic*/) {
  const Geometry g = make_geometry(attn_in, x_in, kernel_depth);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor attn = attn_in.contiguous(), x = x_in.contiguous();
  at::Tensor out = at::empty({g.N, g.C, g.D, g.H, g.W}, x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fns_gather_forward_cuda", [&] {
    if (g.k <= kMaxAxisTaps) {
      const int64_t total = g.N * chunks(g.C, kChannels) * g.hr_plane();
      forward_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
          g, attn.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total);
    } else {
      const int64_t total = out.numel();
      forward_element_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
          g, attn.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_in, const at::Tensor& attn_in, const at::Tensor& x_in,
                                                 int64_t kernel_depth, bool deterministic, bool need_attn, bool need_x) {
  const Geometry g = make_geometry(attn_in, x_in, kernel_depth);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({g.N, g.C, g.D, g.H, g.W}), "fns_gather: grad_out has shape ", grad_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor attn = attn_in.contiguous(), x = x_in.contiguous(), go = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor grad_attn = need_attn ? at::empty_like(attn, at::MemoryFormat::Contiguous) : at::empty({0}, attn.options());
  at::Tensor grad_x = at::empty({0}, x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fns_gather_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t ga_total = grad_attn.numel();
    if (ga_total > 0) grad_attn_kernel<scalar_t><<<grid_for(ga_total), kThreads, 0, stream>>>(
        g, go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(), ga_total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!need_x) return;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    at::Tensor acc;
    if (deterministic || g.k > kMaxAxisTaps) {  // K > kMaxAxisTaps: PixelTaps would not fit; the gather has no such limit
      acc = at::empty(x.sizes(), x.options().dtype(acc_type));
      const int64_t total = g.N * chunks(g.C, kGatherChannels) * g.lr_plane();
      grad_x_gather_kernel<scalar_t, acc_t><<<grid_for(total), kThreads, 0, stream>>>(
          g, go.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), acc.data_ptr<acc_t>(), total);
    } else {
      acc = at::zeros(x.sizes(), x.options().dtype(acc_type));
      const int64_t total = g.N * chunks(g.C, kChannels) * g.hr_plane();
      grad_x_atomic_kernel<scalar_t, acc_t><<<grid_for(total), kThreads, 0, stream>>>(
          g, go.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), acc.data_ptr<acc_t>(), total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_x = acc.scalar_type() == x.scalar_type() ? acc : acc.to(x.scalar_type());
  });
  return {grad_attn, grad_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(resfu_med, CUDA, m) {
  m.impl("fns_gather_forward", &forward_cuda);
  m.impl("fns_gather_backward", &backward_cuda);
}

}  // namespace fns
}  // namespace resfu_med
