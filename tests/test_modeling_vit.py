"""ViTModel and ViTForImageClassification through the generic suite, plus what is unique to them."""

import math

import pytest
import torch

from hf_vit import ViTConfig, ViTForImageClassification, ViTModel
from hf_vit.modeling_hf_vit import resample_position_embeddings

from .common import ModelTesterMixin, labels_for, make_config, pixel_values_for


# Every architecture option of the core model; each runs the whole generic suite.
VARIANTS = {
    "default": {},
    "gap": {"pooling": "gap"},
    "gap_with_class_token": {"pooling": "gap", "use_class_token": True},
    "pre_logits": {"representation_size": 24},
    "no_qkv_bias": {"qkv_bias": False},
    "non_square": {"image_size": [32, 48], "patch_size": [8, 16]},
    "exact_gelu": {"hidden_act": "gelu", "layer_norm_eps": 1e-12},
    "bicubic_resampling": {"position_embedding_interpolation": "bicubic", "position_embedding_align_corners": False},
}


class TestViTModel(ModelTesterMixin):
    model_class = ViTModel
    variants = VARIANTS
    has_labels = False


class TestViTForImageClassification(ModelTesterMixin):
    model_class = ViTForImageClassification
    variants = VARIANTS


# ---- the head and the losses ---------------------------------------------------------------------------------------


def test_fine_tuning_head_starts_at_zero_and_pretraining_head_has_tanh_pre_logits():
    model = ViTForImageClassification(make_config())
    assert model.classifier.weight.abs().sum() == 0 and model.classifier.bias.abs().sum() == 0
    assert model.vit.pooler.dense is None

    model = ViTForImageClassification(make_config(representation_size=24, head_zero_init=False))
    assert model.vit.pooler.dense.out_features == 24 and model.classifier.in_features == 24
    assert model.classifier.weight.abs().sum() > 0
    with torch.no_grad():
        pooled = model.vit(pixel_values_for(model.config)).pooler_output
    assert pooled.abs().max() <= 1.0  # tanh range


@pytest.mark.parametrize(
    "problem_type, num_labels, make_labels, reference",
    [
        ("single_label_classification", 3, lambda: torch.tensor([0, 2]), torch.nn.functional.cross_entropy),
        ("multi_label_classification", 3, lambda: torch.tensor([[1.0, 0, 1], [0, 1, 0]]), torch.nn.functional.binary_cross_entropy_with_logits),
        ("regression", 1, lambda: torch.tensor([0.5, -1.0]), lambda logits, y: torch.nn.functional.mse_loss(logits.squeeze(-1), y)),
    ],
)
def test_losses_follow_problem_type(problem_type, num_labels, make_labels, reference):
    model = ViTForImageClassification(make_config(num_labels=num_labels, problem_type=problem_type, head_zero_init=False)).eval()
    labels = make_labels()
    out = model(pixel_values_for(model.config), labels=labels)
    torch.testing.assert_close(out.loss, reference(out.logits, labels))


def test_problem_type_is_inferred_from_labels():
    model = ViTForImageClassification(make_config(head_zero_init=False))
    model(pixel_values_for(model.config), labels=labels_for(model.config))
    assert model.config.problem_type == "single_label_classification"


# ---- embeddings and attention --------------------------------------------------------------------------------------


def test_class_token_and_gap_token_counts():
    with_cls = ViTModel(make_config())
    without = ViTModel(make_config(pooling="gap"))
    assert with_cls.embeddings.position_embeddings.shape[1] == 1 + 16
    assert without.embeddings.cls_token is None and without.embeddings.position_embeddings.shape[1] == 16


def test_gap_averages_patch_tokens_after_the_final_layernorm():
    model = ViTModel(make_config(pooling="gap", use_class_token=True)).eval()
    with torch.no_grad():
        out = model(pixel_values_for(model.config))
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 1:].mean(1))


def test_hidden_states_are_before_the_final_layernorm():
    model = ViTModel(make_config()).eval()
    with torch.no_grad():
        out = model(pixel_values_for(model.config), output_hidden_states=True)
    torch.testing.assert_close(model.layernorm(out.hidden_states[-1]), out.last_hidden_state)


def test_patch_embedding_is_a_linear_map_of_flattened_patches():
    # The paper's E: x_p (P*P*C) -> D. The conv must equal flattening each patch and multiplying.
    model = ViTModel(make_config()).eval()
    pixel_values = pixel_values_for(model.config, batch_size=1)
    conv = model.embeddings.patch_embeddings.projection
    patches = pixel_values.unfold(2, 8, 8).unfold(3, 8, 8)  # (1, C, 4, 4, 8, 8)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 16, -1)
    expected = patches @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias
    got, grid = model.embeddings.embed_patches(pixel_values)
    assert grid == (4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_get_clear_errors():
    model = ViTModel(make_config()).eval()
    with pytest.raises(ValueError, match="pixel_values"):
        model(None)
    with pytest.raises(ValueError, match="has 1 channels but the model's `num_channels` is 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"must be a \(batch, channels, height, width\) tensor, got \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))


# ---- position embeddings -------------------------------------------------------------------------------------------


def test_resampling_keeps_the_class_token_row_and_matches_the_reference_on_a_linear_ramp():
    # Bilinear with aligned corners reproduces a linear function of the grid coordinates exactly: sample
    # f(r, c) = r + 10c on a 4x4 grid and resample to 7x7, the reference code's zoom(order=1) does the same.
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    grid = (rows + 10 * cols).reshape(1, 16, 1)
    posemb = torch.cat([torch.tensor([[[42.0]]]), grid], dim=1)
    out = resample_position_embeddings(posemb, (4, 4), (7, 7), num_prefix_tokens=1)
    assert out.shape == (1, 50, 1) and out[0, 0, 0] == 42.0
    new_rows, new_cols = torch.meshgrid(torch.linspace(0, 3, 7), torch.linspace(0, 3, 7), indexing="ij")
    torch.testing.assert_close(out[0, 1:, 0], (new_rows + 10 * new_cols).reshape(-1))
    # timm's half-pixel resampling differs from it (so the option matters).
    timm_style = resample_position_embeddings(posemb, (4, 4), (7, 7), num_prefix_tokens=1, align_corners=False)
    assert not torch.allclose(timm_style, out)


def test_resampling_matches_scipy_zoom_order_1():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    generator = torch.Generator().manual_seed(0)
    grid = torch.randn(1, 5 * 5, 3, generator=generator)
    ours = resample_position_embeddings(grid, (5, 5), (9, 12), num_prefix_tokens=0)
    # The reference code: scipy.ndimage.zoom(posemb_grid, (gh/gs, gw/gs, 1), order=1)
    ref = scipy_ndimage.zoom(grid.reshape(5, 5, 3).double().numpy(), (9 / 5, 12 / 5, 1), order=1)
    torch.testing.assert_close(ours.reshape(9, 12, 3).double(), torch.from_numpy(ref), rtol=1e-5, atol=1e-5)


def test_resize_rejects_sizes_that_are_not_patch_multiples():
    model = ViTModel(make_config())
    with pytest.raises(ValueError, match="divisible by the patch size"):
        model.resize_position_embeddings(36)


# ---- initialisation ------------------------------------------------------------------------------------------------


def test_reference_initialisation():
    config = ViTConfig.from_variant("S/16", num_hidden_layers=2, image_size=64, num_labels=5, representation_size=384)
    model = ViTForImageClassification(config)
    d = config.hidden_size
    layer = model.vit.encoder.layers[0]
    # q, k, v are separate D x D xavier-uniform kernels in the reference: std = sqrt(2 / (D + D)).
    expected = math.sqrt(2.0 / (d + d))
    for part in layer.attention.qkv.weight.chunk(3):
        assert abs(part.std().item() / expected - 1) < 0.03
    assert layer.attention.qkv.weight.abs().max() <= math.sqrt(6.0 / (2 * d)) + 1e-6
    # MLP: xavier-uniform kernels, biases ~ N(0, 1e-6).
    expected = math.sqrt(2.0 / (d + config.intermediate_size))
    assert abs(layer.mlp.fc1.weight.std().item() / expected - 1) < 0.03
    assert 0 < layer.mlp.fc1.bias.abs().max() < 1e-5
    # Patch embedding and pre-logits: lecun normal (std sqrt(1/fan_in)), truncated at 2 std.
    conv = model.vit.embeddings.patch_embeddings.projection.weight
    fan_in = conv[0].numel()
    assert abs(conv.std().item() / math.sqrt(1.0 / fan_in) - 1) < 0.05
    assert conv.abs().max() <= 2 * math.sqrt(1.0 / fan_in) / 0.87962566103423978 + 1e-6
    pre_logits = model.vit.pooler.dense.weight
    assert abs(pre_logits.std().item() / math.sqrt(1.0 / d) - 1) < 0.05
    # Position embeddings N(0, 0.02); class token and head zero; LayerNorm ones/zeros.
    assert abs(model.vit.embeddings.position_embeddings.std().item() / 0.02 - 1) < 0.05
    assert model.vit.embeddings.cls_token.abs().sum() == 0
    assert model.classifier.weight.abs().sum() == 0
    assert torch.equal(layer.layernorm_before.weight, torch.ones(d))


def test_loaded_weights_are_not_reinitialised(tmp_path):
    model = ViTForImageClassification(make_config())
    with torch.no_grad():
        model.classifier.weight.fill_(0.5)
    model.save_pretrained(tmp_path)
    reloaded = ViTForImageClassification.from_pretrained(tmp_path)
    assert torch.all(reloaded.classifier.weight == 0.5)


# ---- training hints ------------------------------------------------------------------------------------------------


def test_declarative_training_hints():
    model = ViTForImageClassification(make_config(representation_size=16))
    no_decay = model.no_weight_decay_parameter_names()
    assert "vit.embeddings.position_embeddings" in no_decay and "vit.embeddings.cls_token" in no_decay
    assert "vit.encoder.layers.0.layernorm_before.weight" in no_decay and "classifier.bias" in no_decay
    assert "vit.encoder.layers.0.attention.qkv.weight" not in no_decay and "classifier.weight" not in no_decay
    ids = model.parameter_layer_ids()
    assert ids["vit.embeddings.patch_embeddings.projection.weight"] == 0
    assert ids["vit.encoder.layers.1.mlp.fc2.weight"] == 2
    assert ids["classifier.weight"] == 3 and ids["vit.layernorm.weight"] == 3
    assert set(ids) == {n for n, _ in model.named_parameters()}


# ---- other attention backends --------------------------------------------------------------------------------------


@pytest.mark.flex
def test_flex_attention_inference_agrees_with_sdpa():
    # Flex attention compiles per input shape (tens of seconds on CPU) and has no CPU backward: inference only.
    model = ViTForImageClassification(make_config(head_zero_init=False)).eval()
    pixel_values = pixel_values_for(model.config)
    with torch.no_grad():
        expected = model(pixel_values).logits
        model.set_attn_implementation("flex_attention")
        assert model.config._attn_implementation == "flex_attention"
        got = model(pixel_values)
        with_weights = model(pixel_values, output_attentions=True)
    torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-5)
    assert len(with_weights.attentions) == model.config.num_hidden_layers


def test_flash_attention_where_installed():
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed (it needs a CUDA GPU); the backend is declared, not exercised here")
    model = ViTForImageClassification(make_config(head_zero_init=False)).eval().cuda().half()
    pixel_values = pixel_values_for(model.config).cuda().half()
    with torch.no_grad():
        expected = model(pixel_values).logits
        model.set_attn_implementation("flash_attention_2")
        got = model(pixel_values).logits
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


# ---- class-token-only last block -----------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_pooled_only_gives_the_full_models_numbers(implementation):
    # The classifier runs its last block on the class token only; logits and every gradient must be those of the
    # full computation (which output_hidden_states forces).
    config = make_config(head_zero_init=False, qkv_bias=True, attn_implementation=implementation)
    torch.manual_seed(0)
    model = ViTForImageClassification(config).train()
    pixel_values, labels = pixel_values_for(config, batch_size=3), labels_for(config, 3)
    fast = model(pixel_values, labels=labels)
    fast.loss.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full = model(pixel_values, labels=labels, output_hidden_states=True)
    full.loss.backward()
    torch.testing.assert_close(fast.logits, full.logits, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(fast_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    # The bare model keeps every token unless asked, and only the class token when asked.
    base = model.vit.eval()
    with torch.no_grad():
        assert base(pixel_values).last_hidden_state.shape[1] == 1 + config.num_patches
        short = base(pixel_values, pooled_only=True)
        torch.testing.assert_close(short.pooler_output, base(pixel_values).pooler_output, rtol=1e-5, atol=1e-6)
    assert short.last_hidden_state.shape[1] == 1


# ---- transfer: the paper's fine-tuning head --------------------------------------------------------------------------


def _pretrained_classifier(path=None, **overrides):
    torch.manual_seed(0)
    config = make_config(num_labels=5, representation_size=24, head_zero_init=False, **overrides)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    if path is not None:
        model.save_pretrained(path)
    return model


def _body(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("classifier.", "vit.pooler."))}


def test_prepare_for_fine_tuning_drops_pre_logits_and_zero_inits_a_new_head(tmp_path):
    model = _pretrained_classifier()
    body = {k: v.clone() for k, v in _body(model).items()}
    labels = {0: "cat", 1: "dog", 2: "bird", 3: "fish"}
    assert model.prepare_for_fine_tuning(id2label=labels) is model
    config = model.config
    assert config.representation_size is None and model.vit.pooler.dense is None
    assert config.num_labels == 4 and config.id2label == labels and config.label2id["dog"] == 1
    assert model.classifier.in_features == 32 and model.classifier.out_features == 4
    assert model.classifier.weight.abs().sum() == 0 and model.classifier.bias.abs().sum() == 0
    for key, value in _body(model).items():
        assert torch.equal(value, body[key]), key  # every other weight is kept
    pixel_values = pixel_values_for(config)
    assert torch.equal(model(pixel_values).logits, torch.zeros(2, 4))
    # The result is an ordinary model: it trains (gradients reach the new head) and saves / loads as it is.
    model.train()
    model(pixel_values, labels=torch.tensor([0, 3])).loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = ViTForImageClassification.from_pretrained(tmp_path)
    assert reloaded.config.representation_size is None and reloaded.config.id2label == labels
    with pytest.raises(ValueError, match="`num_labels` must be a positive integer"):
        model.prepare_for_fine_tuning(num_labels=0)


def test_from_pretrained_with_new_labels_gives_the_fine_tuning_head(tmp_path):
    pretrained = _pretrained_classifier(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    assert model.config.num_labels == 7 and model.config.representation_size is None
    assert model.vit.pooler.dense is None and model.classifier.in_features == 32
    assert model.classifier.weight.abs().sum() == 0
    expected = _body(pretrained)
    for key, value in _body(model).items():
        assert torch.equal(value, expected[key]), key
    # Opting out keeps the pre-logits layer (loaded), still with a fresh zero head.
    kept, info = ViTForImageClassification.from_pretrained(
        tmp_path, num_labels=7, ignore_mismatched_sizes=True, keep_pre_logits=True, output_loading_info=True
    )
    assert kept.config.representation_size == 24
    assert torch.equal(kept.vit.pooler.dense.weight, pretrained.vit.pooler.dense.weight)
    assert kept.classifier.weight.abs().sum() == 0 and "mismatched_keys" in info
    # Same labels: nothing is new, nothing changes.
    same = ViTForImageClassification.from_pretrained(tmp_path, ignore_mismatched_sizes=True)
    assert same.config.representation_size == 24
    assert torch.equal(same.classifier.weight, pretrained.classifier.weight)
    # A headless checkpoint (ViTModel) also gets the fine-tuning head.
    ViTModel(make_config(representation_size=24)).save_pretrained(tmp_path / "bare")
    fresh = ViTForImageClassification.from_pretrained(tmp_path / "bare", num_labels=3, ignore_mismatched_sizes=True)
    assert fresh.config.representation_size is None and fresh.classifier.weight.abs().sum() == 0
