"""ReSFU: Refreshed Similarity-based Feature Upsampler (Zhou et al. 2024; docs/resfu_module.md), 2D and 3D.

Upsamples a low-resolution deep feature ``x`` ``(N, C, *LR)`` to the size of a high-resolution guidance feature ``guide``
``(N, c, *HR)`` in one step, at any ratio ≥ 1 per axis. See ``docs/resfu_module.md`` for the step-by-step forward pass
with shapes and the choices the paper leaves open.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from monai.utils import look_up_option
from torch import nn
from torch.utils.checkpoint import checkpoint

from resfu_med.networks.blocks.gaussian import GaussianSmoothing
from resfu_med.networks.blocks.guided_filter import GuidedFilter
from resfu_med.networks.blocks.inner_product import InnerProductSimilarity
from resfu_med.networks.blocks.linear_upsample import upsample_linear
from resfu_med.networks.blocks.lr_gather import lr_neighbour_gather
from resfu_med.networks.blocks.norm import group_norm
from resfu_med.networks.blocks.pcdc import (
    PCDC,
    PCDCBlock,
    compress_sum,
    group_norm_then_conv,
    group_norm_with_stats_of,
    integer_ratios,
)
from resfu_med.ops import fns_gather

__all__ = ["ReSFU", "border_mask", "upsampling_dilation", "pcdc_parameter_groups"]

SIMILARITIES = ("pcdc", "inner_product")


def upsampling_dilation(hr_size: Sequence[int], lr_size: Sequence[int]) -> tuple[int, ...]:
    """Per-axis neighbour spacing ``s`` at HR: the ratio ``H / h`` when integer, else ``⌊H / h + 0.5⌋`` (half up).

    Raises:
        ValueError: if an HR axis is shorter than its LR axis (downsampling is not upsampling).
    """
    if len(hr_size) != len(lr_size) or any(H < h or h < 1 for H, h in zip(hr_size, lr_size)):
        raise ValueError(f"ReSFU needs HR size >= LR size >= 1 per axis, got HR {tuple(hr_size)}, LR {tuple(lr_size)}")
    return tuple(H // h if H % h == 0 else int(H / h + 0.5) for H, h in zip(hr_size, lr_size))


def _prescale(t: torch.Tensor) -> torch.Tensor:
    """``t`` scaled per sample by a power of two bringing its largest magnitude under 2**16; ``t`` itself (no copy) when
    no sample needs it.

    GroupNorm sums squares: in float32 it overflows (NaN output) from magnitudes ~1e19 and in bfloat16 near its maximum.
    It is scale invariant (up to its eps, negligible at such magnitudes), and a power of two only changes exponents, so
    the normalised result is the same while huge inputs stay finite. One pass finds the extremes (``aminmax``: no
    ``abs`` copy). On CPU (eager) the extremes of the whole batch decide first: when no magnitude exceeds 2**16 (the
    common case) ``t`` comes back unchanged after that one pass, skipping the per-sample arithmetic and a guide-sized
    copy that autograd would also keep. Elsewhere (and while compiling) the per-sample multiply always runs, so there
    is no host sync and no data-dependent branch.
    """
    eager_cpu = t.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
    if eager_cpu:
        lo, hi = torch.aminmax(t.detach())
        if max(-float(lo), float(hi)) <= 2.0**16:  # False for NaN: the per-sample path below decides, as before
            return t
    lo, hi = t.detach().flatten(1).aminmax(dim=1)
    amax = torch.maximum(hi, -lo).float().clamp_min(1.0)
    shift = torch.clamp(torch.ceil(torch.log2(amax)) - 16, min=0)
    return t * torch.exp2(-shift).to(t.dtype).view((-1,) + (1,) * (t.dim() - 1))


def _norm_then_project(norm: nn.GroupNorm, proj: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``proj(norm(t))`` (GroupNorm, then a 1×1 convolution) whose autograd keeps ``t`` but not the normalised map
    (:func:`~resfu_med.networks.blocks.pcdc.group_norm_then_conv`)."""
    return group_norm_then_conv(t, norm.num_groups, norm.weight, norm.bias, norm.eps, proj.weight, proj.bias)


def border_mask(hr_size: Sequence[int], dilation: Sequence[int], kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``(1, K^d, *HR)``: True where the neighbour's HR position ``i + s·a`` (per axis) lies inside the image.

    Neighbour index ``t`` is row-major over the per-axis offsets ``a ∈ −R..R`` (first axis slowest), as in FNS (docs/fns_operator.md).
    """
    dims, radius = len(hr_size), kernel_size // 2
    mask = None
    for axis, (size, s) in enumerate(zip(hr_size, dilation)):
        offsets = torch.arange(-radius, radius + 1, device=device) * s
        pos = torch.arange(size, device=device).unsqueeze(0) + offsets.unsqueeze(1)  # (K, size)
        valid = (pos >= 0) & (pos < size)
        shape = [1] * (2 * dims)
        shape[axis], shape[dims + axis] = kernel_size, size
        valid = valid.view(shape)
        mask = valid if mask is None else mask & valid
    return mask.reshape(1, kernel_size**dims, *hr_size)


@lru_cache(maxsize=16)
def _outside_mask(hr_size: tuple[int, ...], dilation: tuple[int, ...], kernel_size: int, device: torch.device) -> torch.Tensor:
    """``~border_mask(...)``, built once per shape and device: a constant that each forward would otherwise rebuild
    with ~15 small operations (kernel launches on a GPU). Read-only: ``masked_fill`` only reads it. The 16 most recent
    shapes are kept (a network's decoder levels at a few input sizes; one bool per neighbour and HR voxel each,
    e.g. 54 MiB for a 3D step at 128³), so inference over many slice sizes cannot grow it without bound."""
    return ~border_mask(hr_size, dilation, kernel_size, device)


class ReSFU(nn.Module):
    """Refreshed Similarity-based Feature Upsampler (paper §4, docs/resfu_module.md), dimension-generic (2D / 3D).

    Forward: GroupNorm both inputs; project the guide to the HR query ``q`` and ``x`` to the LR key ``k`` (1×1 convs,
    ``D`` channels); ``k̃`` = linear upsampling of ``k``; semantic query ``q_GF`` = fast guided filter of ``k̃`` guided by
    ``q``; detail key ``q_GS`` = Gaussian-smoothed ``q``; scores = PCDC block(``q_GF`` vs ``k̃``) + PCDC block(``q`` vs
    ``q_GS``) with neighbours at dilation ``s`` (the ratio); out-of-image neighbours masked; softmax over ``K^d``; the
    output is the fused FNS gather of the raw ``x`` (docs/fns_operator.md).

    Args:
        in_channels: channels ``C`` of the LR feature ``x`` (and of the output).
        guide_channels: channels ``c`` of the HR guidance.
        kernel_size: neighbourhood ``K`` (odd).
        embed_dim: projection channels ``D``.
        groups: PCDC groups ``G`` (divides ``D`` and ``pcdc_channels``).
        pcdc_channels: PCDC output channels ``L`` (release: 128; the paper's text says 32).
        gf_radius: guided-filter radius at HR (halved by the fast filter).
        gf_eps: guided-filter regulariser.
        spatial_dims: 2 or 3.
        use_guided_filter: ablation switch; False uses ``q`` as the semantic query (paper Table 5 (b)).
        use_gaussian: ablation switch; False uses ``q`` as the detail key (paper Table 5 (d)).
        similarity: ``"pcdc"`` (paper Fig. 5) or ``"inner_product"`` (paper eq. 3, Table 6 (a)).
        fine_grained: FNS; False selects grid-wise LR neighbours for the semantic key (nearest-upsampled ``k``) and for
            the value (:func:`~resfu_med.networks.blocks.lr_gather.lr_neighbour_gather`), paper Table 7 "w/o FNS".
        fast_guided_filter: compute the guided filter at half resolution (the default) or at full resolution.
        gaussian_sigma: standard deviation of the 3-tap Gaussian.
        compressor_channels: hidden width of the PCDC compressor (128).
        use_checkpoint: recompute each similarity block in the backward pass (saves the ``L``-channel HR activations;
            useful for 3D training).
        recompute_hidden: keep only the first ReLU's output of each PCDC compressor for backward and compute its
            hidden map again there (one grouped 1×1 convolution per block): one hidden-width HR map per block less.
        deterministic: forwarded to ``fns_gather`` (CUDA backward without atomics).
        init_centre_weight: initial softmax weight of the centre neighbour, set through the bias of the semantic
            block's last compressor convolution (``None``: zero bias, near-uniform kernels at initialisation, as the
            release initialises them). The centre neighbour alone is linear upsampling (FNS samples the bilinearly
            upsampled ``x``), so e.g. 0.5 starts ReSFU halfway between bilinear and a 3×3 average of it. PCDC only.

    Example:
        >>> up = ReSFU(in_channels=256, guide_channels=64)
        >>> up(torch.randn(2, 256, 14, 14), torch.randn(2, 64, 56, 56)).shape
        torch.Size([2, 256, 56, 56])
    """

    # Both PCDC blocks in one pass (compress_sum): same values, but measured ~10-20 % slower fwd+bwd on CPU
    # (docs/resfu_module.md), so off by default; a switch for measurements and for accelerators.
    _fuse_blocks = False

    def __init__(
        self,
        in_channels: int,
        guide_channels: int,
        kernel_size: int = 3,
        embed_dim: int = 32,
        groups: int = 4,
        pcdc_channels: int = 128,
        gf_radius: int = 8,
        gf_eps: float = 1e-3,
        spatial_dims: int = 2,
        use_guided_filter: bool = True,
        use_gaussian: bool = True,
        similarity: str = "pcdc",
        fine_grained: bool = True,
        fast_guided_filter: bool = True,
        gaussian_sigma: float = 1.0,
        compressor_channels: int = 128,
        use_checkpoint: bool = False,
        deterministic: bool = False,
        recompute_hidden: bool = False,
        init_centre_weight: float | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1 or guide_channels < 1 or embed_dim < 1:
            raise ValueError(f"channels must be positive, got in={in_channels}, guide={guide_channels}, embed={embed_dim}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.in_channels, self.guide_channels = in_channels, guide_channels
        self.kernel_size, self.embed_dim, self.spatial_dims = kernel_size, embed_dim, spatial_dims
        self.similarity = look_up_option(similarity, SIMILARITIES)
        self.use_guided_filter, self.use_gaussian = bool(use_guided_filter), bool(use_gaussian)
        self.fine_grained, self.use_checkpoint, self.deterministic = bool(fine_grained), bool(use_checkpoint), bool(deterministic)

        conv = Conv[Conv.CONV, spatial_dims]
        self.norm_x = group_norm(in_channels, 32, spatial_dims)
        self.norm_guide = group_norm(guide_channels, 32, spatial_dims)
        self.proj_q = conv(guide_channels, embed_dim, kernel_size=1)
        self.proj_k = conv(in_channels, embed_dim, kernel_size=1)
        for proj in (self.proj_q, self.proj_k):
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)
        self.guided_filter = GuidedFilter(gf_radius, gf_eps, fast=fast_guided_filter) if use_guided_filter else None
        self.gaussian = GaussianSmoothing(embed_dim, spatial_dims, sigma=gaussian_sigma) if use_gaussian else None
        if self.similarity == "pcdc":
            block_args = (embed_dim, pcdc_channels, kernel_size, groups, spatial_dims, compressor_channels)
            self.semantic_block: nn.Module = PCDCBlock(*block_args)
            self.detail_block: nn.Module = PCDCBlock(*block_args)
            for block in (self.semantic_block, self.detail_block):
                block.compressor.recompute_hidden = bool(recompute_hidden)
            if init_centre_weight is not None:
                self._init_centre(float(init_centre_weight))
        else:
            if init_centre_weight is not None:
                raise ValueError(f"init_centre_weight needs similarity='pcdc' (a bias to set), got similarity={similarity!r}")
            self.semantic_block = InnerProductSimilarity(embed_dim, kernel_size, spatial_dims)
            self.detail_block = InnerProductSimilarity(embed_dim, kernel_size, spatial_dims)

    def _init_centre(self, weight: float) -> None:
        """Bias of the centre score so that, with every other score ~0, the softmax gives the centre ``weight``:
        ``e^b / (e^b + T − 1) = weight`` with ``T = K^d`` neighbours."""
        if not 0.0 < weight < 1.0:
            raise ValueError(f"init_centre_weight must lie in (0, 1), got {weight}")
        count = self.kernel_size**self.spatial_dims
        if count == 1:
            return  # a single neighbour has weight 1 whatever its score
        with torch.no_grad():
            self.semantic_block.compressor[4].bias[count // 2] = math.log(weight * (count - 1) / (1.0 - weight))

    def _check(self, x: torch.Tensor, guide: torch.Tensor) -> None:
        rank = self.spatial_dims + 2
        if x.dim() != rank or guide.dim() != rank:
            raise ValueError(f"ReSFU(spatial_dims={self.spatial_dims}): x and guide must be {rank}D, got x {tuple(x.shape)}, guide {tuple(guide.shape)}")
        if x.shape[1] != self.in_channels or guide.shape[1] != self.guide_channels:
            raise ValueError(
                f"ReSFU: expected x with {self.in_channels} and guide with {self.guide_channels} channels, "
                f"got x {tuple(x.shape)}, guide {tuple(guide.shape)}"
            )
        if x.shape[0] != guide.shape[0]:
            raise ValueError(f"ReSFU: batch sizes differ, x {tuple(x.shape)}, guide {tuple(guide.shape)}")
        if x.numel() == 0 or guide.numel() == 0:
            raise ValueError(f"ReSFU: empty input, x {tuple(x.shape)}, guide {tuple(guide.shape)}")

    def _block(self, block, *args) -> torch.Tensor:
        """``block(*args)``; recomputed in the backward pass only with ``use_checkpoint`` (otherwise autograd keeps the
        activations and nothing runs twice)."""
        if self.use_checkpoint and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _pcdc_scores(self, semantic_query, k, k_up, q, detail_key, dilation, ratios) -> torch.Tensor:
        """``semantic_block(q_GF, k̃) + detail_block(q, q_GS)`` in one pass (equal up to rounding).

        For integer ratios the semantic key's PCDC convolution runs at LR (:meth:`PCDC.forward_upsampled_key`; ``k̃``
        only supplies the key's GroupNorm statistics); both blocks' compressors run side by side
        (:func:`~resfu_med.networks.blocks.pcdc.compress_sum`).
        """
        sem, det = self.semantic_block, self.detail_block
        if ratios is not None:
            key_n = group_norm_with_stats_of(sem.norm, k, k_up)
            v_sem = sem.pcdc.forward_upsampled_key(semantic_query, key_n, ratios, query_norm=sem.norm)
        else:
            v_sem = sem.pcdc(semantic_query, k_up, dilation, query_norm=sem.norm, key_norm=sem.norm)
        v_det = det.pcdc(q, detail_key, dilation, query_norm=det.norm, key_norm=det.norm)
        return compress_sum((sem, det), (v_sem, v_det))

    def attention(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Upsampling kernels ``(N, K^d, *HR)`` (float32, or float64 for a float64 model), softmax-normalised over the neighbours, ~0 outside the image.

        Raises:
            ValueError: on wrong ranks, channels, batch sizes, empty tensors or an HR size smaller than the LR size.
        """
        self._check(x, guide)
        hr, lr = tuple(int(s) for s in guide.shape[2:]), tuple(int(s) for s in x.shape[2:])  # ints even when tracing
        dilation = upsampling_dilation(hr, lr)
        q = _norm_then_project(self.norm_guide, self.proj_q, _prescale(guide))  # (N, D, *HR)
        k = _norm_then_project(self.norm_x, self.proj_k, _prescale(x))  # (N, D, *LR)
        k_up = upsample_linear(k, hr)  # its backward: the ×2 stencil adjoint (blocks/linear_upsample.py)
        semantic_query = self.guided_filter(q, k_up) if self.guided_filter is not None else q
        detail_key = self.gaussian(q) if self.gaussian is not None else q
        # Without FNS, the semantic key's neighbours are the LR pixels around each HR pixel's nearest LR parent: the
        # nearest-upsampled key read at dilation s (exact for integer ratios).
        ratios = integer_ratios(hr, lr)
        if self.fine_grained and self.similarity == "pcdc" and self._fuse_blocks:
            scores = self._block(self._pcdc_scores, semantic_query, k, k_up, q, detail_key, dilation, ratios)
        elif self.fine_grained and self.similarity == "pcdc" and ratios is not None:
            scores = self._block(self.semantic_block.forward_upsampled_key, semantic_query, k, k_up, ratios)
            scores = scores + self._block(self.detail_block, q, detail_key, dilation)
        else:
            semantic_key = k_up if self.fine_grained else F.interpolate(k, size=hr, mode="nearest")
            scores = self._block(self.semantic_block, semantic_query, semantic_key, dilation)
            scores = scores + self._block(self.detail_block, q, detail_key, dilation)
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            outside = ~border_mask(hr, dilation, self.kernel_size, scores.device)  # traced as part of the graph
        else:
            outside = _outside_mask(hr, dilation, self.kernel_size, scores.device)
        # finfo.min / 2 instead of a fixed -1e7: representable in fp16/bf16 and cannot overflow to -inf when added to.
        scores = scores.masked_fill(outside, torch.finfo(scores.dtype).min / 2)
        with torch.autocast(device_type=scores.device.type, enabled=False):
            return torch.softmax(scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores, dim=1)

    def gather(self, attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Weighted neighbour sum of the raw ``x`` with ``attn``: FNS (docs/fns_operator.md) or, without FNS, LR neighbours.

        Runs with float32 accumulation whatever the autocast state; the result has ``x``'s dtype.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            value = x if x.dtype in (torch.float32, torch.float64) else x.float()
            weights = attn.to(value.dtype)
            if self.fine_grained:
                out = fns_gather(weights, value, deterministic=self.deterministic)
            else:
                out = lr_neighbour_gather(weights, value)
        return out.to(x.dtype)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` ``(N, C, *LR)`` to ``guide``'s spatial size; returns ``(N, C, *HR)`` in ``x``'s dtype."""
        return self.gather(self.attention(x, guide), x)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, guide_channels={self.guide_channels}, kernel_size={self.kernel_size}, "
            f"embed_dim={self.embed_dim}, spatial_dims={self.spatial_dims}, similarity={self.similarity!r}, "
            f"fine_grained={self.fine_grained}"
        )


def pcdc_parameter_groups(model: nn.Module, lr: float, pcdc_lr_mult: float = 1.0, **group_options) -> list[dict]:
    """Optimizer parameter groups giving every PCDC weight in ``model`` the learning rate ``lr · pcdc_lr_mult``.

    The authors' release trains PCDC weights with a large learning-rate multiplier; resfu-med keeps it off by default
    (``pcdc_lr_mult=1``). Works on any model containing ReSFU modules (e.g. a whole TransUNet).

    Args:
        model: the network.
        lr: base learning rate of all other parameters.
        pcdc_lr_mult: multiplier for the PCDC convolution weights (not their biases).
        group_options: extra options copied into both groups (e.g. ``weight_decay``).

    Returns:
        ``[{"params": others, "lr": lr}, {"params": pcdc_weights, "lr": lr * pcdc_lr_mult}]`` (empty groups dropped).

    Example:
        >>> opt = torch.optim.SGD(pcdc_parameter_groups(model, 0.01, pcdc_lr_mult=10.0), lr=0.01, momentum=0.9)
    """
    pcdc_ids = {id(m.weight) for m in model.modules() if isinstance(m, PCDC)}
    pcdc, others = [], []
    for p in model.parameters():
        if p.requires_grad:
            (pcdc if id(p) in pcdc_ids else others).append(p)
    groups = [{"params": others, "lr": lr, **group_options}, {"params": pcdc, "lr": lr * pcdc_lr_mult, **group_options}]
    return [g for g in groups if g["params"]]
