// CPU kernels of the FNS gather (forward and backward), fp64/fp32 and bf16/fp16 inputs with fp32 accumulation.
//
// Per-axis separability: for one HR pixel, the K offsets of one axis touch at most K + 1 consecutive LR indices (a
// "window"), with a K x (K + 1) matrix of linear weights (AxisTable, computed once per call from the shared
// fns_gather_common.h geometry). Contracting the pixel's attn (Kd x K x K) with the three axis matrices gives ONE weight
// per LR tap of the window ((Kd+1)(K+1)^2 taps instead of Kd K^2 * 8), so the per-channel work is a short dot
// product; the backward reuses the windows: grad_attn contracts the per-tap dot products back through the same
// matrices, grad_x scatters grad_out * weight into the window. Work is split over HR rows (forward, grad_attn) and over
// (sample, channel block) for grad_x so no two threads write one element: every CPU result is deterministic and
// independent of the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../fns_gather.h"

namespace resfu_med {
namespace fns {
namespace {

template <typename acc_t>
struct AxisTable {
  int64_t k = 1;
  int64_t slots = 2;  // window length K + 1
  std::vector<int64_t> start, count;
  std::vector<acc_t> mat;  // [hr index][offset][slot]

  AxisTable(int64_t in, int64_t out, int64_t k_, double scale)
      : k(k_), slots(k_ + 1), start(out), count(out), mat(out * k_ * (k_ + 1), acc_t(0)) {
    const int64_t r = (k - 1) / 2;
    std::vector<double> m(k * slots);
    for (int64_t i = 0; i < out; ++i) {
      const int64_t first = axis_tap(i, -r, in, scale).lo;
      start[i] = first;
      count[i] = axis_tap(i, r, in, scale).hi - first + 1;
      std::fill(m.begin(), m.end(), 0.0);
      for (int64_t a = 0; a < k; ++a) {
        const AxisTap t = axis_tap(i, a - r, in, scale);
        m[a * slots + (t.lo - first)] += 1.0 - t.frac;
        m[a * slots + (t.hi - first)] += t.frac;
      }
      for (int64_t e = 0; e < k * slots; ++e) mat[i * k * slots + e] = static_cast<acc_t>(m[e]);
    }
  }
  const acc_t* row(int64_t i) const { return mat.data() + i * k * slots; }
};

// Combined window weights and LR offsets of every pixel of one HR row (n, z, y).
template <typename scalar_t, typename acc_t>
struct RowWindows {
  const Geometry& g;
  const AxisTable<acc_t>& tz;
  const AxisTable<acc_t>& ty;
  const AxisTable<acc_t>& tx;
  int64_t max_win;
  std::vector<acc_t> wgt, t1, t2;
  std::vector<int64_t> idx, cnt;

  RowWindows(const Geometry& g_, const AxisTable<acc_t>& z, const AxisTable<acc_t>& y, const AxisTable<acc_t>& x)
      : g(g_), tz(z), ty(y), tx(x), max_win(z.slots * y.slots * x.slots),
        wgt(g_.W * max_win), t1(g_.kd * g_.k * x.slots), t2(g_.kd * y.slots * x.slots), idx(g_.W * max_win), cnt(g_.W) {}

  // attn_row points at attn[n, 0, z, y, 0]; taps are D*H*W apart.
  void compute(const scalar_t* attn_row, int64_t z, int64_t y) {
    const int64_t K = g.k, KD = g.kd, P = g.hr_plane();
    const int64_t nz = tz.count[z], ny = ty.count[y], sz = tz.start[z], sy = ty.start[y];
    const acc_t* mz = tz.row(z);
    const acc_t* my = ty.row(y);
    const int64_t zs = tz.slots, ys = ty.slots, xs = tx.slots;
    for (int64_t j = 0; j < g.W; ++j) {
      const int64_t nx = tx.count[j], sx = tx.start[j];
      const acc_t* mx = tx.row(j);
      // t1[a][b][mx] = sum_c attn[a][b][c] * Mx[c][mx]
      for (int64_t ab = 0; ab < KD * K; ++ab) {
        acc_t* o = t1.data() + ab * xs;
        for (int64_t e = 0; e < nx; ++e) o[e] = acc_t(0);
        for (int64_t c = 0; c < K; ++c) {
          const acc_t a = static_cast<acc_t>(attn_row[(ab * K + c) * P + j]);
          for (int64_t e = 0; e < nx; ++e) o[e] += a * mx[c * xs + e];
        }
      }
      // t2[a][my][mx] = sum_b My[b][my] * t1[a][b][mx]
      for (int64_t a = 0; a < KD; ++a) {
        for (int64_t m = 0; m < ny; ++m) {
          acc_t* o = t2.data() + (a * ys + m) * xs;
          for (int64_t e = 0; e < nx; ++e) o[e] = acc_t(0);
          for (int64_t b = 0; b < K; ++b) {
            const acc_t wy = my[b * ys + m];
            const acc_t* src = t1.data() + (a * K + b) * xs;
            for (int64_t e = 0; e < nx; ++e) o[e] += wy * src[e];
          }
        }
      }
      // window weight[mz][my][mx] = sum_a Mz[a][mz] * t2[a][my][mx]
      int64_t e = 0;
      acc_t* w = wgt.data() + j * max_win;
      int64_t* id = idx.data() + j * max_win;
      for (int64_t q = 0; q < nz; ++q) {
        for (int64_t m = 0; m < ny; ++m) {
          for (int64_t s = 0; s < nx; ++s, ++e) {
            acc_t v = acc_t(0);
            for (int64_t a = 0; a < KD; ++a) v += mz[a * zs + q] * t2[(a * ys + m) * xs + s];
            w[e] = v;
            id[e] = ((sz + q) * g.h + (sy + m)) * g.w + (sx + s);
          }
        }
      }
      cnt[j] = e;
    }
  }
};

template <typename scalar_t>
void forward_impl(const Geometry& g, const scalar_t* attn, const scalar_t* x, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const AxisTable<acc_t> tz(g.d, g.D, g.kd, g.sd), ty(g.h, g.H, g.k, g.sh), tx(g.w, g.W, g.k, g.sw);
  const int64_t P = g.hr_plane(), Q = g.lr_plane();
  at::parallel_for(0, g.N * g.D * g.H, 1, [&](int64_t begin, int64_t end) {
    RowWindows<scalar_t, acc_t> rw(g, tz, ty, tx);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (g.D * g.H), z = (row / g.H) % g.D, y = row % g.H;
      rw.compute(attn + n * g.taps() * P + (z * g.H + y) * g.W, z, y);
      for (int64_t c = 0; c < g.C; ++c) {
        const scalar_t* xc = x + (n * g.C + c) * Q;
        scalar_t* oc = out + (n * g.C + c) * P + (z * g.H + y) * g.W;
        for (int64_t j = 0; j < g.W; ++j) {
          const acc_t* w = rw.wgt.data() + j * rw.max_win;
          const int64_t* id = rw.idx.data() + j * rw.max_win;
          acc_t s = acc_t(0);
          for (int64_t e = 0; e < rw.cnt[j]; ++e) s += w[e] * static_cast<acc_t>(xc[id[e]]);
          oc[j] = static_cast<scalar_t>(s);
        }
      }
    }
  });
}

template <typename scalar_t>
void grad_attn_impl(const Geometry& g, const scalar_t* go, const scalar_t* attn, const scalar_t* x, scalar_t* ga) {
  using acc_t = at::opmath_type<scalar_t>;
  const AxisTable<acc_t> tz(g.d, g.D, g.kd, g.sd), ty(g.h, g.H, g.k, g.sh), tx(g.w, g.W, g.k, g.sw);
  const int64_t P = g.hr_plane(), Q = g.lr_plane(), K = g.k, KD = g.kd;
  at::parallel_for(0, g.N * g.D * g.H, 1, [&](int64_t begin, int64_t end) {
    RowWindows<scalar_t, acc_t> rw(g, tz, ty, tx);
    std::vector<acc_t> dots(g.W * rw.max_win), s1(tz.slots * ty.slots * K), s2(tz.slots * K * K);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (g.D * g.H), z = (row / g.H) % g.D, y = row % g.H;
      const int64_t pix = (z * g.H + y) * g.W;
      rw.compute(attn + n * g.taps() * P + pix, z, y);  // only the window indices are needed here
      std::fill(dots.begin(), dots.end(), acc_t(0));
      // dots[j][e] = sum_c grad_out[c, pixel j] * x[c, tap e]
      for (int64_t c = 0; c < g.C; ++c) {
        const scalar_t* xc = x + (n * g.C + c) * Q;
        const scalar_t* gc = go + (n * g.C + c) * P + pix;
        for (int64_t j = 0; j < g.W; ++j) {
          const acc_t gv = static_cast<acc_t>(gc[j]);
          acc_t* d = dots.data() + j * rw.max_win;
          const int64_t* id = rw.idx.data() + j * rw.max_win;
          for (int64_t e = 0; e < rw.cnt[j]; ++e) d[e] += gv * static_cast<acc_t>(xc[id[e]]);
        }
      }
      const int64_t nz = tz.count[z], ny = ty.count[y], zs = tz.slots, ys = ty.slots, xs = tx.slots;
      const acc_t* mz = tz.row(z);
      const acc_t* my = ty.row(y);
      for (int64_t j = 0; j < g.W; ++j) {
        const int64_t nx = tx.count[j];
        const acc_t* mx = tx.row(j);
        const acc_t* d = dots.data() + j * rw.max_win;
        // s1[mz][my][c] = sum_mx Mx[c][mx] d[mz][my][mx]
        for (int64_t q = 0; q < nz * ny; ++q)
          for (int64_t c = 0; c < K; ++c) {
            acc_t v = acc_t(0);
            for (int64_t s = 0; s < nx; ++s) v += mx[c * xs + s] * d[q * nx + s];
            s1[q * K + c] = v;
          }
        // s2[mz][b][c] = sum_my My[b][my] s1[mz][my][c]
        for (int64_t q = 0; q < nz; ++q)
          for (int64_t b = 0; b < K; ++b)
            for (int64_t c = 0; c < K; ++c) {
              acc_t v = acc_t(0);
              for (int64_t m = 0; m < ny; ++m) v += my[b * ys + m] * s1[(q * ny + m) * K + c];
              s2[(q * K + b) * K + c] = v;
            }
        // grad_attn[a][b][c] = sum_mz Mz[a][mz] s2[mz][b][c]
        scalar_t* out = ga + n * g.taps() * P + pix + j;
        for (int64_t a = 0; a < KD; ++a)
          for (int64_t bc = 0; bc < K * K; ++bc) {
            acc_t v = acc_t(0);
            for (int64_t q = 0; q < nz; ++q) v += mz[a * zs + q] * s2[q * K * K + bc];
            out[(a * K * K + bc) * P] = static_cast<scalar_t>(v);
          }
      }
    }
  });
}

// grad_x[n, c, l] = sum over HR pixels p of grad_out[n, c, p] * window weight of p on l. Each task owns a channel block
// of one sample and visits the pixels in a fixed order: no races, and a summation order independent of the split.
template <typename scalar_t, typename acc_t>
void grad_x_impl(const Geometry& g, const scalar_t* go, const scalar_t* attn, acc_t* gx) {
  const AxisTable<acc_t> tz(g.d, g.D, g.kd, g.sd), ty(g.h, g.H, g.k, g.sh), tx(g.w, g.W, g.k, g.sw);
  const int64_t P = g.hr_plane(), Q = g.lr_plane();
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t blocks = std::min<int64_t>(g.C, (threads + g.N - 1) / g.N);
  const int64_t per_block = (g.C + blocks - 1) / blocks;
  at::parallel_for(0, g.N * blocks, 1, [&](int64_t begin, int64_t end) {
    RowWindows<scalar_t, acc_t> rw(g, tz, ty, tx);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * per_block, c1 = std::min(g.C, c0 + per_block);
      for (int64_t c = c0; c < c1; ++c) std::fill(gx + (n * g.C + c) * Q, gx + (n * g.C + c + 1) * Q, acc_t(0));
      for (int64_t z = 0; z < g.D; ++z)
        for (int64_t y = 0; y < g.H; ++y) {
          const int64_t pix = (z * g.H + y) * g.W;
          rw.compute(attn + n * g.taps() * P + pix, z, y);
          for (int64_t c = c0; c < c1; ++c) {
            acc_t* gc = gx + (n * g.C + c) * Q;
            const scalar_t* oc = go + (n * g.C + c) * P + pix;
            for (int64_t j = 0; j < g.W; ++j) {
              const acc_t gv = static_cast<acc_t>(oc[j]);
              const acc_t* w = rw.wgt.data() + j * rw.max_win;
              const int64_t* id = rw.idx.data() + j * rw.max_win;
              for (int64_t e = 0; e < rw.cnt[j]; ++e) gc[id[e]] += gv * w[e];
            }
          }
        }
    }
  });
}

// fp32/fp64 accumulate straight into grad_x; half inputs accumulate in an fp32 buffer rounded once at the end.
template <typename scalar_t>
void grad_x_dispatch(const Geometry& g, const at::Tensor& go, const at::Tensor& attn, at::Tensor& grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    grad_x_impl<scalar_t, acc_t>(g, go.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>());
  } else {
    at::Tensor acc = at::empty(grad_x.sizes(), grad_x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    grad_x_impl<scalar_t, acc_t>(g, go.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), acc.data_ptr<acc_t>());
    grad_x.copy_(acc);
  }
}

at::Tensor forward_cpu(const at::Tensor& attn_in, const at::Tensor& x_in, int64_t kernel_depth, bool /*deterministic*/) {
  const Geometry g = make_geometry(attn_in, x_in, kernel_depth);
  const at::Tensor attn = attn_in.contiguous(), x = x_in.contiguous();
  at::Tensor out = at::empty({g.N, g.C, g.D, g.H, g.W}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fns_gather_forward_cpu", [&] {
    forward_impl<scalar_t>(g, attn.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_in, const at::Tensor& attn_in, const at::Tensor& x_in,
                                                int64_t kernel_depth, bool /*deterministic: always*/) {
  const Geometry g = make_geometry(attn_in, x_in, kernel_depth);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({g.N, g.C, g.D, g.H, g.W}), "fns_gather: grad_out has shape ", grad_in.sizes());
  const at::Tensor attn = attn_in.contiguous(), x = x_in.contiguous(), go = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor grad_attn = at::empty_like(attn);
  at::Tensor grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fns_gather_backward_cpu", [&] {
    grad_attn_impl<scalar_t>(g, go.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                             grad_attn.data_ptr<scalar_t>());
    grad_x_dispatch<scalar_t>(g, go, attn, grad_x);
  });
  return {grad_attn, grad_x};
}

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

TORCH_LIBRARY_IMPL(resfu_med, CPU, m) {
  m.impl("fns_gather_forward", &forward_cpu);
  m.impl("fns_gather_backward", &backward_cpu);
  m.impl("fns_gather_elementwise", &elementwise_cpu);
}

}  // namespace fns
}  // namespace resfu_med
