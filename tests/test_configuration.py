"""ViTConfig: validation with clear errors, the paper's variant table, serialisation."""

import pytest
import torch

from hf_vit import VIT_VARIANTS, ViTConfig, ViTForImageClassification

from .common import TINY


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
        ({"image_size": 30, "patch_size": 8}, "image_size"),
        ({"image_size": [32, 30], "patch_size": 8}, "image_size"),
        ({"image_size": [32, 32, 32]}, "image_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_hidden_layers": -1}, "num_hidden_layers"),
        ({"num_attention_heads": 2.5}, "num_attention_heads"),
        ({"patch_size": 0}, "patch_size"),
        ({"intermediate_size": True}, "intermediate_size"),
        ({"num_channels": 0}, "num_channels"),
        ({"pooling": "avg"}, "pooling"),
        ({"classifier": "mean"}, "classifier"),
        ({"position_embedding_type": "rope"}, "position_embedding_type"),
        ({"position_embedding_interpolation": "nearest"}, "position_embedding_interpolation"),
        ({"hidden_act": "swoosh"}, "hidden_act"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"attention_probs_dropout_prob": -0.1}, "attention_probs_dropout_prob"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"representation_size": 0}, "representation_size"),
        ({"qkv_bias": "yes"}, "qkv_bias"),
        ({"pooling": "cls", "use_class_token": False}, "pooling"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        ViTConfig(**{**TINY, **overrides})


def test_choice_errors_list_the_allowed_values():
    with pytest.raises(ValueError, match=r"\['cls', 'gap'"):
        ViTConfig(pooling="avg")


def test_model_rechecks_a_config_edited_after_creation():
    config = ViTConfig(**TINY)
    config.num_attention_heads = 5
    with pytest.raises(ValueError, match="`hidden_size` \\(32\\) must be divisible by `num_attention_heads` \\(5\\)"):
        ViTForImageClassification(config)


def test_defaults_follow_the_reference_code():
    config = ViTConfig()
    assert (config.hidden_act, config.layer_norm_eps) == ("gelu_pytorch_tanh", 1e-6)
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (224, 16, 768, 12)
    assert config.pooling == "cls" and config.use_class_token and config.representation_size is None
    assert config.head_zero_init and config.qkv_bias
    assert config.model_type == "hf_vit"


def test_paper_aliases_for_the_classifier():
    assert ViTConfig(classifier="token").pooling == "cls"
    gap = ViTConfig(classifier="gap")
    assert gap.pooling == "gap" and not gap.use_class_token


# Table 1 of the paper (Ti and S from DeiT); the paper's L count is ViT-L/32's (its larger patch projection).
PAPER_PARAMS = {"Ti/16": 5.7e6, "S/16": 22e6, "B/16": 86e6, "L/32": 307e6, "H/14": 632e6}


@pytest.mark.parametrize("variant, expected", PAPER_PARAMS.items())
def test_variant_table_matches_the_paper(variant, expected):
    config = ViTConfig.from_variant(variant, num_labels=1000)
    size = variant.split("/")[0]
    layers, hidden, mlp, heads = VIT_VARIANTS[size]
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads) == (layers, hidden, mlp, heads)
    assert config.patch_size == int(variant.split("/")[1])
    with torch.device("meta"):  # no memory, no init: just count
        model = ViTForImageClassification(config)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / expected - 1) < 0.015, f"{variant}: {params / 1e6:.1f}M vs paper {expected / 1e6:.1f}M"


def test_from_variant_takes_any_patch_size_and_overrides():
    config = ViTConfig.from_variant("L/14", image_size=518, num_labels=7)
    assert (config.patch_size, config.image_size, config.num_labels, config.num_hidden_layers) == (14, 518, 7, 24)


@pytest.mark.parametrize("name", ["B16", "X/16", "B/", "b/16", "B/16/2", None])
def test_unknown_variant_is_a_clear_error(name):
    with pytest.raises(ValueError, match="Unknown variant"):
        ViTConfig.from_variant(name)


def test_json_round_trip(tmp_path):
    config = ViTConfig(**{**TINY, "image_size": [32, 48], "patch_size": [8, 16], "pooling": "gap", "representation_size": 16})
    config.save_pretrained(tmp_path)
    loaded = ViTConfig.from_pretrained(tmp_path)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.image_hw == (32, 48) and loaded.grid_size == (4, 3) and loaded.num_patches == 12
    assert not loaded.use_class_token and loaded.num_prefix_tokens == 0


def test_json_round_trip_of_a_hybrid_with_options(tmp_path):
    config = ViTConfig.from_variant(
        "R50+B/16", image_size=384, position_embedding_type="relative", pooling="ggem", drop_path_rate=0.1,
        out_features=["stage4", "stage12"],
    )
    config.save_pretrained(tmp_path)
    loaded = ViTConfig.from_pretrained(tmp_path)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.backbone_depths == [3, 4, 9] and loaded.token_pixel_size == (16, 16) and loaded.grid_size == (24, 24)
    assert loaded.out_features == ["stage4", "stage12"] and loaded.out_indices == [4, 12]
    assert not loaded.use_class_token and loaded.num_prefix_tokens == 0


def test_a_plain_config_json_holds_no_backbone_selection(tmp_path):
    import json

    ViTConfig(**TINY).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["out_features"] is None and saved["out_indices"] is None and "stage_names" not in saved
    loaded = ViTConfig.from_pretrained(tmp_path)
    assert loaded.backbone_depths is None and loaded.stage_names == ["stem", "stage1", "stage2"]
