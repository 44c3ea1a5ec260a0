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

}  // namespace fns
}  // namespace resfu_med
