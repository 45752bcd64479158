"""Conversion parity against independent implementations (marker `parity`).

- timm (skipped where timm is not installed; run with the benchmark environment's python): hf_vit loading an .npz
  gives the logits of timm's own .npz loader (`timm.models.vision_transformer._load_weights`) on the same file, with
  timm's exact GELU and timm's position-embedding resampling (bilinear, half-pixel) pinned on the hf_vit side;
  timm state dicts and hf_vit's timm export give timm's own logits.
- jax (skipped where jax is not installed here and `HF_VIT_JAX_PYTHON` does not name a python that has it): the
  reference Flax forward computed with jax from the same file.
Tolerance 1e-5: the same fp32 model computed by other kernels (measured: 0 to 1e-6 against timm, ~1e-6 against jax).
"""

import importlib.util
import os
import subprocess

import numpy as np
import pytest
import torch

from hf_vit.conversion import jax_reference, load_npz, load_timm, save_timm

from .test_conversion import _random_model, big_vision_arrays, images_for, max_diff, vit_jax_arrays, write_npz


pytestmark = pytest.mark.parity

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (it needs torchvision); see bench/README.md")
TOLERANCE = 1e-5


def _timm_vit(config, **extra):
    """timm's VisionTransformer with the architecture of an hf_vit config (exact GELU: timm's default)."""
    from timm.models.vision_transformer import VisionTransformer

    args = dict(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.hidden_size,
        depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size, class_token=config.use_class_token,
        global_pool={"cls": "token", "gap": "avg", "map": "map"}[config.pooling], fc_norm=False,
        num_classes=config.num_labels,
    )
    return VisionTransformer(**{**args, **extra}).eval()


NPZ_CASES = {
    "vit_jax-token": (lambda: vit_jax_arrays(), {}),
    "vit_jax-gap": (lambda: vit_jax_arrays(classifier="gap"), {}),
    # timm has no pre-logits layer: its model is built without a head and compared up to the final LayerNorm.
    "vit_jax-in21k-pre_logits": (lambda: vit_jax_arrays(representation_size=16), {"num_classes": 0}),
    "big_vision-tok": (lambda: big_vision_arrays(pool_type="tok"), {"no_embed_class": True}),
    "big_vision-gap-scanned": (lambda: big_vision_arrays(pool_type="gap", scan=True), {}),
    "big_vision-map": (lambda: big_vision_arrays(pool_type="map"), {}),
}


@needs_timm
@pytest.mark.parametrize("case", list(NPZ_CASES))
@pytest.mark.parametrize("image_size", [32, 48], ids=["source-resolution", "resampled"])
def test_npz_matches_timms_loader(case, image_size, tmp_path):
    from timm.models.vision_transformer import _load_weights

    make, timm_extra = NPZ_CASES[case]
    path = write_npz(tmp_path / f"{case}.npz", make())
    # timm's choices pinned on the hf_vit side: exact GELU, half-pixel bilinear resampling.
    model, report = load_npz(path, image_size=image_size, hidden_act="gelu", position_embedding_align_corners=False,
                             output_loading_info=True)
    reference = _timm_vit(model.config, **timm_extra)
    _load_weights(reference, str(path))
    pixel_values = images_for(model.config)
    with torch.no_grad():
        ours = model.vit(pixel_values)
        theirs = reference.forward_features(pixel_values)
        encoded = max_diff(ours.last_hidden_state, theirs)
        if model.config.representation_size is None:  # timm has no pre-logits layer and does not load it
            logits = max_diff(model.classifier(ours.pooler_output), reference.forward_head(theirs))
            assert logits < TOLERANCE, logits
    assert encoded < TOLERANCE, encoded


@needs_timm
def test_b16_npz_matches_timms_loader(tmp_path):
    from timm.models.vision_transformer import _load_weights

    arrays = vit_jax_arrays(layers=12, width=768, heads=12, mlp=3072, patch=16, grid=14, num_classes=10, scale=0.02)
    path = write_npz(tmp_path / "ViT-B_16.npz", arrays)
    model = load_npz(path, hidden_act="gelu")
    reference = _timm_vit(model.config)
    _load_weights(reference, str(path))
    pixel_values = images_for(model.config, batch=1)
    with torch.no_grad():
        difference = max_diff(model(pixel_values).logits, reference(pixel_values))
    assert difference < TOLERANCE, difference


# timm's numerics for its hybrids' ResNet, pinned on the hf_vit side (the reference code's are 1e-6 / std + 1e-5).
TIMM_BACKBONE = dict(backbone_group_norm_eps=1e-5, backbone_weight_standardization="sqrt_var_plus_eps",
                     backbone_weight_standardization_eps=1e-8)
HYBRID_CASES = {
    # name: (npz arrays, timm entry point, its transformer arguments)
    "R26+tiny": (lambda: vit_jax_arrays(patch=1, grid=2, resnet=((2, 2, 2, 2), 64)), "vit_small_r26_s32_224",
                 dict(img_size=64, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)),
    "stem-only+tiny": (lambda: vit_jax_arrays(patch=8, grid=2, resnet=((), 64)), "vit_tiny_r_s16_p8_224",
                       dict(img_size=64, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)),
    "R50+B/16": (lambda: vit_jax_arrays(layers=12, width=768, heads=12, mlp=3072, patch=1, grid=14, num_classes=10,
                                        resnet=((3, 4, 9), 64), scale=0.02), "vit_base_r50_s16_224", dict(num_classes=10)),
}


@needs_timm
@pytest.mark.parametrize("case", list(HYBRID_CASES))
def test_hybrid_npz_matches_timms_loader(case, tmp_path):
    import timm
    from timm.models.vision_transformer import _load_weights

    make, architecture, timm_args = HYBRID_CASES[case]
    path = write_npz(tmp_path / "hybrid.npz", make())
    model, report = load_npz(path, hidden_act="gelu", output_loading_info=True, **TIMM_BACKBONE)
    assert report.unused_keys == []
    reference = timm.create_model(architecture, pretrained=False, **timm_args).eval()
    _load_weights(reference, str(path))
    # hf_vit runs the ResNet channels-last on a CPU (`channels_last_on_cpu`); timm's in the same memory format, so
    # that both use the same convolution kernels and the comparison checks the weights, not fp32 summation order
    # (contiguous against channels-last: 1.3-2.1e-5 on R26's unit-scale random weights, logits up to 2.4).
    reference = reference.to(memory_format=torch.channels_last)
    pixel_values = images_for(model.config, batch=1)
    with torch.no_grad():
        difference = max_diff(model(pixel_values).logits,
                              reference(pixel_values.contiguous(memory_format=torch.channels_last)))
    print(f"{case}: max |hf_vit - timm's .npz loader| = {difference:.3g}")
    assert difference < TOLERANCE, difference


@needs_timm
@pytest.mark.parametrize(
    "architecture, timm_args",
    [
        ("vit_base_patch16_224", dict()),
        ("vit_base_patch16_224", dict(global_pool="avg", class_token=False, fc_norm=False)),
        ("vit_base_patch16_224", dict(no_embed_class=True)),
        ("vit_base_patch16_224", dict(qkv_bias=False)),
        ("vit_tiny_r_s16_p8_224", dict(img_size=64)),
        ("vit_small_r26_s32_224", dict(img_size=64, patch_size=1)),
    ],
    ids=["token", "gap", "no-embed-class", "no-qkv-bias", "hybrid-stem-only", "hybrid-R26"],
)
def test_timm_state_dicts_give_timms_logits(architecture, timm_args, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    shape = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=7)
    reference = timm.create_model(architecture, pretrained=False, **{**shape, **timm_args}).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.1)
    save_file(reference.state_dict(), str(tmp_path / "timm.safetensors"))
    overrides = {"pooling": "gap"} if timm_args.get("global_pool") == "avg" else {}
    model, report = load_timm(tmp_path / "timm.safetensors", num_attention_heads=4, check=True,
                              output_loading_info=True, **overrides)
    assert report.unused_keys == [] and report.max_abs_difference["timm"] < TOLERANCE
    pixel_values = torch.randn(2, 3, *model.config.image_hw)
    with torch.no_grad():
        assert max_diff(model(pixel_values).logits, reference(pixel_values)) < TOLERANCE


@needs_timm
@pytest.mark.parametrize(
    "overrides",
    [dict(hidden_act="gelu"), dict(pooling="gap"), dict(image_size=64, backbone_depths=[2, 2, 2, 2], patch_size=1, **TIMM_BACKBONE)],
    ids=["exact-gelu-cls", "tanh-gelu-gap", "hybrid-R26"],
)
def test_timm_export_loads_in_timm(overrides, tmp_path):
    import timm

    model = _random_model(**overrides)
    save_timm(model, tmp_path / "timm")
    exported = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    pixel_values = torch.randn(2, 3, *model.config.image_hw)
    with torch.no_grad():
        assert max_diff(exported(pixel_values), model(pixel_values).logits) < TOLERANCE


# --------------------------------------------------------------------------------------------------------------------
# jax


def _jax_runner():
    """A function (npz path, images NHWC) -> reference outputs computed with jax, or None."""
    if importlib.util.find_spec("jax") is not None:
        return lambda path, images: jax_reference.forward(jax_reference.load_npz(path), images, backend="jax")
    python = os.environ.get("HF_VIT_JAX_PYTHON")
    if not python:
        return None

    def run(path, images):
        folder = os.path.dirname(path)
        np.save(os.path.join(folder, "images.npy"), images)
        out = os.path.join(folder, "jax_out.npz")
        script = jax_reference.__file__  # runs stand-alone: numpy and jax only
        subprocess.run([python, script, str(path), os.path.join(folder, "images.npy"), out, "--backend", "jax"], check=True)
        with np.load(out) as result:
            return {k: result[k] for k in result.files}

    return run


JAX = _jax_runner()
needs_jax = pytest.mark.skipif(JAX is None, reason="jax is not installed here and HF_VIT_JAX_PYTHON is not set")
JAX_CASES = {
    "vit_jax-released-token": lambda: vit_jax_arrays(),
    "vit_jax-linen-gap-pre_logits": lambda: vit_jax_arrays(numbering="linen", classifier="gap", representation_size=24),
    "big_vision-map-scanned": lambda: big_vision_arrays(pool_type="map", scan=True, prefix=""),
    "ViT-B_16-in21k": lambda: vit_jax_arrays(layers=12, width=768, heads=12, mlp=3072, patch=16, grid=14,
                                             representation_size=768, num_classes=10, scale=0.02),
    "hybrid-R[1,1]-old-groupnorm": lambda: vit_jax_arrays(patch=1, grid=2, resnet=((1, 1), 32), old_group_norm=True),
    "R50+ViT-B_16": lambda: vit_jax_arrays(layers=12, width=768, heads=12, mlp=3072, patch=1, grid=14, num_classes=10,
                                           resnet=((3, 4, 9), 64), scale=0.02),
}


@needs_jax
@pytest.mark.parametrize("case", list(JAX_CASES))
def test_npz_matches_the_reference_forward_in_jax(case, tmp_path):
    arrays = JAX_CASES[case]()
    path = write_npz(tmp_path / f"{case}.npz", arrays)
    model = load_npz(path)
    pixel_values = images_for(model.config, batch=1 if "B_16" in case else 2)
    expected = JAX(str(path), pixel_values.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        ours = model.vit(pixel_values)
        logits = model.classifier(ours.pooler_output)
    difference = max_diff(logits, expected["logits"])
    print(f"{case}: max |hf_vit - jax reference| = {difference:.3g} (logits up to {np.abs(expected['logits']).max():.3g})")
    assert difference < TOLERANCE
    # Every token after the final LayerNorm: fp32 noise of the hybrid's 50-layer ResNet reaches ~2e-4 here.
    assert max_diff(ours.last_hidden_state, expected["encoded"]) < 1e-4 * max(1.0, np.abs(expected["encoded"]).max())
