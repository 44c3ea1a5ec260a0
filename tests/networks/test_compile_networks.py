"""Train steps of ReSFU networks compiled as users compile them: ``torch.compile(model, fullgraph=True)`` with the
DEFAULT backend (inductor), forward + backward + optimiser step, equal to the same steps run eagerly.

Regression (issue 25): a channels-last BasicUNet+ReSFU train step crashed in backward with ``assert_size_stride`` on
``aten.replication_pad2d_backward``; the ReSFU blocks now pad by clamped ``index_select``
(:func:`resfu_med.networks.blocks.padding.replicate_pad`).

The matrix is TransUNet (small config) × BasicUNet × DynUNet, channels-first and channels-last, batch 1 and 2 (12
cases). Each case compiles a forward and a backward graph, about 5 CPU-minutes on the 2-core development machine, so
CI runs one case per network (together covering both memory formats and both batch sizes, and the case that crashed);
``RESFU_MED_COMPILE_MATRIX=1`` runs all 12 (the by-hand result is in docs/training.md, "torch.compile").
The ``aot_eager`` checks stay in tests/networks/test_resfu_reference.py and tests/ops/test_fns_backend.py.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks import BasicUNet, DynUNet, TransUNet
from resfu_med.ops import build

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not build.available("cpu", warn=False), reason="C++ extension not built")]

SLIM = dict(embed_dim=8, pcdc_channels=16, gf_radius=4, compressor_channels=16)
LITE = dict(img_size=32, vit_depth=1, hidden_size=32, mlp_dim=64, num_heads=2, resnet_layers=(1, 1, 1),
            resnet_width=32, head_channels=32, decoder_channels=(16, 16, 8, 8), dropout_rate=0.0)


def _transunet() -> torch.nn.Module:
    return TransUNet(3, in_channels=3, upsampler="resfu", upsampler_kwargs=SLIM, **LITE)


def _basic_unet() -> torch.nn.Module:
    return BasicUNet(2, 1, 3, features=(8, 8, 16, 16, 32, 8), upsampler="resfu", upsampler_kwargs=SLIM)


def _dynunet() -> torch.nn.Module:
    return DynUNet(2, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[8, 16, 32],
                   upsampler="resfu", upsampler_kwargs=SLIM)


NETS = {"transunet": (_transunet, 3, 32), "basic_unet": (_basic_unet, 1, 32), "dynunet": (_dynunet, 1, 16)}
# One case per network in CI: the crash case (BasicUNet, channels-last, batch 2), and both other formats/batches.
CI_CASES = {("basic_unet", 2, True), ("transunet", 1, False), ("dynunet", 1, True)}
FULL = os.environ.get("RESFU_MED_COMPILE_MATRIX", "") == "1"


def _cases():
    for name in NETS:
        for channels_last in (False, True):
            for batch in (1, 2):
                marks = () if FULL or (name, batch, channels_last) in CI_CASES else pytest.mark.skip(
                    reason="full compile matrix: set RESFU_MED_COMPILE_MATRIX=1 (about 5 CPU-minutes per case)")
                yield pytest.param(name, batch, channels_last, marks=marks,
                                   id=f"{name}-{'cl' if channels_last else 'cf'}-b{batch}")


def _train_steps(step_model: torch.nn.Module, params_of: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                 steps: int = 2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``steps`` SGD steps (forward, cross-entropy, backward, update) through ``step_model``; the losses and the
    weights after them (read from ``params_of``, the uncompiled module that owns the parameters)."""
    opt = torch.optim.SGD(params_of.parameters(), lr=1e-2, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(step_model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), {k: v.detach().clone() for k, v in params_of.state_dict().items()}


@pytest.mark.parametrize("name,batch,channels_last", list(_cases()))
def test_inductor_fullgraph_train_steps_match_eager(name, batch, channels_last):
    """Compiled float32 steps are as close to the float64 truth as eager float32 steps are.

    A fixed tolerance is the wrong yardstick here: after two momentum-SGD steps, parameters whose gradient is nearly
    cancelled (e.g. ReSFU's query projection) carry float32 rounding of relative size 1 in eager mode too. So both
    float32 runs are measured against the same steps in float64 (where compiled and eager agree to 1e-15), and the
    compiled run's error may be at most ten times eager's own (a wrong stride or formula is off by far more).
    """
    torch._dynamo.reset()
    build_net, in_channels, size = NETS[name]
    torch.manual_seed(0)
    eager = build_net().train()
    twin, truth = copy.deepcopy(eager), copy.deepcopy(eager).double()
    x = torch.randn(batch, in_channels, size, size)
    target = torch.randint(0, 3, (batch, size, size))
    if channels_last:
        eager, twin, truth = (m.to(memory_format=torch.channels_last) for m in (eager, twin, truth))
        x = x.contiguous(memory_format=torch.channels_last)
    true_losses, true_state = _train_steps(truth, truth, x.double(), target)
    eager_losses, eager_state = _train_steps(eager, eager, x, target)
    compiled = torch.compile(twin, fullgraph=True)  # the default backend: inductor
    got_losses, got_state = _train_steps(compiled, twin, x, target)
    torch.testing.assert_close(got_losses, eager_losses, rtol=1e-4, atol=1e-5)
    assert got_state.keys() == eager_state.keys()
    for key, true in true_state.items():
        eager_error = (eager_state[key].double() - true).abs().max().item()
        compiled_error = (got_state[key].double() - true).abs().max().item()
        assert compiled_error <= 10 * eager_error + 1e-5, (
            f"{key}: compiled float32 is {compiled_error:.3g} from float64, eager float32 {eager_error:.3g}")
