"""Bit-identity guard: with identical weights, ``TransUNet(upsampler="bilinear")`` computes what the official model
computes (Beckschen/TransUNet ``networks/vit_seg_modeling.py`` ``VisionTransformer``).

``fixtures/transunet_official_lite.npz`` was made once by running the official code (not part of this repository) on a
small R50-ViT configuration — ``resnet.num_layers=(2, 1, 2)``, ``width_factor=0.5``, ``hidden_size=64``, 2 layers of 4
heads, ``mlp_dim=128``, ``decoder_channels=(32, 32, 16, 16)``, ``skip_channels=[256, 128, 32, 16]``, ``n_skip=3``, 2
classes, 64² input — with weights drawn from ``numpy.random.default_rng(2021)`` in the official ``state_dict`` order
(rule below). It holds the official parameter names and shapes, the input, the logits, the encoder output after
``encoder_norm`` and samples of the three skip features. Here the same weights are regenerated, moved onto this
package's parameter names by an independent key map, and every output must agree to float32 rounding.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from resfu_med.networks import TransUNet

FIXTURE = Path(__file__).parent / "fixtures" / "transunet_official_lite.npz"
CONFIG = dict(img_size=64, vit_depth=2, hidden_size=64, mlp_dim=128, num_heads=4, resnet_layers=(2, 1, 2),
              resnet_width=32, head_channels=512, decoder_channels=(32, 32, 16, 16), upsampler="bilinear")


def _weights(keys, shapes, seed=2021):
    """The fixture's weights: official keys in state_dict order, one draw each from one generator."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in zip(keys, shapes):
        s = tuple(int(v) for v in s.split(",")) if s else ()
        if k.endswith("running_var"):
            v = rng.uniform(0.5, 1.5, s)
        elif k.endswith("running_mean") or k.endswith("bias") or "position" in k:
            v = 0.1 * rng.standard_normal(s)
        elif len(s) == 1:
            v = 1 + 0.1 * rng.standard_normal(s)
        else:
            v = rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))
        out[str(k)] = torch.from_numpy(v.astype(np.float32))
    return out


_RULES = [  # official name → this package's, written from the two module trees
    (r"^transformer\.embeddings\.position_embeddings$", "embeddings.position"),
    (r"^transformer\.embeddings\.hybrid_model\.root\.conv\.", "resnet.conv_root."),
    (r"^transformer\.embeddings\.hybrid_model\.root\.gn\.", "resnet.gn_root."),
    (r"^transformer\.embeddings\.patch_embeddings\.", "embeddings.patch."),
    (r"^transformer\.encoder\.encoder_norm\.", "vit.norm."),
    (r"^transformer\.encoder\.layer\.(\d+)\.attention_norm\.", r"vit.blocks.\1.norm1."),
    (r"^transformer\.encoder\.layer\.(\d+)\.ffn_norm\.", r"vit.blocks.\1.norm2."),
    (r"^transformer\.encoder\.layer\.(\d+)\.ffn\.fc1\.", r"vit.blocks.\1.mlp.linear1."),
    (r"^transformer\.encoder\.layer\.(\d+)\.ffn\.fc2\.", r"vit.blocks.\1.mlp.linear2."),
    (r"^transformer\.encoder\.layer\.(\d+)\.attn\.out\.", r"vit.blocks.\1.attn.out_proj."),
    (r"^decoder\.conv_more\.0\.", "decoder.conv_more.conv."),
    (r"^decoder\.conv_more\.1\.", "decoder.conv_more.adn.N."),
    (r"^decoder\.blocks\.(\d)\.conv(\d)\.0\.", r"decoder.blocks.\1.conv\2.conv."),
    (r"^decoder\.blocks\.(\d)\.conv(\d)\.1\.", r"decoder.blocks.\1.conv\2.adn.N."),
    (r"^segmentation_head\.0\.", "head.conv."),
]


def _to_package(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in official.items():
        m = re.match(r"^transformer\.embeddings\.hybrid_model\.body\.block(\d)\.unit(\d+)\.(.*)$", k)
        if m:
            leaf = m.group(3).replace("downsample.", "conv_proj.")
            out[f"resnet.stages.{int(m.group(1)) - 1}.{int(m.group(2)) - 1}.{leaf}"] = v
            continue
        m = re.match(r"^transformer\.encoder\.layer\.(\d+)\.attn\.(query|key|value)\.(weight|bias)$", k)
        if m:  # the official separate q, k, v projections are the row blocks of the fused qkv projection
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
            continue
        for pattern, repl in _RULES:
            if re.match(pattern, k):
                out[re.sub(pattern, repl, k)] = v
                break
        else:
            raise AssertionError(f"no rule for official key {k}")
    for (layer, kind), parts in qkv.items():
        out[f"vit.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def test_same_parameters_and_outputs_as_the_official_model(golden):
    net = TransUNet(2, **CONFIG).eval()
    assert sum(p.numel() for p in net.parameters()) == int(golden["n_params"])
    state = _to_package(_weights(golden["keys"], golden["shapes"]))
    own = net.state_dict()
    assert set(state) == {k for k in own if not k.endswith("num_batches_tracked")}
    net.load_state_dict({**own, **state})
    x = torch.from_numpy(golden["input"])
    with torch.no_grad():
        logits = net(x)
        c4, skips = net.resnet(x.repeat(1, 3, 1, 1))
        encoded = net.vit(net.embeddings(c4))
    np.testing.assert_allclose(encoded.numpy(), golden["encoded"], rtol=1e-4, atol=1e-5)
    for i, feat in enumerate(skips):  # C3 @ S/8, C2 @ S/4, C1 @ S/2, as the official features list
        np.testing.assert_allclose(feat.mean((0, 2, 3)).numpy(), golden[f"skip{i}_channel_mean"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(feat.reshape(-1)[golden[f"skip{i}_index"]].numpy(), golden[f"skip{i}_values"],
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(logits.numpy(), golden["logits"], rtol=1e-4, atol=1e-5)
    assert float(np.abs(golden["logits"]).mean()) > 0.05  # the comparison is not between near-zero outputs
