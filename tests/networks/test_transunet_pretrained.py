"""Loader of the official R50+ViT-B_16.npz: key names, layout conversions, position-embedding resize, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from resfu_med.errors import InputError
from resfu_med.networks import TransUNet
from resfu_med.networks.transunet import npz_key_map

LITE = dict(img_size=64, vit_depth=2, hidden_size=64, mlp_dim=128, num_heads=4, resnet_layers=(2, 1, 2),
            resnet_width=32, head_channels=64, decoder_channels=(32, 32, 16, 16), upsampler="bilinear")
POSEMB = "Transformer/posembed_input/pos_embedding"


def official_layout(width=64, layers=(3, 4, 9), depth=12, hidden=768, mlp=3072, heads=12, grid=14, cls=True):
    """Names and shapes of the official checkpoint, written out from the published ViT/TransUNet layout (JAX:
    conv kernels HWIO, dense kernels (in, out), attention kernels (hidden, heads, head_dim)), plus the classifier
    entries that a segmentation model does not use."""
    shapes = {"conv_root/kernel": (7, 7, 3, width), "gn_root/scale": (width,), "gn_root/bias": (width,)}
    cin = width
    for b, (n, mult) in enumerate(zip(layers, (1, 2, 4))):
        cmid, cout = width * mult, width * mult * 4
        for u in range(n):
            p = f"block{b + 1}/unit{u + 1}"
            unit_in = cin if u == 0 else cout
            shapes |= {f"{p}/conv1/kernel": (1, 1, unit_in, cmid), f"{p}/conv2/kernel": (3, 3, cmid, cmid),
                       f"{p}/conv3/kernel": (1, 1, cmid, cout)}
            for g, c in (("gn1", cmid), ("gn2", cmid), ("gn3", cout)):
                shapes |= {f"{p}/{g}/scale": (c,), f"{p}/{g}/bias": (c,)}
            if u == 0:
                shapes |= {f"{p}/conv_proj/kernel": (1, 1, unit_in, cout), f"{p}/gn_proj/scale": (cout,),
                           f"{p}/gn_proj/bias": (cout,)}
        cin = cout
    shapes |= {"embedding/kernel": (1, 1, cin, hidden), "embedding/bias": (hidden,),
               POSEMB: (1, grid * grid + int(cls), hidden)}
    hd = hidden // heads
    for i in range(depth):
        p = f"Transformer/encoderblock_{i}"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            shapes |= {f"{p}/{ln}/scale": (hidden,), f"{p}/{ln}/bias": (hidden,)}
        a = f"{p}/MultiHeadDotProductAttention_1"
        for qkv in ("query", "key", "value"):
            shapes |= {f"{a}/{qkv}/kernel": (hidden, heads, hd), f"{a}/{qkv}/bias": (heads, hd)}
        shapes |= {f"{a}/out/kernel": (heads, hd, hidden), f"{a}/out/bias": (hidden,)}
        shapes |= {f"{p}/MlpBlock_3/Dense_0/kernel": (hidden, mlp), f"{p}/MlpBlock_3/Dense_0/bias": (mlp,),
                   f"{p}/MlpBlock_3/Dense_1/kernel": (mlp, hidden), f"{p}/MlpBlock_3/Dense_1/bias": (hidden,)}
    shapes |= {"Transformer/encoder_norm/scale": (hidden,), "Transformer/encoder_norm/bias": (hidden,)}
    return shapes


EXTRAS = {"cls": (1, 1, 64), "head/kernel": (64, 21843), "head/bias": (21843,)}


def _write(path, shapes, seed=0, extras=True):
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    if extras:
        arrays |= {k: np.zeros(s, np.float32) for k, s in EXTRAS.items()}
    np.savez(path, **arrays)
    return arrays


def _lite_layout(grid=4, cls=True):
    return official_layout(32, (2, 1, 2), 2, 64, 128, 4, grid, cls)


def test_full_size_key_map_is_the_official_name_list():
    net = TransUNet(9, upsampler="bilinear")
    mapped = {e.key: e.shape for e in npz_key_map(net)}
    expected = official_layout()
    posemb = expected.pop(POSEMB)
    assert mapped == expected
    assert len(mapped) + 1 == 353  # 3 root + 153 ResNet units + 2 embedding + 192 transformer + 2 norm, + posemb
    assert posemb == (1, 197, 768) and net.embeddings.position.shape == (1, 196, 768)


def test_values_land_where_they_should(tmp_path):
    net = TransUNet(9, **LITE)
    arrays = _write(tmp_path / "w.npz", _lite_layout())
    report = net.load_pretrained(tmp_path / "w.npz")
    assert sorted(report["skipped"]) == sorted(EXTRAS)
    assert len(report["loaded"]) == len(_lite_layout())
    assert report["position_embedding"] == "dropped class token"
    w = net.resnet.conv_root.weight
    assert w[5, 2, 1, 3] == torch.tensor(arrays["conv_root/kernel"][1, 3, 2, 5])  # HWIO[kh, kw, i, o] → OIHW
    u = net.resnet.stages[2][1]
    assert u.conv2.weight[7, 4, 2, 0] == torch.tensor(arrays["block3/unit2/conv2/kernel"][2, 0, 4, 7])
    assert torch.equal(net.resnet.stages[0][0].gn_proj.weight, torch.from_numpy(arrays["block1/unit1/gn_proj/scale"]))
    assert net.embeddings.patch.weight[10, 300, 0, 0] == torch.tensor(arrays["embedding/kernel"][0, 0, 300, 10])
    blk = net.vit.blocks[1]
    a = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1"
    hd = 16  # 64 / 4 heads
    # query kernel [in, head, d] → output row head·hd + d of the fused qkv weight; key rows follow at +hidden
    assert blk.attn.qkv.weight[2 * hd + 5, 9] == torch.tensor(arrays[f"{a}/query/kernel"][9, 2, 5])
    assert blk.attn.qkv.weight[64 + 3 * hd + 1, 0] == torch.tensor(arrays[f"{a}/key/kernel"][0, 3, 1])
    assert blk.attn.qkv.weight[128 + 7, 63] == torch.tensor(arrays[f"{a}/value/kernel"][63, 0, 7])
    assert blk.attn.qkv.bias[128 + hd + 2] == torch.tensor(arrays[f"{a}/value/bias"][1, 2])
    assert blk.attn.out_proj.weight[11, 1 * hd + 4] == torch.tensor(arrays[f"{a}/out/kernel"][1, 4, 11])
    assert blk.mlp.linear1.weight[100, 3] == torch.tensor(arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"][3, 100])
    assert torch.equal(blk.norm2.bias, torch.from_numpy(arrays["Transformer/encoderblock_1/LayerNorm_2/bias"]))
    assert torch.equal(net.vit.norm.weight, torch.from_numpy(arrays["Transformer/encoder_norm/scale"]))
    torch.testing.assert_close(net.embeddings.position[0], torch.from_numpy(arrays[POSEMB][0, 1:]))


def test_loaded_attention_matches_a_numpy_vit_block(tmp_path):
    # The transformer block, fed through MONAI's TransformerBlock, must compute ViT's pre-norm block from the raw
    # arrays: x + MHA(LN0(x)), then + MLP(LN2(.)) (exact GELU).
    net = TransUNet(9, **LITE).eval()
    arrays = _write(tmp_path / "w.npz", _lite_layout(), seed=3)
    net.load_pretrained(tmp_path / "w.npz")
    p = "Transformer/encoderblock_0/"
    x = np.random.default_rng(1).standard_normal((1, 5, 64))

    def ln(v, name):
        m, s = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - m) / np.sqrt(s + 1e-6) * arrays[p + name + "/scale"] + arrays[p + name + "/bias"]

    h = ln(x, "LayerNorm_0")
    a = p + "MultiHeadDotProductAttention_1/"
    q, k, v = (np.einsum("btc,chd->bthd", h, arrays[a + n + "/kernel"]) + arrays[a + n + "/bias"] for n in ("query", "key", "value"))
    att = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(16)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", att, v)
    y = x + np.einsum("bqhd,hdc->bqc", o, arrays[a + "out/kernel"]) + arrays[a + "out/bias"]
    from scipy.special import erf

    m = ln(y, "LayerNorm_2") @ arrays[p + "MlpBlock_3/Dense_0/kernel"] + arrays[p + "MlpBlock_3/Dense_0/bias"]
    m = 0.5 * m * (1 + erf(m / np.sqrt(2)))
    y = y + m @ arrays[p + "MlpBlock_3/Dense_1/kernel"] + arrays[p + "MlpBlock_3/Dense_1/bias"]
    with torch.no_grad():
        out = net.vit.blocks[0](torch.from_numpy(x).float())
    np.testing.assert_allclose(out.numpy(), y, rtol=1e-4, atol=1e-4)


def test_position_embedding_resized_like_ndimage_zoom(tmp_path):
    net = TransUNet(9, **LITE)  # grid 4
    arrays = _write(tmp_path / "w.npz", _lite_layout(grid=7), seed=2)
    report = net.load_pretrained(tmp_path / "w.npz")
    assert report["position_embedding"] == "dropped class token, resized 7x7->4x4"
    grid = arrays[POSEMB][0, 1:].reshape(7, 7, 64)
    ref = ndimage.zoom(grid.astype(np.float64), (4 / 7, 4 / 7, 1), order=1)  # what the original loader does
    np.testing.assert_allclose(net.embeddings.position[0].detach().numpy(), ref.reshape(16, 64), rtol=1e-5, atol=1e-5)


def test_same_grid_without_class_token_is_copied(tmp_path):
    net = TransUNet(9, **LITE)
    arrays = _write(tmp_path / "w.npz", _lite_layout(cls=False), extras=False)
    report = net.load_pretrained(tmp_path / "w.npz")
    assert report["position_embedding"] == "copied" and report["skipped"] == []
    torch.testing.assert_close(net.embeddings.position, torch.from_numpy(arrays[POSEMB]))


def test_missing_key_is_named(tmp_path):
    shapes = _lite_layout()
    del shapes["block2/unit1/gn_proj/bias"]
    _write(tmp_path / "w.npz", shapes)
    with pytest.raises(InputError, match="block2/unit1/gn_proj/bias") as err:
        TransUNet(9, **LITE).load_pretrained(tmp_path / "w.npz")
    assert "w.npz" in str(err.value)


def test_shape_mismatch_is_named(tmp_path):
    shapes = _lite_layout()
    shapes["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"] = (64, 256)
    _write(tmp_path / "w.npz", shapes)
    with pytest.raises(InputError, match="encoderblock_1/MlpBlock_3/Dense_0/kernel.*\\(64, 256\\)"):
        TransUNet(9, **LITE).load_pretrained(tmp_path / "w.npz")


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "R50+ViT-B_16.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="R50\\+ViT-B_16.npz"):
        TransUNet(9, **LITE).load_pretrained(bad)
    with pytest.raises(InputError, match="missing.npz"):
        TransUNet(9, **LITE).load_pretrained(tmp_path / "missing.npz")


# The 2020 ViT/R50 release was written by Flax before 0.3.6, which stored GroupNorm scale/bias as (1, 1, 1, C); the
# official loader (vit_seg_modeling_resnet_skip.py) and timm's _load_weights flatten them. The real file also holds
# the ImageNet classifier: the class token "cls", "pre_logits/{kernel,bias}" and "head/{kernel,bias}".
CLASSIFIER = {"cls": (1, 1, 64), "pre_logits/kernel": (64, 64), "pre_logits/bias": (64,),
              "head/kernel": (64, 21843), "head/bias": (21843,)}


def _gn_as_old_flax(shapes):
    return {k: ((1, 1, 1, *s) if k.split("/")[-2].startswith("gn") else s) for k, s in shapes.items()}


@pytest.mark.parametrize("layout", ["flax<0.3.6 (1,1,1,C)", "(C,)"])
@pytest.mark.parametrize("classifier", [True, False])
def test_both_groupnorm_layouts_with_or_without_classifier_load_identical_weights(tmp_path, layout, classifier):
    shapes = _lite_layout()
    rng = np.random.default_rng(7)
    flat = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    file_shapes = _gn_as_old_flax(shapes) if layout.startswith("flax") else shapes
    arrays = {k: flat[k].reshape(file_shapes[k]) for k in shapes}
    assert arrays["gn_root/scale"].shape == ((1, 1, 1, 32) if layout.startswith("flax") else (32,))
    if classifier:
        arrays |= {k: np.zeros(s, np.float32) for k, s in CLASSIFIER.items()}
    np.savez(tmp_path / "w.npz", **arrays)
    net = TransUNet(9, **LITE)
    report = net.load_pretrained(tmp_path / "w.npz")
    ref = TransUNet(9, **LITE)
    np.savez(tmp_path / "ref.npz", **flat)
    ref.load_pretrained(tmp_path / "ref.npz")
    enc = [k for k in ref.state_dict() if not k.startswith(("decoder", "head", "segmentation"))]
    for k in enc:
        if k in {e for e in ref.state_dict() if "num_batches" in e}:
            continue
        torch.testing.assert_close(net.state_dict()[k], ref.state_dict()[k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(net.resnet.gn_root.weight, torch.from_numpy(flat["gn_root/scale"]), rtol=0, atol=0)
    assert report["classifier_skipped"] == (sorted(CLASSIFIER) if classifier else [])
    assert ("classifier" in report["note"]) == classifier and ("head/kernel" in report["note"]) == classifier


def test_official_view_layouts_of_attention_arrays_are_accepted(tmp_path):
    # vit_seg_modeling.Block.load_from: query/key/value/out kernels .view(hidden, hidden), biases .view(-1)
    shapes = _lite_layout()
    a = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1"
    rng = np.random.default_rng(5)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    np.savez(tmp_path / "ref.npz", **arrays)
    other = dict(arrays)
    other[f"{a}/query/kernel"] = arrays[f"{a}/query/kernel"].reshape(64, 64)
    other[f"{a}/value/bias"] = arrays[f"{a}/value/bias"].reshape(-1)
    other["Transformer/encoderblock_1/LayerNorm_0/scale"] = arrays["Transformer/encoderblock_1/LayerNorm_0/scale"][None]
    np.savez(tmp_path / "w.npz", **other)
    net, ref = TransUNet(9, **LITE), TransUNet(9, **LITE)
    net.load_pretrained(tmp_path / "w.npz")
    ref.load_pretrained(tmp_path / "ref.npz")
    torch.testing.assert_close(net.vit.blocks[0].attn.qkv.weight, ref.vit.blocks[0].attn.qkv.weight, rtol=0, atol=0)
    torch.testing.assert_close(net.vit.blocks[0].attn.qkv.bias, ref.vit.blocks[0].attn.qkv.bias, rtol=0, atol=0)
    torch.testing.assert_close(net.vit.blocks[1].norm1.weight, ref.vit.blocks[1].norm1.weight, rtol=0, atol=0)


@pytest.mark.parametrize("key,shape", [("gn_root/scale", (1, 1, 1, 16)), ("gn_root/scale", (64,)),
                                       ("Transformer/encoderblock_0/LayerNorm_0/scale", (2, 32)),
                                       ("block1/unit1/conv2/kernel", (3, 3, 32 * 32, 1))])
def test_genuinely_wrong_shapes_still_fail(tmp_path, key, shape):
    shapes = _lite_layout()
    shapes[key] = shape
    _write(tmp_path / "w.npz", shapes)
    with pytest.raises(InputError, match=key.replace("/", ".")):
        TransUNet(9, **LITE).load_pretrained(tmp_path / "w.npz")
