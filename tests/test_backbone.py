"""ViTBackbone (AutoBackbone, feature maps for dense tasks) and the image-feature-extraction pipeline."""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from hf_vit import ViTBackbone, ViTForImageClassification, ViTImageProcessor, ViTModel

from .common import TINY_HYBRID, ModelTesterMixin, make_config, pixel_values_for


class TestViTBackbone(ModelTesterMixin):
    model_class = ViTBackbone
    variants = {
        "default": {},  # the last block
        "stages": {"out_features": ["stem", "stage1", "stage2"]},
        "hybrid": {**TINY_HYBRID, "out_indices": [1, 2]},
    }
    has_labels = False


def _saved_classifier(path, **overrides):
    torch.manual_seed(0)
    model = ViTForImageClassification(make_config(head_zero_init=False, **overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return model


def test_stage_names_and_defaults():
    config = make_config()
    assert config.stage_names == ["stem", "stage1", "stage2"]
    assert config.out_features is None  # nothing chosen: a plain config's JSON does not change
    backbone = ViTBackbone(config)
    assert backbone.out_features == ["stage2"] and backbone.out_indices == [2]
    assert backbone.channels == [32]
    chosen = make_config(out_indices=[0, -1])
    assert chosen.out_features == ["stem", "stage2"]
    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        make_config(out_features=["stage3"])


def test_feature_maps_are_the_normalised_patch_tokens_of_the_chosen_blocks(tmp_path):
    classifier = _saved_classifier(tmp_path, **TINY_HYBRID)
    backbone = ViTBackbone.from_pretrained(tmp_path, out_features=["stage1", "stage2"]).eval()
    pixel_values = pixel_values_for(classifier.config)
    with torch.no_grad():
        maps = backbone(pixel_values).feature_maps
        hidden = classifier.vit(pixel_values, output_hidden_states=True).hidden_states
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4)] * 2
    for feature_map, state in zip(maps, hidden[1:]):
        tokens = classifier.vit.layernorm(state)[:, 1:]  # (B, 16, D) in raster order
        torch.testing.assert_close(feature_map, tokens.transpose(1, 2).reshape(2, 32, 4, 4), rtol=0, atol=0)
        # Raster order: token r * cols + c is feature_map[:, :, r, c].
        torch.testing.assert_close(feature_map[:, :, 1, 3], tokens[:, 1 * 4 + 3], rtol=0, atol=0)


def test_auto_backbone_resolves_to_vit_backbone(tmp_path):
    _saved_classifier(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path, out_indices=[1])
    backbone = transformers.AutoBackbone.from_config(config)
    assert isinstance(backbone, ViTBackbone) and backbone.out_features == ["stage1"]
    # Dense-task models build their backbone this way from a `backbone_config`.
    from transformers.backbone_utils import load_backbone

    assert isinstance(load_backbone(make_config()), ViTBackbone)
    saved = (tmp_path / "config.json").read_text()
    assert '"AutoBackbone": "modeling_hf_vit.ViTBackbone"' in saved


def test_image_feature_extraction_pipeline(tmp_path):
    model = _saved_classifier(tmp_path)
    extractor = transformers.pipeline("image-feature-extraction", model=str(tmp_path))
    assert isinstance(extractor.model, ViTModel)
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    features = extractor(image, return_tensors=True)
    pooled = extractor(image, return_tensors=True, pool=True)
    pixel_values = ViTImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.vit(pixel_values)
    assert features.shape == (1, 1 + 16, 32)
    torch.testing.assert_close(features, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected.pooler_output, rtol=1e-5, atol=1e-5)
