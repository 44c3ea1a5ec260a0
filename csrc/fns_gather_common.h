// Sampling geometry of the FNS gather (SPEC §1), shared by the CPU and CUDA kernels so they cannot disagree.
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
  acc_t v[2];
  for (int q = 0; q < 2; ++q) {
    const scalar_t* r0 = planes[q] + ty.lo * g.w;
    const scalar_t* r1 = planes[q] + ty.hi * g.w;
    const acc_t v0 = (acc_t(1) - fx) * static_cast<acc_t>(r0[tx.lo]) + fx * static_cast<acc_t>(r0[tx.hi]);
    const acc_t v1 = (acc_t(1) - fx) * static_cast<acc_t>(r1[tx.lo]) + fx * static_cast<acc_t>(r1[tx.hi]);
    v[q] = (acc_t(1) - fy) * v0 + fy * v1;
  }
  return (acc_t(1) - fz) * v[0] + fz * v[1];
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

// grad_x[n, c, l] gathered (no atomics, fixed order) from the HR pixels whose taps touch LR element l.
// `goc` = grad_out[n, c], `at` = attn[n, 0].
template <typename scalar_t, typename acc_t>
RESFU_HD acc_t grad_x_gather_element(const Geometry& g, const scalar_t* goc, const scalar_t* at, int64_t l) {
  const int64_t P = g.hr_plane(), rz = (g.kd - 1) / 2, r = (g.k - 1) / 2;
  const int64_t lx = l % g.w, ly = (l / g.w) % g.h, lz = l / (g.w * g.h);
  int64_t fz, ez, fy, ey, fx, ex;
  hr_range(lz, g.d, g.D, rz, &fz, &ez);
  hr_range(ly, g.h, g.H, r, &fy, &ey);
  hr_range(lx, g.w, g.W, r, &fx, &ex);
  acc_t sum = acc_t(0);
  for (int64_t iz = fz; iz <= ez; ++iz) {
    for (int64_t iy = fy; iy <= ey; ++iy) {
      for (int64_t ix = fx; ix <= ex; ++ix) {
        const int64_t p = (iz * g.H + iy) * g.W + ix;
        const acc_t gv = static_cast<acc_t>(goc[p]);
        int64_t t = 0;
        for (int64_t a = -rz; a <= rz; ++a) {
          const acc_t wz = static_cast<acc_t>(tap_weight(axis_tap(iz, a, g.d, g.sd), lz));
          if (wz == acc_t(0)) {
            t += g.k * g.k;
            continue;
          }
          for (int64_t b = -r; b <= r; ++b) {
            const acc_t wy = static_cast<acc_t>(tap_weight(axis_tap(iy, b, g.h, g.sh), ly));
            if (wy == acc_t(0)) {
              t += g.k;
              continue;
            }
            for (int64_t c = -r; c <= r; ++c, ++t) {
              const acc_t wx = static_cast<acc_t>(tap_weight(axis_tap(ix, c, g.w, g.sw), lx));
              if (wx != acc_t(0)) sum += gv * static_cast<acc_t>(at[t * P + p]) * (wz * wy * wx);
            }
          }
        }
      }
    }
  }
  return sum;
}

}  // namespace fns
}  // namespace resfu_med
