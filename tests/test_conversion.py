"""Checkpoint conversion: original JAX .npz (vit_jax, big_vision), timm and transformers formats, in and out.

The .npz files are built here from random arrays with the exact key names and shapes of the released checkpoints
(listed independently of the converter). Numbers are checked against `hf_vit.conversion.jax_reference`, the
reference Flax forward written from the file's own keys with NumPy (no code shared with the key maps); the same
forward with jax, and timm's own loader, are in test_conversion_parity.py. fp32 tolerance 1e-5: the two compute the
same sums in another order (measured ~1e-6 on these tiny models).
"""

import json
import os

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hf_vit import ViTConfig, ViTForImageClassification
from hf_vit.cli import main
from hf_vit.conversion import (
    ConversionError,
    load_npz,
    load_timm,
    load_transformers,
    save_timm,
    save_transformers_vit,
    state_dict_to_timm,
)
from hf_vit.conversion import jax_reference


# --------------------------------------------------------------------------------------------------------------------
# Official layouts, from random arrays.

# Block module names of the released files (pre-linen Flax) and of today's Flax ("linen").
BLOCK_NAMES = {
    "released": ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
    "linen": ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
}
TINY = dict(layers=2, width=32, heads=4, mlp=64, patch=8, grid=4)


def _random(seed, scale):
    rng = np.random.default_rng(seed)
    return lambda *shape: rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)


def _block(r, a, prefix, width, heads, mlp, names, stack=()):
    norm1, attention, norm2, mlp_block = names
    a[f"{prefix}{norm1}/scale"], a[f"{prefix}{norm1}/bias"] = 1 + r(*stack, width), r(*stack, width)
    for name in ("query", "key", "value"):
        a[f"{prefix}{attention}/{name}/kernel"] = r(*stack, width, heads, width // heads)
        a[f"{prefix}{attention}/{name}/bias"] = r(*stack, heads, width // heads)
    a[f"{prefix}{attention}/out/kernel"] = r(*stack, heads, width // heads, width)
    a[f"{prefix}{attention}/out/bias"] = r(*stack, width)
    a[f"{prefix}{norm2}/scale"], a[f"{prefix}{norm2}/bias"] = 1 + r(*stack, width), r(*stack, width)
    a[f"{prefix}{mlp_block}/Dense_0/kernel"], a[f"{prefix}{mlp_block}/Dense_0/bias"] = r(*stack, width, mlp), r(*stack, mlp)
    a[f"{prefix}{mlp_block}/Dense_1/kernel"], a[f"{prefix}{mlp_block}/Dense_1/bias"] = r(*stack, mlp, width), r(*stack, width)


def resnet_arrays(r, depths, stem_width, channels=3, old_group_norm=False):
    """The hybrid's ResNet (vit_jax models_resnet.py; GroupNorm as (1, 1, 1, C) in files from Flax < 0.3.6)."""
    def group_norm(name, c):
        shape = (1, 1, 1, c) if old_group_norm else (c,)
        a[f"{name}/scale"], a[f"{name}/bias"] = 1 + r(*shape), r(*shape)

    a = {"conv_root/kernel": r(7, 7, channels, stem_width)}
    group_norm("gn_root", stem_width)
    in_channels = stem_width
    for stage, depth in enumerate(depths):
        mid = stem_width * 2**stage
        for unit in range(1, depth + 1):
            b = f"block{stage + 1}/unit{unit}/"
            if unit == 1:
                a[f"{b}conv_proj/kernel"] = r(1, 1, in_channels, 4 * mid)
                group_norm(f"{b}gn_proj", 4 * mid)
            a[f"{b}conv1/kernel"] = r(1, 1, in_channels, mid)
            group_norm(f"{b}gn1", mid)
            a[f"{b}conv2/kernel"] = r(3, 3, mid, mid)
            group_norm(f"{b}gn2", mid)
            a[f"{b}conv3/kernel"] = r(1, 1, mid, 4 * mid)
            group_norm(f"{b}gn3", 4 * mid)
            in_channels = 4 * mid
    return a, in_channels


def vit_jax_arrays(layers=2, width=32, heads=4, mlp=64, patch=8, grid=4, channels=3, classifier="token",
                   representation_size=None, num_classes=5, numbering="released", prefix="", seed=0, scale=0.2,
                   resnet=None, old_group_norm=False):
    """A vit_jax checkpoint (models_vit.py's parameter tree, flattened with "/"); values ~ N(0, scale^2).
    `resnet=(stage depths, stem width)`: a hybrid, whose patches (`patch` on the feature map) read the ResNet."""
    r = _random(seed, scale)
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    a = {}
    if resnet is not None:
        a, channels = resnet_arrays(r, *resnet, channels=channels, old_group_norm=old_group_norm)
    a.update({"embedding/kernel": r(patch, patch, channels, width), "embedding/bias": r(width)})
    if classifier == "token":
        a["cls"] = r(1, 1, width)
    a["Transformer/posembed_input/pos_embedding"] = r(1, rows * cols + (classifier == "token"), width)
    for i in range(layers):
        _block(r, a, f"Transformer/encoderblock_{i}/", width, heads, mlp, BLOCK_NAMES[numbering])
    a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"] = 1 + r(width), r(width)
    head_in = width
    if representation_size:
        a["pre_logits/kernel"], a["pre_logits/bias"] = r(width, representation_size), r(representation_size)
        head_in = representation_size
    if num_classes:
        a["head/kernel"], a["head/bias"] = r(head_in, num_classes), r(num_classes)
    return {prefix + k: v for k, v in a.items()}


def big_vision_arrays(layers=2, width=32, heads=4, mlp=64, patch=8, grid=4, channels=3, pool_type="tok",
                      posemb="learn", representation_size=None, num_classes=5, scan=False, prefix="params/", seed=0,
                      scale=0.2):
    """A big_vision checkpoint (models/vit.py's parameter tree under "params/"); values ~ N(0, scale^2)."""
    r = _random(seed, scale)
    a = {"embedding/kernel": r(patch, patch, channels, width), "embedding/bias": r(width)}
    if posemb == "learn":
        a["pos_embedding"] = r(1, grid * grid, width)
    if pool_type == "tok":
        a["cls"] = r(1, 1, width)
    if scan:
        _block(r, a, "Transformer/encoderblock/", width, heads, mlp, BLOCK_NAMES["linen"], stack=(layers,))
    else:
        for i in range(layers):
            _block(r, a, f"Transformer/encoderblock_{i}/", width, heads, mlp, BLOCK_NAMES["linen"])
    a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"] = 1 + r(width), r(width)
    if pool_type == "map":
        a["MAPHead_0/probe"] = r(1, 1, width)
        _block(r, a, "MAPHead_0/", width, heads, mlp, ("LayerNorm_0", "MultiHeadDotProductAttention_0", "_", "MlpBlock_0"))
        del a["MAPHead_0/_/scale"], a["MAPHead_0/_/bias"]
    head_in = width
    if representation_size:
        a["pre_logits/kernel"], a["pre_logits/bias"] = r(width, representation_size), r(representation_size)
        head_in = representation_size
    if num_classes:
        a["head/kernel"], a["head/bias"] = r(head_in, num_classes), r(num_classes)
    return {prefix + k: v for k, v in a.items()}


def write_npz(path, arrays, compressed=False):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def images_for(config, batch=2, seed=0):
    """(B, C, H, W) in [-1, 1], the original input range."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *config.image_hw, generator=generator) * 2 - 1


def reference_outputs(arrays, pixel_values, prefix=""):
    return jax_reference.forward(arrays, pixel_values.permute(0, 2, 3, 1).numpy(), backend="numpy", prefix=prefix)


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@torch.no_grad()
def logits_of(model, pixel_values):
    return model(pixel_values).logits.numpy()


# --------------------------------------------------------------------------------------------------------------------
# vit_jax


@pytest.mark.parametrize(
    "numbering, classifier, representation_size",
    [("released", "token", 16), ("linen", "token", None), ("released", "gap", None), ("linen", "gap", 24)],
)
def test_vit_jax_uses_every_key_and_reproduces_the_reference(numbering, classifier, representation_size, tmp_path):
    arrays = vit_jax_arrays(numbering=numbering, classifier=classifier, representation_size=representation_size)
    model, report = load_npz(write_npz(tmp_path / "ckpt.npz", arrays), output_loading_info=True)
    assert report.unused_keys == [] and report.dropped_keys == [] and report.new_keys == []
    assert numbering in report.layout
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (32, 2, 4, 64)
    assert (config.image_size, config.patch_size, config.num_labels) == (32, 8, 5)
    assert config.pooling == ("cls" if classifier == "token" else "gap")
    assert config.use_class_token == (classifier == "token")
    assert config.representation_size == representation_size
    assert (config.hidden_act, config.layer_norm_eps) == ("gelu_pytorch_tanh", 1e-6)  # Flax's, the reference's
    pixel_values = images_for(config)
    expected = reference_outputs(arrays, pixel_values)
    assert max_diff(logits_of(model, pixel_values), expected["logits"]) < 1e-5


def test_optimizer_checkpoints_and_compressed_files_load_alike(tmp_path):
    plain = load_npz(write_npz(tmp_path / "plain.npz", vit_jax_arrays()))
    wrapped = vit_jax_arrays(prefix="opt/target/")
    wrapped["opt/state/step"] = np.array(100)  # optimizer state is not a weight: ignored, reported
    model, report = load_npz(write_npz(tmp_path / "opt.npz", wrapped, compressed=True), output_loading_info=True)
    assert report.unused_keys == [] and any("ignored 1 arrays" in note for note in report.notes)
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


def test_bfloat16_arrays_are_widened(tmp_path):
    arrays = vit_jax_arrays()
    bf16 = {k: (v.view(np.uint32) >> 16).astype(np.uint16).view("V2") for k, v in arrays.items()}  # as JAX writes
    model = load_npz(write_npz(tmp_path / "bf16.npz", bf16))
    kernel = arrays["embedding/kernel"]
    truncated = ((kernel.view(np.uint32) >> 16) << 16).view(np.float32)
    expected = torch.from_numpy(truncated).permute(3, 2, 0, 1)
    assert torch.equal(model.vit.embeddings.patch_embeddings.projection.weight, expected)


def test_b16_shaped_in21k_checkpoint(tmp_path):
    # ViT-B/16 at 224 with the ImageNet-21k pre-training head (tanh pre-logits of width 768), released numbering.
    # Values at the scale of trained weights (0.02): N(0, 0.2) weights this wide make a chaotic model in which fp32
    # implementations differ by 1e-2.
    arrays = vit_jax_arrays(layers=12, width=768, heads=12, mlp=3072, patch=16, grid=14, representation_size=768,
                            num_classes=10, scale=0.02)
    model, report = load_npz(write_npz(tmp_path / "ViT-B_16.npz", arrays), output_loading_info=True)
    assert report.unused_keys == [] and len(arrays) == 12 * 16 + 10
    assert model.config.representation_size == 768 and model.config.image_size == 224
    pixel_values = images_for(model.config, batch=1)
    expected = reference_outputs(arrays, pixel_values)
    with torch.no_grad():
        outputs = model.vit(pixel_values)
        logits = model.classifier(outputs.pooler_output)
    assert max_diff(logits, expected["logits"]) < 1e-5
    assert max_diff(outputs.last_hidden_state, expected["encoded"]) < 1e-4


@pytest.mark.parametrize(
    "depths, patch, old_group_norm",
    [((1, 1), 1, False), ((), 2, False), ((2, 1, 1), 1, True)],
    ids=["R[1,1]-patch1", "stem-only-patch2", "R[2,1,1]-old-groupnorm-shapes"],
)
def test_vit_jax_hybrid_uses_every_key_and_reproduces_the_reference(depths, patch, old_group_norm, tmp_path):
    # Stem width 32 (width factor 0.5) keeps it tiny; GroupNorm has 32 groups as in the reference.
    arrays = vit_jax_arrays(patch=patch, grid=2, resnet=(depths, 32), old_group_norm=old_group_norm)
    model, report = load_npz(write_npz(tmp_path / "hybrid.npz", arrays), output_loading_info=True)
    assert report.unused_keys == []
    config = model.config
    assert config.backbone_depths == list(depths) and config.backbone_width_factor == 0.5
    assert (config.backbone_group_norm_eps, config.backbone_weight_standardization) == (1e-6, "std_plus_eps")  # Flax's
    stride = 4 * 2 ** max(len(depths) - 1, 0)
    assert config.image_size == 2 * patch * stride and config.num_channels == 3
    pixel_values = images_for(config)
    expected = reference_outputs(arrays, pixel_values)["logits"]
    assert max_diff(logits_of(model, pixel_values), expected) < 1e-5 * max(1.0, np.abs(expected).max())


# --------------------------------------------------------------------------------------------------------------------
# big_vision


@pytest.mark.parametrize(
    "layout",
    [
        dict(pool_type="tok"),
        dict(pool_type="tok", scan=True),
        dict(pool_type="gap", representation_size=16),
        dict(pool_type="map", scan=True),
        dict(pool_type="gap", posemb="sincos2d"),
        dict(pool_type="map", num_classes=0),
    ],
    ids=["tok", "tok-scanned", "gap-pre_logits", "map-scanned", "sincos2d", "map-no-head"],
)
def test_big_vision_uses_every_key_and_reproduces_the_reference(layout, tmp_path):
    arrays = big_vision_arrays(**layout)
    model, report = load_npz(write_npz(tmp_path / "bv.npz", arrays), output_loading_info=True, image_size=32)
    assert report.unused_keys == [] and "big_vision" in report.layout
    assert ("scanned" in report.layout) == layout.get("scan", False)
    expected_pooling = {"tok": "cls", "gap": "gap", "map": "map"}[layout["pool_type"]]
    assert model.config.pooling == expected_pooling
    if layout.get("posemb") == "sincos2d":
        assert model.config.position_embedding_type == "sincos_2d"
    if layout["pool_type"] == "tok":
        # big_vision adds the position table before prepending the class token: its row is zero in hf_vit.
        assert torch.equal(model.vit.embeddings.position_embeddings[0, 0], torch.zeros(32))
    pixel_values = images_for(model.config)
    expected = reference_outputs(arrays, pixel_values, prefix="params/")
    ours = logits_of(model, pixel_values)
    assert max_diff(ours, expected["logits"] if expected["logits"] is not None else expected["pre_logits"]) < 1e-5


def test_big_vision_old_position_table_with_class_row(tmp_path):
    # Files from before 2022 kept the table in Transformer/ and with the class token's row (N + 1 rows).
    arrays = big_vision_arrays(pool_type="tok")
    table = arrays.pop("params/pos_embedding")
    arrays["params/Transformer/pos_embedding"] = np.concatenate([np.full((1, 1, 32), 0.5, np.float32), table], axis=1)
    model, report = load_npz(write_npz(tmp_path / "old.npz", arrays), output_loading_info=True)
    assert report.unused_keys == []
    assert torch.allclose(model.vit.embeddings.position_embeddings[0, 0], torch.full((32,), 0.5))
    pixel_values = images_for(model.config)
    assert max_diff(logits_of(model, pixel_values), reference_outputs(arrays, pixel_values, "params/")["logits"]) < 1e-5


# --------------------------------------------------------------------------------------------------------------------
# Resolution and head at load time


def test_load_time_resampling_is_the_reference_zoom(tmp_path):
    arrays = vit_jax_arrays()
    path = write_npz(tmp_path / "ckpt.npz", arrays)
    model, report = load_npz(path, image_size=48, output_loading_info=True)
    assert model.config.image_size == 48 and report.resampled_position_embeddings[:2] == ((4, 4), (6, 6))
    table = arrays["Transformer/posembed_input/pos_embedding"]
    # vit_jax/checkpoint.py: scipy.ndimage.zoom(grid, (new/old, new/old, 1), order=1), class-token row kept.
    zoomed = scipy.ndimage.zoom(table[0, 1:].reshape(4, 4, 32), (6 / 4, 6 / 4, 1), order=1).reshape(1, 36, 32)
    got = model.vit.embeddings.position_embeddings.detach().numpy()
    assert np.array_equal(got[:, :1], table[:, :1])
    assert max_diff(got[:, 1:], zoomed) < 1e-6
    # Everything else is the checkpoint's.
    at_source = load_npz(path)
    for name, tensor in at_source.state_dict().items():
        if name != "vit.embeddings.position_embeddings":
            assert torch.equal(tensor, model.state_dict()[name]), name


@pytest.mark.parametrize("mode, align_corners", [("bicubic", False), ("bilinear", False)], ids=["bicubic", "timm-bilinear"])
def test_load_time_resampling_on_request(mode, align_corners, tmp_path):
    arrays = vit_jax_arrays()
    model = load_npz(
        write_npz(tmp_path / "ckpt.npz", arrays), image_size=[40, 56],
        position_embedding_interpolation=mode, position_embedding_align_corners=align_corners,
    )
    grid = torch.from_numpy(arrays["Transformer/posembed_input/pos_embedding"][:, 1:]).reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(5, 7), mode=mode, align_corners=align_corners).permute(0, 2, 3, 1).reshape(1, 35, 32)
    assert torch.allclose(model.vit.embeddings.position_embeddings[:, 1:], expected, atol=1e-6)


def test_new_label_set_gets_the_papers_fine_tuning_head(tmp_path):
    arrays = vit_jax_arrays(representation_size=16, num_classes=5)
    path = write_npz(tmp_path / "in21k.npz", arrays)
    id2label = {0: "cat", 1: "dog", 2: "bird"}
    model, report = load_npz(path, id2label=id2label, output_loading_info=True)
    assert model.config.num_labels == 3 and model.config.id2label == id2label
    assert model.config.representation_size is None and model.vit.pooler.dense is None  # pre-logits dropped
    assert sorted(report.dropped_keys) == ["head/bias", "head/kernel", "pre_logits/bias", "pre_logits/kernel"]
    assert sorted(report.new_keys) == ["classifier.bias", "classifier.weight"]
    assert torch.count_nonzero(model.classifier.weight) == 0  # zero-initialised (paper, section 3.2)
    kept = load_npz(path, num_labels=3, keep_pre_logits=True)
    assert kept.config.representation_size == 16
    assert torch.equal(kept.vit.pooler.dense.weight, torch.from_numpy(arrays["pre_logits/kernel"]).t())


# --------------------------------------------------------------------------------------------------------------------
# Bad input: the error names the file, the keys/shapes and what was expected.


def test_shapes_that_do_not_fit_the_config(tmp_path):
    path = write_npz(tmp_path / "ckpt.npz", vit_jax_arrays())
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=5)
    with pytest.raises(ConversionError) as error:
        load_npz(path, config=config)
    message = str(error.value)
    assert "ckpt.npz" in message and "embedding/kernel (8, 8, 3, 32)" in message and "expected (48, 3, 8, 8)" in message


def test_missing_and_unused_keys(tmp_path):
    arrays = vit_jax_arrays()
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    with pytest.raises(ConversionError, match=r"missing\.npz.*Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"):
        load_npz(write_npz(tmp_path / "missing.npz", arrays))
    arrays = vit_jax_arrays()
    arrays["Transformer/encoderblock_0/LayerScale_0/gamma"] = np.ones(32, np.float32)
    path = write_npz(tmp_path / "extra.npz", arrays)
    with pytest.raises(ConversionError, match=r"extra\.npz.*not used.*LayerScale_0/gamma"):
        load_npz(path)
    _, report = load_npz(path, strict=False, output_loading_info=True)
    assert report.unused_keys == ["Transformer/encoderblock_0/LayerScale_0/gamma"]


def test_truncated_and_wrong_format_files(tmp_path):
    data = (write_npz(tmp_path / "ok.npz", vit_jax_arrays())).read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"truncated\.npz.*(truncated|damaged)"):
        load_npz(truncated)
    state_dict = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(state_dict))
    with pytest.raises(ConversionError, match=r"model\.safetensors.*safetensors file"):
        load_npz(state_dict)
    text = tmp_path / "notes.npz"
    text.write_text("not a checkpoint")
    with pytest.raises(ConversionError, match=r"notes\.npz.*not a readable \.npz"):
        load_npz(text)
    with pytest.raises(ConversionError, match=r"ok\.npz.*not a timm VisionTransformer|ok\.npz.*--from npz"):
        load_timm(tmp_path / "ok.npz")


# --------------------------------------------------------------------------------------------------------------------
# timm and transformers layouts, both directions (the key maps alone: timm itself is in the parity tests).


def _random_model(**overrides):
    fields = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, num_labels=5)
    from transformers.initialization import no_init_weights

    torch.manual_seed(0)
    with no_init_weights():  # every parameter is drawn below; the model's own initialisation would be wasted time
        model = ViTForImageClassification(ViTConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize(
    "overrides",
    [dict(hidden_act="gelu"), dict(pooling="gap", hidden_act="gelu"), dict(pooling="gap", use_class_token=True), dict(qkv_bias=False)],
    ids=["cls", "gap", "gap-with-class-token", "no-qkv-bias"],
)
def test_timm_round_trip_is_exact(overrides, tmp_path):
    model = _random_model(**overrides)
    tensors = state_dict_to_timm(model.state_dict(), model.config)
    assert "blocks.1.attn.qkv.weight" in tensors and "head.weight" in tensors
    save_timm(model, tmp_path / "timm")
    saved = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert saved["model_args"]["global_pool"] == ("token" if model.config.pooling == "cls" else "avg")
    again, report = load_timm(tmp_path / "timm", output_loading_info=True)
    assert report.unused_keys == []
    for field in ("image_size", "patch_size", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
                  "layer_norm_eps", "qkv_bias", "pooling", "use_class_token", "num_labels"):
        assert getattr(again.config, field) == getattr(model.config, field), field
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


@pytest.mark.parametrize("depths", [[], [2, 2, 2, 2]], ids=["stem-only", "R26"])
def test_timm_hybrid_round_trip_is_exact(depths, tmp_path):
    # timm's hybrid backbone numerics (GroupNorm eps 1e-5, sqrt(var + 1e-8) weight standardisation).
    model = _random_model(image_size=64, patch_size=8 if not depths else 1, backbone_depths=depths, hidden_act="gelu",
                          backbone_group_norm_eps=1e-5, backbone_weight_standardization="sqrt_var_plus_eps",
                          backbone_weight_standardization_eps=1e-8)
    save_timm(model, tmp_path / "timm")
    saved = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert saved["architecture"] == ("vit_tiny_r_s16_p8_224" if not depths else "vit_small_r26_s32_224")
    again, report = load_timm(tmp_path / "timm", output_loading_info=True)
    assert report.unused_keys == [] and again.config.backbone_depths == depths
    assert again.config.backbone_group_norm_eps == 1e-5
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    with pytest.raises(ValueError, match="backbone_group_norm_eps"):
        save_timm(_random_model(image_size=64, patch_size=8, backbone_depths=[]), tmp_path / "reference-numerics")


def test_timm_table_without_class_row(tmp_path):
    # timm's `no_embed_class`: the class token has no position row; hf_vit's is then zero (the same model).
    model = _random_model(hidden_act="gelu")
    tensors = state_dict_to_timm(model.state_dict(), model.config)
    tensors["pos_embed"] = tensors["pos_embed"][:, 1:].contiguous()
    again = load_timm(tensors, num_attention_heads=4)
    assert torch.equal(again.vit.embeddings.position_embeddings[:, 0], torch.zeros(1, 32))
    assert torch.equal(again.vit.embeddings.position_embeddings[:, 1:], model.vit.embeddings.position_embeddings[:, 1:])


def test_timm_refusals_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="representation_size"):
        save_timm(_random_model(representation_size=16), tmp_path / "a")
    with pytest.raises(ValueError, match="layer_norm_eps"):
        save_timm(_random_model(layer_norm_eps=1e-12), tmp_path / "b")
    tensors = state_dict_to_timm(_random_model(pooling="gap").state_dict(), _random_model(pooling="gap").config)
    tensors["fc_norm.weight"] = tensors.pop("norm.weight")
    tensors["fc_norm.bias"] = tensors.pop("norm.bias")
    # timm's fc_norm (average, then a LayerNorm of its own: MAE's fine-tuning) is hf_vit's layer_norm_after_pooling.
    loaded = load_timm(tensors, num_attention_heads=4)
    assert loaded.config.layer_norm_after_pooling and loaded.config.pooling == "gap"
    assert torch.equal(loaded.vit.pooler.layernorm.weight, tensors["fc_norm.weight"])
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


@pytest.mark.parametrize("overrides", [dict(hidden_act="gelu", layer_norm_eps=1e-12), dict(num_labels=0, representation_size=32)],
                         ids=["classifier", "bare-model-with-pooler"])
def test_transformers_round_trip_is_exact(overrides, tmp_path):
    import transformers

    model = _random_model(**overrides)
    save_transformers_vit(model, tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["model_type"] == "vit"
    pixel_values = images_for(model.config)
    with torch.no_grad():
        if model.config.num_labels:
            theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "t").eval()
            assert max_diff(theirs(pixel_values).logits, model(pixel_values).logits) < 1e-5
        else:
            theirs = transformers.ViTModel.from_pretrained(tmp_path / "t").eval()
            assert max_diff(theirs(pixel_values).pooler_output, model.vit(pixel_values).pooler_output) < 1e-5
    again, report = load_transformers(tmp_path / "t", output_loading_info=True)
    assert report.unused_keys == []
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert (again.config.hidden_act, again.config.layer_norm_eps) == (model.config.hidden_act, model.config.layer_norm_eps)


def test_transformers_refusals_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="pooling"):
        save_transformers_vit(_random_model(pooling="gap"), tmp_path / "a")
    with pytest.raises(ValueError, match="representation_size"):
        save_transformers_vit(_random_model(representation_size=16), tmp_path / "b")


# --------------------------------------------------------------------------------------------------------------------
# hf-vit convert


def _convert(*argv):
    return main(["convert", *map(str, argv)])


def test_cli_writes_a_complete_folder(tmp_path, capsys):
    import transformers

    import hf_vit  # noqa: F401

    arrays = vit_jax_arrays(representation_size=16)
    source = write_npz(tmp_path / "imagenet21k_ViT-Ti.npz", arrays)
    out = tmp_path / "converted"
    assert _convert(source, out) == 0
    printed = capsys.readouterr().out
    assert "max abs difference vs the reference Flax forward" in printed and "wrote" in printed
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "configuration_hf_vit.py",
            "modeling_hf_vit.py", "image_processing_hf_vit.py"} <= names
    assert "imagenet21k_ViT-Ti.npz" in (out / "README.md").read_text()
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}
    model = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    pixel_values = images_for(model.config)
    assert max_diff(logits_of(model, pixel_values), reference_outputs(arrays, pixel_values)["logits"]) < 1e-5
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".converted")]  # no temporary folder left


def test_cli_resolution_labels_and_shards(tmp_path, capsys):
    source = write_npz(tmp_path / "ckpt.npz", vit_jax_arrays())
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["cat", "dog"]))
    out = tmp_path / "out"
    assert _convert(source, out, "--image-size", "48", "--id2label", labels, "--max-shard-size", "50KB") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 48 and config["id2label"] == {"0": "cat", "1": "dog"}
    assert (out / "model.safetensors.index.json").exists()  # sharded at the requested size
    assert "resampled from a 4x4 to a 6x6 grid" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["transformers", "timm"])
def test_cli_exports(target, tmp_path):
    source = write_npz(tmp_path / "ckpt.npz", vit_jax_arrays())
    assert _convert(source, tmp_path / "hf", "--num-labels", "3") == 0
    assert _convert(tmp_path / "hf", tmp_path / target, "--to", target) == 0
    assert _convert(tmp_path / target, tmp_path / "back") == 0  # detected: transformers / timm folder
    first = ViTForImageClassification.from_pretrained(tmp_path / "hf")
    back = ViTForImageClassification.from_pretrained(tmp_path / "back")
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name


def _nothing_written(tmp_path, out):
    return not out.exists() and not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_cli_bad_input_writes_nothing(tmp_path, capsys):
    good = write_npz(tmp_path / "good.npz", vit_jax_arrays())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:3000])
    out = tmp_path / "out"
    cases = [
        ((truncated, out), r"truncated\.npz"),
        ((good, out, "--from", "timm"), r"good\.npz looks like a npz checkpoint.*not --from timm"),
        ((good, out, "--from", "transformers"), r"--from npz"),
        ((tmp_path / "absent.npz", out), r"absent\.npz: no such file"),
        ((good, out, "--image-size", "36"), r"image_size.*36.*divisible"),
    ]
    for argv, pattern in cases:
        assert _convert(*argv) == 2
        err = capsys.readouterr().err
        assert __import__("re").search(pattern, err), (argv, err)
        assert _nothing_written(tmp_path, out), argv
    # A config whose shapes do not fit: --num-heads only applies to timm; use a transformers folder that lies.
    folder = tmp_path / "lying"
    save_transformers_vit(_random_model(hidden_act="gelu"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    assert _convert(folder, out) == 2
    err = capsys.readouterr().err
    assert "lying" in err and "expected (" in err and "do not fit the config" in err
    assert _nothing_written(tmp_path, out)


def test_cli_never_touches_an_existing_output(tmp_path, capsys):
    source = write_npz(tmp_path / "ckpt.npz", vit_jax_arrays())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _convert(source, out) == 2
    assert "not empty" in capsys.readouterr().err and os.listdir(out) == ["keep.txt"]
    assert _convert(source, out, "--overwrite") == 0
    # --overwrite replaces what the conversion writes and leaves the user's other files alone.
    assert (out / "keep.txt").read_text() == "mine" and (out / "model.safetensors").exists()


def test_cli_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, capsys):
    source = write_npz(tmp_path / "ckpt.npz", vit_jax_arrays())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ViTForImageClassification, "save_pretrained", broken)
    out = tmp_path / "out"
    assert _convert(source, out) == 2
    assert "disk full" in capsys.readouterr().err
    assert _nothing_written(tmp_path, out)
