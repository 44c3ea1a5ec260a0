// Sampling geometry of the FNS gather (docs/fns_operator.md), shared by the CPU and CUDA kernels so they cannot disagree.
//
// One spatial axis at a time: HR index i, neighbour offset a (whole LR pixels), LR length `in`, HR length `out`:
//   u = (i + 0.5) * in / out - 0.5 + a, clamped to [0, in - 1];  lo = floor(u), hi = min(lo + 1, in - 1),
//   weights (1 - (u - lo)) on lo and (u - lo) on hi.
// The coordinate is computed in double with the same operation order as the Python reference, so non-integer ratios
// (14 -> 32, 5 -> 17) are exact and identical everywhere. Clamping u (not the taps) is what gives the last LR
// row/column its full weight, and therefore its gradient.
// A 2D op is the 3D op with depth 1 (one slice, one depth offset): every kernel is written for three axes.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RESFU_HD __host__ __device__ __forceinline__
#else
#define RESFU_HD inline
#endif

namespace resfu_med {
namespace fns {

// The two linear taps of one axis.
struct AxisTap {
  int64_t lo;
  int64_t hi;
  double frac;  // weight of `hi`; `lo` gets 1 - frac
};

// LR-per-HR scale of one axis, as the reference computes it (in / out in double).
RESFU_HD double axis_scale(int64_t in, int64_t out) {
  return static_cast<double>(in) / static_cast<double>(out);
}

RESFU_HD AxisTap axis_tap(int64_t i, int64_t offset, int64_t in, double scale) {
  double u = (static_cast<double>(i) + 0.5) * scale - 0.5 + static_cast<double>(offset);
  const double top = static_cast<double>(in - 1);
  u = u < 0.0 ? 0.0 : (u > top ? top : u);
  int64_t lo = static_cast<int64_t>(::floor(u));
  lo = lo > in - 1 ? in - 1 : lo;
  const int64_t hi = lo + 1 < in ? lo + 1 : in - 1;
  AxisTap tap;
  tap.lo = lo;
  tap.hi = hi;
  tap.frac = u - static_cast<double>(lo);
  return tap;
}

// True when the axis coordinate is exact in float32, hence equal to the float64 one: the LR-per-HR scale is a power
// of two (out = in * 2^m) and every intermediate value ((i + 0.5) * scale - 0.5 + a) is a multiple of 2^-(m+1) below
// 2^22. Integer ratios 2, 4, 8 (TransUNet, U-Nets) take this path; all others stay in float64.
RESFU_HD bool axis_exact_f32(int64_t in, int64_t out) {
  if (in <= 0 || out % in != 0) return false;
  const int64_t r = out / in;
  return (r & (r - 1)) == 0 && out < (int64_t(1) << 21);
}

// axis_tap with the coordinate in float32 where that is exact (cheap on GPUs with weak float64), float64 otherwise.
RESFU_HD AxisTap axis_tap_auto(int64_t i, int64_t offset, int64_t in, double scale, bool exact_f32) {
  if (!exact_f32) return axis_tap(i, offset, in, scale);
  float u = (static_cast<float>(i) + 0.5f) * static_cast<float>(scale) - 0.5f + static_cast<float>(offset);
  const float top = static_cast<float>(in - 1);
  u = u < 0.0f ? 0.0f : (u > top ? top : u);
  int64_t lo = static_cast<int64_t>(::floorf(u));
  lo = lo > in - 1 ? in - 1 : lo;
  AxisTap tap;
  tap.lo = lo;
  tap.hi = lo + 1 < in ? lo + 1 : in - 1;
  tap.frac = static_cast<double>(u - static_cast<float>(lo));
  return tap;
}

// Total weight that the tap puts on LR index l (lo and hi coincide at the clamped border).
RESFU_HD double tap_weight(const AxisTap& tap, int64_t l) {
  return (tap.lo == l ? 1.0 - tap.frac : 0.0) + (tap.hi == l ? tap.frac : 0.0);
}

// Conservative range [first, last] of HR indices whose taps (any offset in [-radius, radius]) can touch LR index l.
// Used by the deterministic gather backward: every pixel outside the range has zero weight on l.
RESFU_HD void hr_range(int64_t l, int64_t in, int64_t out, int64_t radius, int64_t* first, int64_t* last) {
  const double inv = static_cast<double>(out) / static_cast<double>(in);
  // u in [l - 1, l + 1] is needed; u = base + a with |a| <= radius and base = (i + 0.5) * in / out - 0.5.
  const double base_lo = static_cast<double>(l - 1 - radius) - 1.0;
  const double base_hi = static_cast<double>(l + 1 + radius) + 1.0;
  int64_t f = static_cast<int64_t>(::floor((base_lo + 0.5) * inv - 0.5));
  int64_t e = static_cast<int64_t>(::ceil((base_hi + 0.5) * inv - 0.5));
  if (l == 0 || f < 0) f = 0;  // clamped-at-0 samples all land on LR index 0
  if (l == in - 1 || e > out - 1) e = out - 1;  // clamped-at-top samples all land on the last LR index
  *first = f;
  *last = e;
}

// Shapes of one call: attn (N, Kd*K*K, D, H, W), x (N, C, d, h, w); Kd = 1 for the 2D op.
struct Geometry {
  int64_t N, C, D, H, W, d, h, w, kd, k;
  double sd, sh, sw;
  bool ed, eh, ew;  // axis_exact_f32 per axis
  RESFU_HD int64_t taps() const { return kd * k * k; }
  RESFU_HD int64_t hr_plane() const { return D * H * W; }
  RESFU_HD int64_t lr_plane() const { return d * h * w; }
};

// ---- Per-element formulas of the CUDA kernels. Kept here (host + device) so the CPU extension can run the very same
// code in a test-only op (fns_gather_elementwise) and the CUDA maths is checked on machines without a GPU.

// Trilinear sample of one LR channel plane `xc` at the taps of the three axes.
template <typename scalar_t, typename acc_t>
RESFU_HD acc_t sample(const scalar_t* xc, const Geometry& g, const AxisTap& tz, const AxisTap& ty, const AxisTap& tx) {
  const acc_t fz = static_cast<acc_t>(tz.frac), fy = static_cast<acc_t>(ty.frac), fx = static_cast<acc_t>(tx.frac);
  const int64_t hw = g.h * g.w;
  const scalar_t* planes[2] = {xc + tz.lo * hw, xc + tz.hi * hw};
  acc_t v[2] = {acc_t(0), acc_t(0)};
  const int nq = tz.frac != 0.0 ? 2 : 1;  // the hi plane has weight 0 (always in 2D): skip its reads
  for (int q = 0; q < nq; ++q) {
    const scalar_t* r0 = planes[q] + ty.lo * g.w;
    const scalar_t* r1 = planes[q] + ty.hi * g.w;
    const acc_t v0 = (acc_t(1) - fx) * static_cast<acc_t>(r0[tx.lo]) + fx * static_cast<acc_t>(r0[tx.hi]);
    const acc_t v1 = (acc_t(1) - fx) * static_cast<acc_t>(r1[tx.lo]) + fx * static_cast<acc_t>(r1[tx.hi]);
    v[q] = (acc_t(1) - fy) * v0 + fy * v1;
  }
  return nq == 1 ? v[0] : (acc_t(1) - fz) * v[0] + fz * v[1];
}

// out[n, c, p]: sum over the Kd*K*K neighbours of attn * sample. `xc` = x[n, c], `at` = attn[n, 0] (taps P apart).
template <typename scalar_t, typename acc_t>
RESFU_HD acc_t forward_element(const Geometry& g, const scalar_t* xc, const scalar_t* at, int64_t p) {
  const int64_t P = g.hr_plane(), rz = (g.kd - 1) / 2, r = (g.k - 1) / 2;
  const int64_t ix = p % g.W, iy = (p / g.W) % g.H, iz = p / (g.W * g.H);
  acc_t sum = acc_t(0);
  int64_t t = 0;
  for (int64_t a = -rz; a <= rz; ++a) {
    const AxisTap tz = axis_tap(iz, a, g.d, g.sd);
    for (int64_t b = -r; b <= r; ++b) {
      const AxisTap ty = axis_tap(iy, b, g.h, g.sh);
      for (int64_t c = -r; c <= r; ++c, ++t) {
        const AxisTap tx = axis_tap(ix, c, g.w, g.sw);
        sum += static_cast<acc_t>(at[t * P + p]) * sample<scalar_t, acc_t>(xc, g, tz, ty, tx);
      }
    }
  }
  return sum;
}

// grad_attn[n, t, p] = sum_c grad_out[n, c, p] * sample_t(x[n, c]). `gon` = grad_out[n], `xn` = x[n].
template <typename scalar_t, typename acc_t>
RESFU_HD acc_t grad_attn_element(const Geometry& g, const scalar_t* gon, const scalar_t* xn, int64_t t, int64_t p) {
  const int64_t P = g.hr_plane(), Q = g.lr_plane(), rz = (g.kd - 1) / 2, r = (g.k - 1) / 2;
  const int64_t ix = p % g.W, iy = (p / g.W) % g.H, iz = p / (g.W * g.H);
  const AxisTap tz = axis_tap(iz, t / (g.k * g.k) - rz, g.d, g.sd);
  const AxisTap ty = axis_tap(iy, (t / g.k) % g.k - r, g.h, g.sh);
  const AxisTap tx = axis_tap(ix, t % g.k - r, g.w, g.sw);
  acc_t sum = acc_t(0);
  for (int64_t c = 0; c < g.C; ++c) {
    sum += static_cast<acc_t>(gon[c * P + p]) * sample<scalar_t, acc_t>(xn + c * Q, g, tz, ty, tx);
  }
  return sum;
}

// ---- Per-pixel formulas of the CUDA kernels (K <= kMaxAxisTaps): the taps of one HR pixel are computed once and
// reused for a range of channels, instead of once per (channel, neighbour). Larger K uses the per-element forward.
constexpr int kMaxAxisTaps = 9;

struct PixelTaps {
  AxisTap z[kMaxAxisTaps], y[kMaxAxisTaps], x[kMaxAxisTaps];
};

RESFU_HD void pixel_taps(const Geometry& g, int64_t p, PixelTaps* tp) {
  const int64_t rz = (g.kd - 1) / 2, r = (g.k - 1) / 2;
  const int64_t ix = p % g.W, iy = (p / g.W) % g.H, iz = p / (g.W * g.H);
  for (int64_t a = 0; a < g.kd; ++a) tp->z[a] = axis_tap_auto(iz, a - rz, g.d, g.sd, g.ed);
  for (int64_t b = 0; b < g.k; ++b) tp->y[b] = axis_tap_auto(iy, b - r, g.h, g.sh, g.eh);
  for (int64_t c = 0; c < g.k; ++c) tp->x[c] = axis_tap_auto(ix, c - r, g.w, g.sw, g.ew);
}

// out[n, c, p] for channels [c0, c1) of HR pixel p. `xn` = x[n], `at` = attn[n, 0], `outn` = out[n].
template <typename scalar_t, typename acc_t>
RESFU_HD void forward_pixel(const Geometry& g, const scalar_t* xn, const scalar_t* at, int64_t p, int64_t c0, int64_t c1,
                            scalar_t* outn) {
  PixelTaps tp;
  pixel_taps(g, p, &tp);
  const int64_t P = g.hr_plane(), Q = g.lr_plane();
  for (int64_t ch = c0; ch < c1; ++ch) {
    const scalar_t* xc = xn + ch * Q;
    acc_t sum = acc_t(0);
    int64_t t = 0;
    for (int64_t a = 0; a < g.kd; ++a)
      for (int64_t b = 0; b < g.k; ++b)
        for (int64_t c = 0; c < g.k; ++c, ++t)
          sum += static_cast<acc_t>(at[t * P + p]) * sample<scalar_t, acc_t>(xc, g, tp.z[a], tp.y[b], tp.x[c]);
    outn[ch * P + p] = static_cast<scalar_t>(sum);
  }
}

// Scatter of grad_out[n, c, p] * attn * (interpolation weight) into grad_x[n, c] for channels [c0, c1) of HR pixel p.
// `add(ptr, value)` is atomicAdd on CUDA and += in the CPU mirror. Zero-weight corners (a tap with frac 0, e.g. the
// depth axis of every 2D call) are skipped. `gon` = grad_out[n], `gxn` = grad_x[n].
template <typename scalar_t, typename acc_t, typename Add>
RESFU_HD void grad_x_scatter_pixel(const Geometry& g, const scalar_t* gon, const scalar_t* at, int64_t p, int64_t c0,
                                   int64_t c1, acc_t* gxn, Add add) {
  PixelTaps tp;
  pixel_taps(g, p, &tp);
  const int64_t P = g.hr_plane(), Q = g.lr_plane(), hw = g.h * g.w;
  int64_t t = 0;
  for (int64_t a = 0; a < g.kd; ++a) {
    const AxisTap& tz = tp.z[a];
    const int nz = tz.frac != 0.0 ? 2 : 1;
    const acc_t wz[2] = {acc_t(1) - static_cast<acc_t>(tz.frac), static_cast<acc_t>(tz.frac)};
    const int64_t zi[2] = {tz.lo * hw, tz.hi * hw};
    for (int64_t b = 0; b < g.k; ++b) {
      const AxisTap& ty = tp.y[b];
      const int ny = ty.frac != 0.0 ? 2 : 1;
      const acc_t wy[2] = {acc_t(1) - static_cast<acc_t>(ty.frac), static_cast<acc_t>(ty.frac)};
      const int64_t yi[2] = {ty.lo * g.w, ty.hi * g.w};
      for (int64_t c = 0; c < g.k; ++c, ++t) {
        const AxisTap& tx = tp.x[c];
        const int nx = tx.frac != 0.0 ? 2 : 1;
        const acc_t wx[2] = {acc_t(1) - static_cast<acc_t>(tx.frac), static_cast<acc_t>(tx.frac)};
        const int64_t xi[2] = {tx.lo, tx.hi};
        const acc_t w_at = static_cast<acc_t>(at[t * P + p]);
        for (int64_t ch = c0; ch < c1; ++ch) {
          const acc_t s = static_cast<acc_t>(gon[ch * P + p]) * w_at;
          acc_t* gc = gxn + ch * Q;
          for (int q = 0; q < nz; ++q)
            for (int m = 0; m < ny; ++m)
              for (int e = 0; e < nx; ++e) add(gc + zi[q] + yi[m] + xi[e], s * wz[q] * wy[m] * wx[e]);
        }
      }
    }
  }
}

// grad_x[n, c, l] for up to CH channels [c0, c1) of LR element l, gathered (no atomics, fixed order) from the HR
// pixels whose taps touch l: the weights of each (pixel, neighbour) are computed once for all CH channels.
template <typename scalar_t, typename acc_t, int CH>
RESFU_HD void grad_x_gather_channels(const Geometry& g, const scalar_t* gon, const scalar_t* at, int64_t l, int64_t c0,
                                     int64_t c1, acc_t* gxn) {
  const int64_t P = g.hr_plane(), Q = g.lr_plane(), rz = (g.kd - 1) / 2, r = (g.k - 1) / 2;
  const int64_t lx = l % g.w, ly = (l / g.w) % g.h, lz = l / (g.w * g.h);
  int64_t fz, ez, fy, ey, fx, ex;
  hr_range(lz, g.d, g.D, rz, &fz, &ez);
  hr_range(ly, g.h, g.H, r, &fy, &ey);
  hr_range(lx, g.w, g.W, r, &fx, &ex);
  const int64_t nch = c1 - c0 < CH ? c1 - c0 : CH;
  acc_t sum[CH];
  for (int k = 0; k < CH; ++k) sum[k] = acc_t(0);
  for (int64_t iz = fz; iz <= ez; ++iz)
    for (int64_t iy = fy; iy <= ey; ++iy)
      for (int64_t ix = fx; ix <= ex; ++ix) {
        const int64_t p = (iz * g.H + iy) * g.W + ix;
        int64_t t = 0;
        for (int64_t a = -rz; a <= rz; ++a) {
          const acc_t wz = static_cast<acc_t>(tap_weight(axis_tap_auto(iz, a, g.d, g.sd, g.ed), lz));
          if (wz == acc_t(0)) {
            t += g.k * g.k;
            continue;
          }
          for (int64_t b = -r; b <= r; ++b) {
            const acc_t wy = static_cast<acc_t>(tap_weight(axis_tap_auto(iy, b, g.h, g.sh, g.eh), ly));
            if (wy == acc_t(0)) {
              t += g.k;
              continue;
            }
            for (int64_t c = -r; c <= r; ++c, ++t) {
              const acc_t wx = static_cast<acc_t>(tap_weight(axis_tap_auto(ix, c, g.w, g.sw, g.ew), lx));
              if (wx == acc_t(0)) continue;
              const acc_t aw = static_cast<acc_t>(at[t * P + p]) * (wz * wy * wx);
              for (int64_t k = 0; k < nch; ++k) sum[k] += static_cast<acc_t>(gon[(c0 + k) * P + p]) * aw;
            }
          }
        }
      }
  for (int64_t k = 0; k < nch; ++k) gxn[(c0 + k) * Q + l] = sum[k];
}

}  // namespace fns
}  // namespace resfu_med
