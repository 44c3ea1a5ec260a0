// CPU kernels of the FNS gather (forward and backward), fp64/fp32 and bf16/fp16 inputs with fp32 accumulation.
//
// Per-axis separability: for one HR pixel, the K offsets of one axis touch a few consecutive LR indices (a "window":
// K + 1, or K + 2 where float64 rounding of the coordinate crosses an integer), with a K x window matrix of linear weights (AxisTable, computed once per call from the shared
// fns_gather_common.h geometry). Contracting the pixel's attn (Kd x K x K) with the three axis matrices gives ONE weight
// per LR tap of the window ((Kd+1)(K+1)^2 taps instead of Kd K^2 * 8), so the per-channel work is a short dot
// product; the backward reuses the windows: grad_attn contracts the per-tap dot products back through the same
// matrices, grad_x scatters grad_out * weight into the window. Work is split over HR rows (forward) and over bands of LR
// rows (backward) so no two threads write one element and every element is summed in one fixed order: every CPU result
// is deterministic and bit-identical for any thread count.
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
  int64_t slots = 2;  // window length: the widest span of LR taps of one HR index (K + 1, sometimes K + 2)
  std::vector<int64_t> start, count;
  std::vector<acc_t> mat;  // [hr index][offset][slot]

  AxisTable(int64_t in, int64_t out, int64_t k_, double scale) : k(k_), start(out), count(out) {
    const int64_t r = (k - 1) / 2;
    // The window of HR index i spans the LR taps of all K offsets. It is measured, not assumed: u = x + a is rounded
    // in float64, so for |a| >= 2 the taps of the extreme offsets can lie K + 1 (not K) apart, and a window K + 2
    // long. Tables are sized by the widest window, so no index can leave them.
    std::vector<AxisTap> taps(out * k);
    slots = 1;
    for (int64_t i = 0; i < out; ++i) {
      int64_t first = in, last = 0;
      for (int64_t a = 0; a < k; ++a) {
        const AxisTap t = axis_tap(i, a - r, in, scale);
        taps[i * k + a] = t;
        first = std::min(first, t.lo);
        last = std::max(last, t.hi);
      }
      start[i] = first;
      count[i] = last - first + 1;
      slots = std::max(slots, count[i]);
    }
    mat.assign(out * k * slots, acc_t(0));
    std::vector<double> m(k * slots);
    for (int64_t i = 0; i < out; ++i) {
      std::fill(m.begin(), m.end(), 0.0);
      for (int64_t a = 0; a < k; ++a) {
        const AxisTap& t = taps[i * k + a];
        m[a * slots + (t.lo - start[i])] += 1.0 - t.frac;
        m[a * slots + (t.hi - start[i])] += t.frac;
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

// Rows per parallel task so a task holds at least ~32k multiply-adds (torch's own grain size): small problems run on the
// calling thread instead of paying for a parallel region (and for waiting on busy cores of a shared machine).
constexpr int64_t kGrain = 32768;  // at::internal::GRAIN_SIZE

inline int64_t grain_rows(const Geometry& g, int64_t rows) {
  const int64_t work = std::max<int64_t>(1, g.N * g.hr_plane() * g.C * g.taps() * 2);
  return std::max<int64_t>(1, kGrain * rows / work);
}

// Dot product of two contiguous vectors with independent partial sums, so the compiler vectorises it without
// -ffast-math (a single float accumulator is a serial chain it may not reorder).
template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  constexpr int64_t L = 8;
  acc_t part[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int64_t k = 0; k < L; ++k) part[k] += a[i + k] * b[i + k];
  acc_t s = acc_t(0);
  for (int64_t k = 0; k < L; ++k) s += part[k];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Copy the HR row (n, z, y) of channels [c0, c1) of an NCDHW tensor into buf[j][c - c0] (channels last, acc type).
template <typename scalar_t, typename acc_t>
inline void row_to_channels_last(const Geometry& g, const scalar_t* t, int64_t n, int64_t pix, int64_t c0, int64_t c1, acc_t* buf) {
  const int64_t P = g.hr_plane(), cb = c1 - c0;
  for (int64_t c = c0; c < c1; ++c) {
    const scalar_t* src = t + (n * g.C + c) * P + pix;
    for (int64_t j = 0; j < g.W; ++j) buf[j * cb + (c - c0)] = static_cast<acc_t>(src[j]);
  }
}

// x is read channels-last (x_cl: (N, d*h*w, C) in the accumulation type) so that the per-tap work is a contiguous,
// vectorisable AXPY/dot over channels; outputs stay NCDHW (a row of all channels is transposed through a small buffer).
template <typename scalar_t>
void forward_impl(const Geometry& g, const scalar_t* attn, const at::opmath_type<scalar_t>* x_cl, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const AxisTable<acc_t> tz(g.d, g.D, g.kd, g.sd), ty(g.h, g.H, g.k, g.sh), tx(g.w, g.W, g.k, g.sw);
  const int64_t P = g.hr_plane(), Q = g.lr_plane(), C = g.C;
  at::parallel_for(0, g.N * g.D * g.H, grain_rows(g, g.N * g.D * g.H), [&](int64_t begin, int64_t end) {
    RowWindows<scalar_t, acc_t> rw(g, tz, ty, tx);
    std::vector<acc_t> buf(g.W * C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (g.D * g.H), z = (row / g.H) % g.D, y = row % g.H;
      const int64_t pix = (z * g.H + y) * g.W;
      rw.compute(attn + n * g.taps() * P + pix, z, y);
      for (int64_t j = 0; j < g.W; ++j) {
        acc_t* b = buf.data() + j * C;
        const acc_t* w = rw.wgt.data() + j * rw.max_win;
        const int64_t* id = rw.idx.data() + j * rw.max_win;
        const acc_t* xn = x_cl + n * Q * C;
        // Channel blocks of L accumulated over all taps in registers (fixed trip count: vectorised).
        constexpr int64_t L = 16;
        int64_t c0 = 0;
        for (; c0 + L <= C; c0 += L) {
          acc_t r[L] = {};
          for (int64_t e = 0; e < rw.cnt[j]; ++e) {
            const acc_t we = w[e];
            const acc_t* xs = xn + id[e] * C + c0;
            for (int64_t k = 0; k < L; ++k) r[k] += we * xs[k];
          }
          for (int64_t k = 0; k < L; ++k) b[c0 + k] = r[k];
        }
        for (int64_t c = c0; c < C; ++c) {
          acc_t r = acc_t(0);
          for (int64_t e = 0; e < rw.cnt[j]; ++e) r += w[e] * xn[id[e] * C + c];
          b[c] = r;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        scalar_t* oc = out + (n * C + c) * P + pix;
        for (int64_t j = 0; j < g.W; ++j) oc[j] = static_cast<scalar_t>(buf[j * C + c]);
      }
    }
  });
}

// grad_attn[a][b][c] of pixel (z, y, j) from dots[e] = <grad_out, x at window tap e>: the window weights are
// separable, so contract back through Mx, My, Mz in turn. `out` points at grad_attn[n, 0, z, y, j] (taps P apart).
template <typename scalar_t, typename acc_t>
inline void contract_to_grad_attn(const Geometry& g, const AxisTable<acc_t>& tz, const AxisTable<acc_t>& ty,
                                  const AxisTable<acc_t>& tx, int64_t z, int64_t y, int64_t j, const acc_t* d, acc_t* s1,
                                  acc_t* s2, scalar_t* out) {
  const int64_t P = g.hr_plane(), K = g.k, KD = g.kd;
  const int64_t nz = tz.count[z], ny = ty.count[y], nx = tx.count[j], zs = tz.slots, ys = ty.slots, xs = tx.slots;
  const acc_t* mz = tz.row(z);
  const acc_t* my = ty.row(y);
  const acc_t* mx = tx.row(j);
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
  for (int64_t a = 0; a < KD; ++a)
    for (int64_t bc = 0; bc < K * K; ++bc) {
      acc_t v = acc_t(0);
      for (int64_t q = 0; q < nz; ++q) v += mz[a * zs + q] * s2[q * K * K + bc];
      out[(a * K * K + bc) * P] = static_cast<scalar_t>(v);
    }
}

// Both gradients in one pass, in parallel without atomics. A task owns a band [begin, end) of LR rows (n, lz, ly): it
// zeroes and accumulates grad_x of those rows only, visiting every HR row whose window touches them in the serial order
// (n, z, y, pixel, tap), so each grad_x element sums its terms in one fixed order whatever the split (bit-identical for
// any thread count). grad_attn of an HR row is computed by the one task owning the first LR row of the row's window.
// Only rows whose window straddles a band boundary have their windows computed twice. `ga` / `gx_cl` may be null
// (gradient not needed).
template <typename scalar_t>
void backward_impl(const Geometry& g, const scalar_t* go, const scalar_t* attn, const at::opmath_type<scalar_t>* x_cl,
                   scalar_t* ga, at::opmath_type<scalar_t>* gx_cl) {
  using acc_t = at::opmath_type<scalar_t>;
  const AxisTable<acc_t> tz(g.d, g.D, g.kd, g.sd), ty(g.h, g.H, g.k, g.sh), tx(g.w, g.W, g.k, g.sw);
  const int64_t P = g.hr_plane(), Q = g.lr_plane(), K = g.k, C = g.C;
  at::parallel_for(0, g.N * g.d * g.h, grain_rows(g, g.N * g.d * g.h), [&](int64_t begin, int64_t end) {
    RowWindows<scalar_t, acc_t> rw(g, tz, ty, tx);
    std::vector<acc_t> gbuf(g.W * C), dots(rw.max_win), s1(tz.slots * ty.slots * K), s2(tz.slots * K * K);
    const int64_t band_lo = begin * g.w, band_hi = end * g.w;  // LR elements (n * Q + l) of this task's rows
    if (gx_cl != nullptr) std::fill(gx_cl + band_lo * C, gx_cl + band_hi * C, acc_t(0));
    for (int64_t n = begin / (g.d * g.h); n <= (end - 1) / (g.d * g.h); ++n) {
      for (int64_t z = 0; z < g.D; ++z)
        for (int64_t y = 0; y < g.H; ++y) {
          const int64_t first_row = (n * g.d + tz.start[z]) * g.h + ty.start[y];
          const bool owner = ga != nullptr && first_row >= begin && first_row < end;
          bool touches = false;
          for (int64_t q = 0; gx_cl != nullptr && q < tz.count[z]; ++q) {
            const int64_t row = first_row + q * g.h;
            touches = touches || (row < end && row + ty.count[y] > begin);
          }
          if (!owner && !touches) continue;
          const int64_t pix = (z * g.H + y) * g.W;
          rw.compute(attn + n * g.taps() * P + pix, z, y);
          row_to_channels_last(g, go, n, pix, 0, C, gbuf.data());
          for (int64_t j = 0; j < g.W; ++j) {
            const acc_t* gj = gbuf.data() + j * C;
            const acc_t* w = rw.wgt.data() + j * rw.max_win;
            const int64_t* id = rw.idx.data() + j * rw.max_win;
            for (int64_t e = 0; e < rw.cnt[j]; ++e) {
              const int64_t l = n * Q + id[e];
              if (owner) dots[e] = dot(gj, x_cl + l * C, C);
              if (touches && l >= band_lo && l < band_hi) {
                acc_t* dst = gx_cl + l * C;
                const acc_t we = w[e];
                for (int64_t c = 0; c < C; ++c) dst[c] += we * gj[c];
              }
            }
            if (owner)
              contract_to_grad_attn(g, tz, ty, tx, z, y, j, dots.data(), s1.data(), s2.data(), ga + n * g.taps() * P + pix + j);
          }
        }
    }
  });
}

// x as (N, d*h*w, C) contiguous in the accumulation type (fp32 for half inputs).
at::Tensor channels_last_acc(const at::Tensor& x) {
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return x.permute({0, 2, 3, 4, 1}).to(acc).contiguous();
}

at::Tensor forward_cpu(const at::Tensor& attn_in, const at::Tensor& x_in, int64_t kernel_depth, bool /*deterministic*/) {
  const Geometry g = make_geometry(attn_in, x_in, kernel_depth);
  const at::Tensor attn = attn_in.contiguous(), x_cl = channels_last_acc(x_in);
  at::Tensor out = at::empty({g.N, g.C, g.D, g.H, g.W}, x_in.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "fns_gather_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_impl<scalar_t>(g, attn.data_ptr<scalar_t>(), x_cl.data_ptr<acc_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_in, const at::Tensor& attn_in, const at::Tensor& x_in,
                                                int64_t kernel_depth, bool /*deterministic: always*/, bool need_attn,
                                                bool need_x) {
  const Geometry g = make_geometry(attn_in, x_in, kernel_depth);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({g.N, g.C, g.D, g.H, g.W}), "fns_gather: grad_out has shape ", grad_in.sizes());
  const at::Tensor attn = attn_in.contiguous(), x_cl = channels_last_acc(x_in);
  const at::Tensor go = grad_in.to(x_in.scalar_type()).contiguous();
  // A gradient that is not needed is returned empty (numel 0) and never computed.
  at::Tensor grad_attn = need_attn ? at::empty(attn.sizes(), attn.options().memory_format(at::MemoryFormat::Contiguous))
                                   : at::empty({0}, attn.options());
  at::Tensor gx_cl = need_x ? at::empty_like(x_cl) : at::empty({0}, x_cl.options());
  if (need_attn || need_x) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "fns_gather_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_impl<scalar_t>(g, go.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), x_cl.data_ptr<acc_t>(),
                              need_attn ? grad_attn.data_ptr<scalar_t>() : nullptr, need_x ? gx_cl.data_ptr<acc_t>() : nullptr);
    });
  }
  at::Tensor grad_x = need_x ? gx_cl.permute({0, 4, 1, 2, 3}).to(x_in.scalar_type()).contiguous() : at::empty({0}, x_in.options());
  return {grad_attn, grad_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(resfu_med, CPU, m) {
  m.impl("fns_gather_forward", &forward_cpu);
  m.impl("fns_gather_backward", &backward_cpu);
}

}  // namespace fns
}  // namespace resfu_med
