"""Loading transformers' own ViT checkpoints into hf_vit, and exporting back (parity with transformers' ViT).

Tolerance: both sides compute the same fp32 graph (same GELU, eps and weights); only the fused q/k/v matmul and
the attention kernel differ, which agree to ~1e-6 here. The issue asks for 1e-5.
"""

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from hf_vit import ViTConfig, ViTForImageClassification, ViTModel
from hf_vit.transformers_vit_format import state_dict_from_transformers_vit, state_dict_to_transformers_vit


TINY_T = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
B16_T = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224, patch_size=16)


def _randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _transformers_classifier(shape, num_labels=5):
    torch.manual_seed(0)
    config = transformers.ViTConfig(**shape, num_labels=num_labels, id2label={i: f"class_{i}" for i in range(num_labels)},
                                    label2id={f"class_{i}": i for i in range(num_labels)})
    return _randomise(transformers.ViTForImageClassification(config))


def _save_with_5x_names(model, path):
    # What `torch.save(model.state_dict())`-style exports of transformers 5.x hold: the in-memory names.
    model.config.save_pretrained(path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))


@pytest.mark.parametrize("names", ["legacy_4x", "current_5x"])
def test_tiny_classifier_gives_the_same_logits(names, tmp_path):
    reference = _transformers_classifier(TINY_T)
    if names == "legacy_4x":
        reference.save_pretrained(tmp_path)
        keys = json.dumps(list(__import__("safetensors").safe_open(str(tmp_path / "model.safetensors"), "pt").keys()))
        assert "encoder.layer.0.attention.attention.query.weight" in keys  # transformers really writes 4.x names
    else:
        _save_with_5x_names(reference, tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(model.config, ViTConfig) and model.config.model_type == "hf_vit"
    assert (model.config.hidden_act, model.config.layer_norm_eps) == ("gelu", 1e-12)
    assert model.config.id2label[3] == "class_3"
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = reference(pixel_values).logits, model(pixel_values).logits
    assert (got - expected).abs().max() < 1e-5
    # Saving writes hf_vit's own format, which loads back alike.
    model.save_pretrained(tmp_path / "hf_vit")
    saved = json.loads((tmp_path / "hf_vit" / "config.json").read_text())
    assert saved["model_type"] == "hf_vit"
    again = ViTForImageClassification.from_pretrained(tmp_path / "hf_vit").eval()
    with torch.no_grad():
        assert torch.equal(again(pixel_values).logits, got)


@pytest.mark.parametrize("names", ["legacy_4x", "current_5x"])
def test_b16_classifier_gives_the_same_logits(names, tmp_path):
    reference = _transformers_classifier(B16_T, num_labels=10)
    reference.save_pretrained(tmp_path) if names == "legacy_4x" else _save_with_5x_names(reference, tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        difference = (model(pixel_values).logits - reference(pixel_values).logits).abs().max().item()
    assert difference < 1e-5, difference


def test_base_model_pooler_becomes_the_tanh_pre_logits_layer(tmp_path):
    torch.manual_seed(0)
    reference = _randomise(transformers.ViTModel(transformers.ViTConfig(**TINY_T)))
    reference.save_pretrained(tmp_path)
    model = ViTModel.from_pretrained(tmp_path).eval()
    assert model.config.representation_size == 32
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = reference(pixel_values), model(pixel_values)
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() < 1e-5
    assert (a.pooler_output - b.pooler_output).abs().max() < 1e-5
    # Into a classifier for new labels: the encoder and pre-logits load, a new zero head is made.
    classifier = ViTForImageClassification.from_pretrained(tmp_path, num_labels=4)
    assert classifier.config.num_labels == 4 and classifier.classifier.weight.abs().sum() == 0
    torch.testing.assert_close(classifier.vit.pooler.dense.weight, reference.pooler.dense.weight)


def test_config_overrides_and_dtype_pass_through(tmp_path):
    _transformers_classifier(TINY_T).save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"


def test_pickle_checkpoints_are_an_explicit_opt_in(tmp_path):
    reference = _transformers_classifier(TINY_T)
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="use_safetensors=False"):
        ViTForImageClassification.from_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path, use_safetensors=False).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (model(pixel_values).logits - reference(pixel_values).logits).abs().max() < 1e-5


def test_unknown_keys_are_reported_not_dropped():
    with pytest.raises(ValueError, match="vit.encoder.layer.0.attention.attention.rel_pos"):
        state_dict_from_transformers_vit({"vit.encoder.layer.0.attention.attention.rel_pos.weight": torch.zeros(1)})


def test_export_to_transformers_round_trips(tmp_path):
    torch.manual_seed(0)
    ours = ViTForImageClassification(ViTConfig(**TINY_T, num_labels=5, hidden_act="gelu", layer_norm_eps=1e-12))
    _randomise(ours)
    exported = state_dict_to_transformers_vit(ours.state_dict())
    reference = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY_T, num_labels=5)).eval()
    # transformers renames 4.x keys on load; load through its own from_pretrained to exercise that path.
    reference.config.save_pretrained(tmp_path)
    save_file(exported, str(tmp_path / "model.safetensors"))
    reference = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (reference(pixel_values).logits - ours.eval()(pixel_values).logits).abs().max() < 1e-5
    assert state_dict_from_transformers_vit(exported).keys() == ours.state_dict().keys()
