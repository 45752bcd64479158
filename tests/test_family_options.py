"""The architecture pieces of the checkpoints people fine-tune today (MAE, DeiT, DINOv2), checked against what each
computes by hand: LayerScale, register tokens, the distillation token and head, the gated (SwiGLU) MLP, the
"cls_and_gap" pooling, the LayerNorm after the pooling; their validation; and that they run as remote code where
hf_vit is not installed. Each option also runs the whole generic suite (tests/test_architecture_options.py), and the
families' checkpoints are compared with transformers' and timm's own models in tests/test_pretrained_families.py."""

import textwrap

import pytest
import torch
import torch.nn.functional as F

from hf_vit import ViTBackbone, ViTConfig, ViTForImageClassification, ViTModel
from hf_vit.modeling_hf_vit import DistilledImageClassifierOutput

from .common import TINY, labels_for, make_config, pixel_values_for, run_without_hf_vit


def _perturbed(cls=ViTModel, **overrides):
    torch.manual_seed(0)
    model = cls(make_config(**overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


# ---- LayerScale ------------------------------------------------------------------------------------------------------


def test_layer_scale_starts_at_its_init_value_and_scales_each_branch_per_channel():
    fresh = ViTModel(make_config(layer_scale_init_value=0.25))
    layer = fresh.encoder.layers[0]
    assert torch.equal(layer.layer_scale_attention.gamma, torch.full((32,), 0.25))
    assert torch.equal(layer.layer_scale_mlp.gamma, torch.full((32,), 0.25))
    assert not hasattr(ViTModel(make_config()).encoder.layers[0].layer_scale_attention, "gamma")

    # A block with LayerScale computes what the same block computes without it when each branch's last projection
    # (attention output, fc2) has its rows multiplied by gamma: x + diag(g) (W h + b) = x + (diag(g) W) h + g * b.
    scaled = _perturbed(layer_scale_init_value=1.0)
    plain = ViTModel(make_config()).eval()
    state = dict(scaled.state_dict())
    for i in range(2):
        prefix = f"encoder.layers.{i}."
        for scale, projection in (("layer_scale_attention", "attention.o_proj"), ("layer_scale_mlp", "mlp.fc2")):
            gamma = state.pop(f"{prefix}{scale}.gamma")
            state[f"{prefix}{projection}.weight"] = gamma[:, None] * state[f"{prefix}{projection}.weight"]
            state[f"{prefix}{projection}.bias"] = gamma * state[f"{prefix}{projection}.bias"]
    plain.load_state_dict(state)
    pixel_values = pixel_values_for(plain.config)
    with torch.no_grad():
        torch.testing.assert_close(scaled(pixel_values).last_hidden_state, plain(pixel_values).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


# ---- register tokens ------------------------------------------------------------------------------------------------


def test_registers_follow_the_class_token_without_position_embeddings():
    model = _perturbed(num_register_tokens=3)
    embeddings = model.embeddings
    assert model.config.num_prefix_tokens == 4 and model.config.num_prefix_positions == 1
    assert embeddings.position_embeddings.shape == (1, 1 + 16, 32)  # no rows for the registers
    pixel_values = pixel_values_for(model.config, batch_size=2)
    with torch.no_grad():
        patches, grid = embeddings.embed_patches(pixel_values)
        x = embeddings.add_positions(patches, grid)
    table = embeddings.position_embeddings[0]
    assert x.shape == (2, 4 + 16, 32)
    torch.testing.assert_close(x[:, 0], (embeddings.cls_token[0, 0] + table[0]).expand(2, -1), rtol=0, atol=0)
    torch.testing.assert_close(x[:, 1:4], embeddings.register_tokens.expand(2, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(x[:, 4:], patches + table[1:], rtol=0, atol=0)
    # At another resolution only the patch rows are resampled; the registers stay as they are.
    with torch.no_grad():
        patches, grid = embeddings.embed_patches(pixel_values_for(model.config, size=(48, 40)))
        x = embeddings.add_positions(patches, grid, interpolate_pos_encoding=True)
    assert x.shape == (2, 4 + 30, 32)
    torch.testing.assert_close(x[:, 1:4], embeddings.register_tokens.expand(2, -1, -1), rtol=0, atol=0)


def test_registers_take_no_part_in_pooling_or_the_feature_maps():
    for pooling in ("gap", "cls_and_gap", "max"):
        model = _perturbed(num_register_tokens=2, pooling=pooling, use_class_token=True)
        hidden = torch.randn(2, 3 + 16, 32, generator=torch.Generator().manual_seed(0))
        changed = hidden.clone()
        changed[:, 1:3] += 5.0  # the registers' outputs
        with torch.no_grad():
            torch.testing.assert_close(model.pooler(hidden), model.pooler(changed), rtol=0, atol=0, msg=pooling)
    torch.manual_seed(0)
    backbone = ViTBackbone(make_config(num_register_tokens=2, use_distillation_token=True, out_features=["stage2"]))
    pixel_values = pixel_values_for(backbone.config)
    with torch.no_grad():
        feature_map = backbone(pixel_values).feature_maps[0]
        hidden = backbone(pixel_values, output_hidden_states=True).hidden_states[-1]
    assert feature_map.shape == (2, 32, 4, 4)
    expected = backbone.layernorm(hidden)[:, 4:].transpose(1, 2).reshape(2, 32, 4, 4)  # class, distillation, 2 registers
    torch.testing.assert_close(feature_map, expected, rtol=0, atol=0)


# ---- distillation token and head ------------------------------------------------------------------------------------


def test_distillation_head_averages_the_two_heads_and_returns_both():
    model = _perturbed(ViTForImageClassification, use_distillation_token=True, head_zero_init=False)
    config = model.config
    assert config.num_prefix_tokens == 2 and model.vit.embeddings.position_embeddings.shape == (1, 2 + 16, 32)
    pixel_values, labels = pixel_values_for(config, batch_size=3), labels_for(config, 3)
    with torch.no_grad():
        out = model(pixel_values, labels=labels)
        tokens = model.vit(pixel_values).last_hidden_state
    assert isinstance(out, DistilledImageClassifierOutput)
    cls_logits = tokens[:, 0] @ model.classifier.weight.T + model.classifier.bias
    distillation_logits = tokens[:, 1] @ model.distillation_classifier.weight.T + model.distillation_classifier.bias
    torch.testing.assert_close(out.cls_logits, cls_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.distillation_logits, distillation_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, (cls_logits + distillation_logits) / 2, rtol=1e-5, atol=1e-6)
    # The loss is that of the averaged logits (no teacher).
    torch.testing.assert_close(out.loss, F.cross_entropy((cls_logits + distillation_logits) / 2, labels))
    # return_dict=False: (loss, logits, cls_logits, distillation_logits).
    with torch.no_grad():
        as_tuple = model(pixel_values, labels=labels, return_dict=False)
    assert len(as_tuple) == 4 and torch.equal(as_tuple[3], out.distillation_logits)


def test_distillation_token_without_head_is_deits_single_head_classifier():
    model = _perturbed(ViTForImageClassification, use_distillation_token=True, use_distillation_head=False,
                       head_zero_init=False)
    assert model.distillation_classifier is None
    pixel_values = pixel_values_for(model.config)
    with torch.no_grad():
        out = model(pixel_values)
        tokens = model.vit(pixel_values).last_hidden_state
    assert type(out).__name__ == "ImageClassifierOutput"
    torch.testing.assert_close(out.logits, model.classifier(tokens[:, 0]), rtol=1e-5, atol=1e-6)


def test_a_new_label_set_gets_two_new_zero_heads(tmp_path):
    model = _perturbed(ViTForImageClassification, use_distillation_token=True, head_zero_init=False)
    model.save_pretrained(tmp_path)
    again = ViTForImageClassification.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    for head in (again.classifier, again.distillation_classifier):
        assert head.weight.shape == (7, 32) and head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0
    torch.testing.assert_close(again.vit.embeddings.distillation_token, model.vit.embeddings.distillation_token)


# ---- gated MLP, cls_and_gap, LayerNorm after the pooling -------------------------------------------------------------


def test_gated_mlp_is_swiglu_with_the_gate_first():
    model = _perturbed(mlp_type="gated", hidden_act="silu", intermediate_size=24)
    mlp = model.encoder.layers[0].mlp
    assert mlp.fc1.weight.shape == (48, 32) and mlp.fc2.weight.shape == (32, 24)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    gate = x @ mlp.fc1.weight[:24].T + mlp.fc1.bias[:24]
    value = x @ mlp.fc1.weight[24:].T + mlp.fc1.bias[24:]
    expected = (gate * torch.sigmoid(gate) * value) @ mlp.fc2.weight.T + mlp.fc2.bias
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)


def test_cls_and_gap_concatenates_the_class_token_and_the_patch_mean():
    model = _perturbed(ViTForImageClassification, pooling="cls_and_gap", use_distillation_token=True,
                       num_register_tokens=2, head_zero_init=False)
    assert model.config.use_class_token and model.config.pooled_size == 64
    assert model.classifier.weight.shape == (3, 64)
    pixel_values = pixel_values_for(model.config)
    with torch.no_grad():
        base = model.vit(pixel_values)
    tokens = base.last_hidden_state
    torch.testing.assert_close(base.pooler_output, torch.cat([tokens[:, 0], tokens[:, 4:].mean(1)], dim=-1))


def test_layer_norm_after_pooling_normalises_the_pooled_vector_only():
    model = _perturbed(pooling="gap", layer_norm_after_pooling=True, use_class_token=True)
    assert isinstance(model.layernorm, torch.nn.Identity)
    assert not any(name.startswith("layernorm.") for name, _ in model.named_parameters())
    pixel_values = pixel_values_for(model.config)
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
    # The tokens leave the encoder as the last block outputs them ...
    torch.testing.assert_close(out.last_hidden_state, out.hidden_states[-1], rtol=0, atol=0)
    # ... and the pooled vector is LayerNorm(mean of the patch tokens), with the pooler's own LayerNorm.
    norm = model.pooler.layernorm
    expected = F.layer_norm(out.last_hidden_state[:, 1:].mean(1), (32,), norm.weight, norm.bias, eps=1e-6)
    torch.testing.assert_close(out.pooler_output, expected, rtol=1e-5, atol=1e-6)
    # A fresh one starts as the identity LayerNorm.
    fresh = ViTModel(make_config(pooling="gap", layer_norm_after_pooling=True))
    assert torch.equal(fresh.pooler.layernorm.weight, torch.ones(32))
    assert torch.equal(fresh.pooler.layernorm.bias, torch.zeros(32))


def test_new_tokens_and_scales_take_no_weight_decay_and_sit_in_the_embeddings_layer():
    model = ViTForImageClassification(make_config(use_distillation_token=True, num_register_tokens=2,
                                                  layer_scale_init_value=1e-5))
    no_decay = model.no_weight_decay_parameter_names()
    for name in ("vit.embeddings.distillation_token", "vit.embeddings.register_tokens",
                 "vit.encoder.layers.0.layer_scale_attention.gamma"):
        assert name in no_decay
    ids = model.parameter_layer_ids()
    assert ids["vit.embeddings.register_tokens"] == 0 and ids["distillation_classifier.weight"] == 3


# ---- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_register_tokens": -1}, "`num_register_tokens` must be an integer >= 0"),
        ({"num_register_tokens": 1.5}, "`num_register_tokens` must be an integer >= 0"),
        ({"use_distillation_token": True, "pooling": "gap"}, "needs `use_class_token=True`"),
        ({"use_distillation_head": True}, "needs `use_distillation_token=True`"),
        ({"use_distillation_token": True, "representation_size": 16}, "no pre-logits layer"),
        ({"use_distillation_token": True, "layer_norm_after_pooling": True}, "layer_norm_after_pooling"),
        ({"use_distillation_token": "yes"}, "`use_distillation_token` must be True or False"),
        ({"layer_scale_init_value": 0}, "`layer_scale_init_value` must be None"),
        ({"layer_scale_init_value": "1e-5"}, "`layer_scale_init_value` must be None"),
        ({"mlp_type": "swiglu"}, r"`mlp_type` must be one of \['dense', 'gated'\]"),
        ({"pooling": "cls_and_gap", "use_class_token": False}, "reads the class token"),
        ({"layer_norm_after_pooling": 1}, "`layer_norm_after_pooling` must be True or False"),
        ({"position_embedding_antialias": None}, "`position_embedding_antialias` must be True or False"),
    ],
)
def test_validation_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_counts_and_defaults():
    config = make_config(use_distillation_token=True, num_register_tokens=4)
    assert (config.num_prefix_tokens, config.num_prefix_positions, config.use_distillation_head) == (6, 2, True)
    assert make_config(pooling="cls_and_gap").use_class_token is True
    assert make_config().num_prefix_tokens == 1 and make_config(pooling="gap").num_prefix_tokens == 0


# ---- remote code ----------------------------------------------------------------------------------------------------

_REMOTE_SCRIPT = textwrap.dedent(
    """
    import torch, transformers

    pixel_values = torch.load(sys.argv[1])
    report = {}
    for folder in sys.argv[2:]:
        model = transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            out = model(pixel_values)
            hidden = base(pixel_values).last_hidden_state
        report[folder] = {
            "module": type(model).__module__,
            "logits": out.logits.tolist(),
            "distillation_logits": getattr(out, "distillation_logits", None) is not None,
            "hidden": hidden.tolist(),
        }
    print(json.dumps(report))
    """
)

REMOTE_VARIANTS = {
    "distilled": {"use_distillation_token": True, "head_zero_init": False},
    "dinov2_reg_g": {"num_register_tokens": 2, "layer_scale_init_value": 1e-5, "mlp_type": "gated",
                     "hidden_act": "silu", "pooling": "cls_and_gap", "position_embedding_interpolation": "bicubic",
                     "position_embedding_align_corners": False, "position_embedding_antialias": True,
                     "head_zero_init": False},
    "mae_fine_tuning": {"pooling": "gap", "use_class_token": True, "layer_norm_after_pooling": True,
                        "head_zero_init": False},
}


def test_the_new_options_run_as_remote_code_without_hf_vit(tmp_path):
    pixel_values = pixel_values_for(ViTConfig(**TINY))
    torch.save(pixel_values, tmp_path / "pixels.pt")
    expected, folders = {}, []
    for name, overrides in REMOTE_VARIANTS.items():
        model = _perturbed(ViTForImageClassification, **overrides)
        folder = tmp_path / name
        model.save_pretrained(folder)
        base = ViTModel.from_pretrained(folder).eval()
        with torch.no_grad():
            expected[str(folder)] = (model(pixel_values).logits, base(pixel_values).last_hidden_state)
        folders.append(folder)
    result = run_without_hf_vit(_REMOTE_SCRIPT, tmp_path / "pixels.pt", *folders, tmp_path=tmp_path)
    for folder, (logits, hidden) in expected.items():
        got = result[folder]
        assert got["module"].startswith("transformers_modules"), got["module"]
        torch.testing.assert_close(torch.tensor(got["logits"]), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.tensor(got["hidden"]), hidden, rtol=1e-5, atol=1e-5)
        assert got["distillation_logits"] == folder.endswith("distilled")
