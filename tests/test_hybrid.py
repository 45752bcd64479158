"""The hybrid (ViT paper, section 3.1): ResNet features as the tokens. Generic suite for tiny hybrids, the reference
code's ResNet details, the variant names, and parity with transformers' BitModel and timm's R50+ViT-B/16."""

import math

import pytest
import torch

from hf_vit import HYBRID_VARIANTS, ViTConfig, ViTForImageClassification, ViTModel
from hf_vit.modeling_resnetv2 import ResNetV2Backbone, WeightStandardizedConv2d, same_padding

from .common import TINY_HYBRID, ModelTesterMixin, make_config, pixel_values_for, run_without_hf_vit


HYBRID_VARIANTS_UNDER_TEST = {
    # Two stages of one unit (stride 8), 1x1 patches: the R50+B/16 shape in miniature.
    "stages": TINY_HYBRID,
    # The stem alone (stride 4) and 2x2 patches: R-Ti/16's shape.
    "stem_only": {**TINY_HYBRID, "backbone_depths": [], "patch_size": 2},
    # timm's / BiT's numerics, a non-square input and non-square patches.
    "bit_numerics_non_square": {
        **TINY_HYBRID,
        "image_size": [32, 48],
        "patch_size": [1, 2],
        "backbone_weight_standardization": "sqrt_var_plus_eps",
        "backbone_weight_standardization_eps": 1e-8,
        "backbone_group_norm_eps": 1e-5,
    },
    "relative_gap": {**TINY_HYBRID, "position_embedding_type": "relative", "pooling": "gap"},
}


class TestHybridViTForImageClassification(ModelTesterMixin):
    model_class = ViTForImageClassification
    variants = HYBRID_VARIANTS_UNDER_TEST


class TestHybridViTModel(ModelTesterMixin):
    model_class = ViTModel
    variants = {"stages": TINY_HYBRID}
    has_labels = False


# ---- configuration -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size, depths, patch, dropout, stride",
    [
        ("R50+B/16", "B", [3, 4, 9], 1, 0.1, 16),
        ("R50+L/32", "L", [3, 4, 6, 3], 1, 0.1, 32),
        ("R26+S/32", "S", [2, 2, 2, 2], 1, 0.0, 32),
        ("R26+B/32", "B", [2, 2, 2, 2], 1, 0.0, 32),
        # The reference's R+ViT-Ti_16: the stem (stride 4) and 8x8 patches, i.e. 32 pixels per token.
        ("R-Ti/16", "Ti", [], 8, 0.0, 32),
        ("R50+ViT-B/16", "B", [3, 4, 9], 1, 0.1, 16),
        ("R[3,4,9]+B/1", "B", [3, 4, 9], 1, 0.0, 16),
        ("R[]+Ti/8", "Ti", [], 8, 0.0, 32),
        ("R[2, 2]+S/2", "S", [2, 2], 2, 0.0, 16),
    ],
)
def test_hybrid_variants(name, size, depths, patch, dropout, stride):
    config = ViTConfig.from_variant(name)
    plain = ViTConfig.from_variant(f"{size}/16")
    assert config.backbone_depths == depths and config.patch_size == patch
    assert config.hidden_dropout_prob == dropout
    assert (config.hidden_size, config.num_hidden_layers) == (plain.hidden_size, plain.num_hidden_layers)
    assert config.token_pixel_size == (stride, stride)
    assert config.grid_size == (224 // stride, 224 // stride) and config.num_patches == (224 // stride) ** 2
    assert config.is_hybrid and not plain.is_hybrid and plain.token_pixel_size == (16, 16)
    assert name in HYBRID_VARIANTS or name.startswith("R[") or "ViT-" in name


@pytest.mark.parametrize("name", ["R50+B/8", "R[3,x]+B/1", "R[3,0]+B/1", "R[3]+Q/1", "R50B/16", "R[3]+B"])
def test_unknown_hybrid_variant_is_a_clear_error(name):
    with pytest.raises(ValueError, match="Unknown variant"):
        ViTConfig.from_variant(name)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"backbone_depths": 3}, "backbone_depths"),
        ({"backbone_depths": [3, 0]}, "backbone_depths"),
        ({"backbone_width_factor": 0}, "backbone_width_factor"),
        ({"backbone_width_factor": 0.01}, "backbone_width_factor"),
        ({"backbone_num_groups": 3}, "backbone_num_groups"),
        ({"backbone_group_norm_eps": 0}, "backbone_group_norm_eps"),
        ({"backbone_weight_standardization": "bit"}, "backbone_weight_standardization"),
        ({"image_size": 36}, "image_size"),  # 36 is a multiple of the patch (1) but not of the token (8 pixels)
    ],
)
def test_hybrid_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`|{field}"):
        make_config({**TINY_HYBRID, **overrides})


def test_token_geometry_of_a_hybrid():
    config = make_config(TINY_HYBRID)
    assert config.backbone_stride == 8 and config.token_pixel_size == (8, 8) and config.grid_size == (4, 4)
    assert config.backbone_stem_width == 8 and config.backbone_out_channels == 64
    model = ViTModel(config).eval()
    with torch.no_grad():
        tokens, grid = model.embeddings.embed_patches(pixel_values_for(config))
    assert grid == (4, 4) and tokens.shape == (2, 16, 32)
    with pytest.raises(ValueError, match=r"divisible by the patch size 8x8 \(the hybrid's ResNet stride 8"):
        model(torch.randn(1, 3, 36, 32), interpolate_pos_encoding=True)


def test_hybrid_key_names():
    # Public API (docs/architecture.md): the ResNet lives under vit.embeddings.patch_embeddings.backbone.
    model = ViTForImageClassification(make_config({**TINY_HYBRID, "backbone_depths": [2, 1]}))
    keys = set(model.state_dict())
    prefix = "vit.embeddings.patch_embeddings."
    expected = {
        f"{prefix}backbone.stem.conv.weight",
        f"{prefix}backbone.stem.norm.weight",
        f"{prefix}backbone.stem.norm.bias",
        f"{prefix}projection.weight",
        f"{prefix}projection.bias",
    }
    for stage, depth in enumerate([2, 1]):
        for unit in range(depth):
            base = f"{prefix}backbone.stages.{stage}.units.{unit}."
            for part in ("conv1", "conv2", "conv3"):
                expected.add(base + part + ".weight")
            for part in ("norm1", "norm2", "norm3"):
                expected |= {base + part + ".weight", base + part + ".bias"}
            if unit == 0:
                expected |= {base + "shortcut.conv.weight", base + "shortcut.norm.weight", base + "shortcut.norm.bias"}
    assert {k for k in keys if k.startswith(prefix)} == expected
    assert not any(k.endswith("conv1.bias") or k.endswith("stem.conv.bias") for k in keys)  # convs have no bias


# ---- the reference ResNet ------------------------------------------------------------------------------------------


def test_same_padding_is_tensorflows():
    # The extra pixel goes after (bottom/right), as TF's and Flax's padding="SAME".
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(113, 3, 2) == (1, 1)
    assert same_padding(56, 3, 1) == (1, 1)
    assert same_padding(56, 1, 2) == (0, 0)
    backbone = ResNetV2Backbone(make_config(TINY_HYBRID)).eval()
    with torch.no_grad():
        for size, expected in ((32, 4), (37, 5), (33, 5)):  # ceil(ceil(ceil(size/2)/2)/2)
            assert backbone(torch.randn(1, 3, size, size)).shape[-1] == expected


def test_max_pool_same_is_padding_with_minus_infinity_then_pooling():
    # The stem's pool without the padded copy: same values and gradients at even, odd and mixed sizes.
    import torch.nn.functional as F

    from hf_vit.modeling_resnetv2 import max_pool_same, pad_same

    for height, width in ((16, 16), (15, 15), (16, 15), (1, 1), (2, 3), (7, 8), (56, 56), (57, 28)):
        x = torch.randn(2, 3, height, width, requires_grad=True)
        expected = F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), kernel_size=3, stride=2)
        result = max_pool_same(x)
        assert result.shape == expected.shape == (2, 3, math.ceil(height / 2), math.ceil(width / 2))
        assert torch.equal(result, expected), (height, width)
        upstream = torch.randn_like(result)
        (grad_result,) = torch.autograd.grad(result, x, upstream)
        (grad_expected,) = torch.autograd.grad(expected, x, upstream)
        assert torch.equal(grad_result, grad_expected), (height, width)


@pytest.mark.parametrize(
    "channels, groups, dtype, layout, rerouted",
    [
        (64, 16, torch.bfloat16, "channels_last", True),  # 4 channels per group: the slow channels-last case
        (32, 16, torch.float16, "channels_last", True),
        (256, 16, torch.bfloat16, "channels_last", False),  # 16 per group: channels-last is the faster kernel
        (64, 16, torch.float32, "channels_last", False),  # fp32: channels-last is not slower
        (64, 16, torch.bfloat16, "channels_first", False),
    ],
)
def test_group_norm_reroutes_only_small_reduced_precision_channels_last_groups(
    monkeypatch, channels, groups, dtype, layout, rerouted
):
    import torch.nn.functional as F

    from hf_vit.modeling_resnetv2 import GroupNorm

    seen = []
    group_norm = F.group_norm

    def spy(x, *args, **kwargs):
        seen.append(x.is_contiguous())
        return group_norm(x, *args, **kwargs)

    monkeypatch.setattr(F, "group_norm", spy)
    torch.manual_seed(0)
    norm = GroupNorm(groups, channels, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(4, channels, 6, 5) * 3 + 1).to(dtype).contiguous(memory_format=memory_format).requires_grad_()
    y = norm(x)
    # The kernel saw a channels-first tensor exactly when rerouted; the output keeps the input's layout and dtype.
    assert seen == [rerouted or layout == "channels_first"]
    assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    # Same values and gradients as the plain module in fp32, to the input dtype's rounding.
    reference = torch.nn.GroupNorm(groups, channels, eps=1e-6)
    reference.load_state_dict(norm.state_dict())
    x32 = x.detach().float().requires_grad_()
    y32 = reference(x32)
    y32.backward(upstream.float())
    tolerance = {"rtol": 2e-2, "atol": 4e-2} if dtype != torch.float32 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(y.float(), y32, **tolerance)
    torch.testing.assert_close(x.grad.float(), x32.grad, **tolerance)
    torch.testing.assert_close(norm.weight.grad, reference.weight.grad, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(norm.bias.grad, reference.bias.grad, rtol=2e-2, atol=5e-2)
    assert isinstance(norm, torch.nn.GroupNorm) and set(norm.state_dict()) == {"weight", "bias"}


def test_backbone_norms_are_the_rerouting_group_norm():
    from hf_vit.modeling_resnetv2 import GroupNorm

    backbone = ResNetV2Backbone(make_config(TINY_HYBRID))
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(type(m) is GroupNorm for m in norms)


@pytest.mark.parametrize("style, eps", [("std_plus_eps", 1e-5), ("sqrt_var_plus_eps", 1e-8)])
def test_weight_standardisation(style, eps):
    conv = WeightStandardizedConv2d(3, 5, 3, eps=eps, style=style)
    w = conv.weight.detach().double()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = ((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)  # population variance, as jnp.std
    expected = (w - mean) / (var.sqrt() + eps) if style == "std_plus_eps" else (w - mean) / (var + eps).sqrt()
    torch.testing.assert_close(conv.standardized_weight().double(), expected, rtol=1e-6, atol=1e-7)
    # The two styles differ visibly for a small-variance kernel (what the option exists for).
    with torch.no_grad():
        conv.weight.mul_(1e-4)
    other = WeightStandardizedConv2d(3, 5, 3, eps=1e-5, style="sqrt_var_plus_eps" if style == "std_plus_eps" else "std_plus_eps")
    other.weight = conv.weight
    assert (conv.standardized_weight() - other.standardized_weight()).abs().max() > 1e-3


def test_reference_defaults_and_post_activation_units():
    config = make_config(TINY_HYBRID)
    assert (config.backbone_group_norm_eps, config.backbone_weight_standardization_eps) == (1e-6, 1e-5)
    assert config.backbone_weight_standardization == "std_plus_eps"
    model = ViTModel(config)
    backbone = model.embeddings.patch_embeddings.backbone
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(n.eps == 1e-6 and n.num_groups == 4 for n in norms)
    unit = backbone.stages[1].units[0]
    # The last GroupNorm of a unit starts at zero scale: a fresh unit is relu(shortcut(x)).
    assert torch.equal(unit.norm3.weight, torch.zeros_like(unit.norm3.weight))
    assert torch.equal(backbone.stages[0].units[0].norm1.weight, torch.ones(8))
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), torch.relu(unit.shortcut(x)))
        # Post-activation: every unit's (and the stem's) output is non-negative.
        for param in backbone.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        assert (unit(x) >= 0).all() and (backbone.stem(torch.randn(1, 3, 16, 16)) >= 0).all()
    # Projection shortcuts on the first unit of each stage only (the channel count or the stride changes there).
    deeper = ResNetV2Backbone(make_config({**TINY_HYBRID, "backbone_depths": [2, 2]}))
    assert [u.shortcut is not None for s in deeper.stages for u in s.units] == [True, False, True, False]
    assert deeper.stages[1].units[0].conv2.stride == (2, 2) and deeper.stages[0].units[0].conv2.stride == (1, 1)


# ---- parity with transformers' BitModel ----------------------------------------------------------------------------


def _bit_state_dict(ours: dict) -> dict:
    """hf_vit ResNet keys -> transformers BitModel keys."""
    out = {}
    for key, value in ours.items():
        key = key.replace("stem.conv.", "embedder.convolution.").replace("stem.norm.", "embedder.norm.")
        key = key.replace("stages.", "encoder.stages.").replace(".units.", ".layers.").replace(".shortcut.", ".downsample.")
        out[key] = value
    return out


@pytest.mark.parity
@pytest.mark.parametrize(
    "depths, width_factor, groups, size",
    [
        ([3, 4, 9], 1, 32, (64, 48)),  # R50+B/16's ResNet at its real widths, a small input
        ([1, 2, 1], 0.125, 4, (37, 45)),  # odd sizes: asymmetric SAME padding at every stride-2 layer
    ],
)
def test_resnet_matches_transformers_bit_model(depths, width_factor, groups, size):
    # In float64, so that the comparison sees the graph and not the kernels' summation order (in fp32, hf_vit's
    # channels-last CPU convolutions and BitModel's channels-first ones differ by up to ~1e-5 at R50 widths).
    transformers = pytest.importorskip("transformers")
    config = make_config(
        backbone_depths=depths,
        backbone_width_factor=width_factor,
        backbone_num_groups=groups,
        patch_size=1,
        image_size=64,
        # transformers' BitModel (as timm): sqrt(var + 1e-8) weight standardisation, GroupNorm eps 1e-5.
        backbone_weight_standardization="sqrt_var_plus_eps",
        backbone_weight_standardization_eps=1e-8,
        backbone_group_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    ours = ResNetV2Backbone(config).eval().double()
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 0.1)  # zero-scale norm3 would hide most of each unit
    width = config.backbone_stem_width
    bit_config = transformers.BitConfig(
        num_channels=3,
        embedding_size=width,
        hidden_sizes=[4 * width * 2**i for i in range(len(depths))],
        depths=depths,
        layer_type="bottleneck",
        global_padding="SAME",
        embedding_dynamic_padding=True,
        num_groups=groups,
    )
    bit = transformers.BitModel(bit_config).eval().double()
    missing, unexpected = bit.load_state_dict(_bit_state_dict(ours.state_dict()), strict=False)
    assert not missing and not unexpected
    pixel_values = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        features, stages = ours(pixel_values, output_stages=True)
        expected = bit(pixel_values, output_hidden_states=True)
    assert len(stages) == len(expected.hidden_states) == len(depths) + 1
    for got, want in zip(stages, expected.hidden_states):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(features, expected.last_hidden_state, rtol=0, atol=1e-10)


# ---- parity with timm's R50+ViT-B/16 -------------------------------------------------------------------------------


def _timm_or_skip():
    try:
        import timm
    except Exception as error:  # timm's import of torchvision fails beside a mismatched torch, not only ImportError
        pytest.skip(f"timm is not usable here ({type(error).__name__}: {error}); run with the bench environment")
    return timm


def timm_hybrid_to_hf_vit(state_dict: dict, num_layers: int) -> dict:
    """timm `vit_base_r50_s16_224` keys -> hf_vit keys (test-local; the real converter lives in hf_vit.conversion)."""
    out = {}
    prefix = "vit.embeddings.patch_embeddings."
    for key, value in state_dict.items():
        if key.startswith("patch_embed.backbone."):
            new = key.replace("patch_embed.backbone.", prefix + "backbone.").replace(".blocks.", ".units.")
            out[new.replace(".downsample.", ".shortcut.")] = value
        elif key.startswith("patch_embed.proj."):
            out[key.replace("patch_embed.proj.", prefix + "projection.")] = value
        elif key == "cls_token":
            out["vit.embeddings.cls_token"] = value
        elif key == "pos_embed":
            out["vit.embeddings.position_embeddings"] = value
        elif key.startswith("blocks."):
            index, rest = key[len("blocks.") :].split(".", 1)
            rest = (
                rest.replace("norm1.", "layernorm_before.")
                .replace("norm2.", "layernorm_after.")
                .replace("attn.qkv.", "attention.qkv.")
                .replace("attn.proj.", "attention.o_proj.")
            )
            out[f"vit.encoder.layers.{index}.{rest}"] = value
        elif key.startswith("norm."):
            out["vit.layernorm." + key[len("norm.") :]] = value
        elif key.startswith("head."):
            out["classifier." + key[len("head.") :]] = value
        else:
            raise KeyError(f"unmapped timm key {key}")
    return out


@pytest.mark.parity
def test_r50_b16_matches_timm():
    # Tolerance: 1e-4 on logits of magnitude ~1 (fp32 through 16 ResNet units and 12 blocks; the two use different
    # attention kernels and sum orders). The observed figure is reported in the test output.
    timm = _timm_or_skip()
    torch.manual_seed(0)
    reference = timm.create_model("vit_base_r50_s16_224", pretrained=False, num_classes=1000).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    config = ViTConfig.from_variant(
        "R50+B/16",
        num_labels=1000,
        hidden_dropout_prob=0.0,
        # timm's numerics: exact GELU, LayerNorm eps 1e-6, StdConv2dSame(eps=1e-8) and GroupNorm eps 1e-5.
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        backbone_weight_standardization="sqrt_var_plus_eps",
        backbone_weight_standardization_eps=1e-8,
        backbone_group_norm_eps=1e-5,
    )
    model = ViTForImageClassification(config).eval()
    model.load_state_dict(timm_hybrid_to_hf_vit(reference.state_dict(), 12), strict=True)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    pixel_values = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(pixel_values)
        got = model(pixel_values).logits
        ours_features = model.vit.embeddings.patch_embeddings.backbone(pixel_values)
        timm_features = reference.patch_embed.backbone(pixel_values)
    feature_diff = (ours_features - timm_features).abs().max().item()
    logit_diff = (got - expected).abs().max().item()
    print(f"\nR50+B/16 vs timm: ResNet features max abs diff {feature_diff:.2e}, logits max abs diff {logit_diff:.2e} "
          f"(logit scale {expected.abs().max().item():.2f})")
    assert feature_diff < 1e-4
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert math.isfinite(logit_diff)


# ---- remote code ---------------------------------------------------------------------------------------------------

_REMOTE_HYBRID_SCRIPT = """
import torch, transformers
from transformers.dynamic_module_utils import get_class_from_dynamic_module

folder = sys.argv[1]
model = transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
backbone_class = get_class_from_dynamic_module(model.config.auto_map["AutoBackbone"], folder)
backbone = backbone_class.from_pretrained(folder, out_indices=[1]).eval()
pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits = model(pixel_values).logits
    feature_map = backbone(pixel_values).feature_maps[0]
print(json.dumps({"module": type(model).__module__, "logits": logits.tolist(), "feature_sum": feature_map.sum().item()}))
"""


def test_hybrid_with_options_loads_as_remote_code_without_hf_vit(tmp_path):
    config = make_config({**TINY_HYBRID, "position_embedding_type": "relative", "pooling": "map", "head_zero_init": False})
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "modeling_resnetv2.py").exists()
    result = run_without_hf_vit(_REMOTE_HYBRID_SCRIPT, tmp_path / "model", tmp_path=tmp_path)
    assert result["module"].startswith("transformers_modules")
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values).logits
        hidden = model.vit(pixel_values, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=1e-5, atol=1e-6)
    assert abs(result["feature_sum"] - model.vit.layernorm(hidden).sum().item()) < 1e-3
