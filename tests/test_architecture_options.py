"""The appendix's architecture options (ViT paper D.3, D.4; GGeM; big_vision's sincos and MAP head; stochastic depth):
every option through the generic suite, plus what each one computes, checked against its formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_vit import ViTForImageClassification, ViTModel
from hf_vit.modeling_hf_vit import sincos_2d_position_embeddings

from .common import ModelTesterMixin, labels_for, make_config, pixel_values_for


# Every position-embedding type and pooling, with and without a class token where that changes the model.
OPTION_VARIANTS = {
    "pos_none": {"position_embedding_type": "none"},
    "pos_learned_2d": {"position_embedding_type": "learned_2d"},
    "pos_relative": {"position_embedding_type": "relative"},
    "pos_relative_gap": {"position_embedding_type": "relative", "pooling": "gap"},
    "pos_sincos_2d": {"position_embedding_type": "sincos_2d"},
    "pool_max": {"pooling": "max"},
    "pool_gem_with_class_token": {"pooling": "gem", "use_class_token": True},
    "pool_ggem": {"pooling": "ggem"},
    "pool_map_sincos_2d": {"pooling": "map", "position_embedding_type": "sincos_2d"},
    "drop_path": {"drop_path_rate": 0.2},
    "patch_drop_registers_sincos": {"patch_drop_rate": 0.5, "num_register_tokens": 1,
                                    "position_embedding_type": "sincos_2d"},
    "patch_drop_gap_learned_2d": {"patch_drop_rate": 0.25, "pooling": "gap", "position_embedding_type": "learned_2d"},
    # The pieces of the checkpoints people fine-tune today (MAE, DeiT, DINOv2); tests/test_pretrained_families.py
    # checks them against transformers' and timm's own models.
    "distillation_head": {"use_distillation_token": True},
    "distillation_token_without_head": {"use_distillation_token": True, "use_distillation_head": False},
    "registers_relative_gap": {"num_register_tokens": 2, "position_embedding_type": "relative", "pooling": "gap",
                               "use_class_token": True},
    "layer_scale_gated_mlp": {"layer_scale_init_value": 0.1, "mlp_type": "gated", "hidden_act": "silu"},
    "pool_cls_and_gap_registers_antialias": {
        "pooling": "cls_and_gap", "num_register_tokens": 2, "position_embedding_interpolation": "bicubic",
        "position_embedding_align_corners": False, "position_embedding_antialias": True,
    },
    "layer_norm_after_pooling": {"pooling": "gap", "layer_norm_after_pooling": True, "use_class_token": True},
}
# The bare model: the options that change more than its pooler_output's head (kept few: the suite's time budget).
BARE_MODEL_VARIANTS = {
    "pos_learned_2d": {"position_embedding_type": "learned_2d"},
    "pos_relative": {"position_embedding_type": "relative"},
    "pool_map": {"pooling": "map"},
    "distillation_and_registers": {"use_distillation_token": True, "num_register_tokens": 2},
    "pool_cls_and_gap": {"pooling": "cls_and_gap"},
    "layer_norm_after_pooling": {"pooling": "gap", "layer_norm_after_pooling": True},
}


class TestOptionsViTForImageClassification(ModelTesterMixin):
    model_class = ViTForImageClassification
    variants = OPTION_VARIANTS


class TestOptionsViTModel(ModelTesterMixin):
    model_class = ViTModel
    variants = BARE_MODEL_VARIANTS
    has_labels = False


def _perturbed_model(cls=ViTModel, **overrides):
    torch.manual_seed(0)
    model = cls(make_config(**overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


# ---- position embeddings -------------------------------------------------------------------------------------------


def test_learned_2d_concatenates_the_column_and_row_tables():
    model = _perturbed_model(position_embedding_type="learned_2d")
    embeddings = model.embeddings
    assert not hasattr(embeddings, "position_embeddings")
    columns, rows = embeddings.column_position_embeddings[0], embeddings.row_position_embeddings[0]  # (4, 16) each
    assert columns.shape == (4, 16) and rows.shape == (4, 16)
    table = embeddings.position_embeddings_for((4, 4), False)[0]  # (16, 32)
    for r in range(4):
        for c in range(4):
            torch.testing.assert_close(table[r * 4 + c], torch.cat([columns[c], rows[r]]), rtol=0, atol=0)
    # The class token gets no position embedding: it enters the encoder as it is.
    pixel_values = pixel_values_for(model.config, batch_size=1)
    patches, grid = embeddings.embed_patches(pixel_values)
    with torch.no_grad():
        x = embeddings.add_positions(patches, grid)
    torch.testing.assert_close(x[:, 0], embeddings.cls_token[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(x[:, 1:], patches + table, rtol=0, atol=0)


def test_learned_2d_resizes_each_axis_on_its_own():
    model = _perturbed_model(position_embedding_type="learned_2d")
    columns = model.embeddings.column_position_embeddings.detach().clone()
    model.resize_position_embeddings((48, 64))  # grid 6 x 8
    assert model.embeddings.row_position_embeddings.shape == (1, 6, 16)
    assert model.embeddings.column_position_embeddings.shape == (1, 8, 16)
    # Corners aligned (the default): the first and last column embeddings are kept exactly.
    resized = model.embeddings.column_position_embeddings.detach()
    torch.testing.assert_close(resized[:, 0], columns[:, 0])
    torch.testing.assert_close(resized[:, -1], columns[:, -1])


def _big_vision_sincos(h, w, width, temperature=10_000.0):
    # big_vision's posemb_sincos_2d, written out in float64 numpy-style loops over the formula.
    quarter = width // 4
    table = torch.zeros(h * w, width, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for k in range(quarter):
                omega = 1.0 / temperature ** (k / (quarter - 1))
                table[r * w + c, k] = math.sin(c * omega)
                table[r * w + c, quarter + k] = math.cos(c * omega)
                table[r * w + c, 2 * quarter + k] = math.sin(r * omega)
                table[r * w + c, 3 * quarter + k] = math.cos(r * omega)
    return table


def test_sincos_2d_is_big_vision_posemb_sincos_2d():
    ours = sincos_2d_position_embeddings((3, 5), 16)
    assert ours.shape == (1, 15, 16)
    torch.testing.assert_close(ours[0].double(), _big_vision_sincos(3, 5, 16), rtol=0, atol=1e-6)
    model = _perturbed_model(position_embedding_type="sincos_2d")
    assert not [n for n, _ in model.named_parameters() if "position" in n]  # nothing learned
    torch.testing.assert_close(model.embeddings.position_embeddings_for((4, 4), False), sincos_2d_position_embeddings((4, 4), 32))


def test_no_position_embedding_makes_the_encoder_permutation_equivariant():
    # Without any position information, shuffling the patch tokens shuffles the outputs the same way: a test that
    # "none" really adds nothing.
    model = _perturbed_model(position_embedding_type="none")
    pixel_values = pixel_values_for(model.config, batch_size=1)
    with torch.no_grad():
        patches, grid = model.embeddings.embed_patches(pixel_values)
        order = torch.randperm(patches.shape[1], generator=torch.Generator().manual_seed(1))
        outputs = []
        for tokens in (patches, patches[:, order]):
            x = model.embeddings.add_positions(tokens, grid)
            outputs.append(model.layernorm(model.encoder(x).last_hidden_state))
    torch.testing.assert_close(outputs[1][:, 1:], outputs[0][:, 1:][:, order], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[1][:, 0], outputs[0][:, 0], rtol=1e-5, atol=1e-5)


def _relative_bias_by_hand(attention, query, num_prefix):
    # bias[b, h, i, j] = q[b, h, i] . r[offset(i, j), h] * scale, with offsets between patch indices in raster order
    # and one learned embedding each for class->patch, patch->class, class->class.
    batch, heads, tokens, head_dim = query.shape
    patches = tokens - num_prefix
    table = attention.relative_position_embeddings.view(-1, heads, head_dim)
    special = attention.prefix_relative_embeddings.view(3, heads, head_dim) if num_prefix else None
    bias = torch.zeros(batch, heads, tokens, tokens)
    for i in range(tokens):
        for j in range(tokens):
            if i >= num_prefix and j >= num_prefix:
                key = table[(i - j) + patches - 1]
            elif i < num_prefix and j >= num_prefix:
                key = special[0]
            elif i >= num_prefix:
                key = special[1]
            else:
                key = special[2]
            bias[:, :, i, j] = (query[:, :, i] * key).sum(-1) * attention.scaling
    return bias


@pytest.mark.parametrize("pooling", ["cls", "gap"])
def test_relative_attention_adds_query_times_offset_embedding_to_the_logits(pooling):
    model = _perturbed_model(position_embedding_type="relative", pooling=pooling)
    attention = model.encoder.layers[0].attention
    num_prefix = model.config.num_prefix_tokens
    assert attention.relative_position_embeddings.shape == (2 * 16 - 1, 32)
    x = torch.randn(2, num_prefix + 16, 32, generator=torch.Generator().manual_seed(0))
    query = attention.qkv(x)[..., :32].view(2, -1, 4, 8).transpose(1, 2)
    with torch.no_grad():
        bias = attention.relative_position_bias(query, x.shape[1])
        torch.testing.assert_close(bias, _relative_bias_by_hand(attention, query, num_prefix), rtol=1e-5, atol=1e-6)
        # ... and the attention weights are softmax(q k / sqrt(d) + bias).
        _, weights = attention(x, output_attentions=True)
        key = attention.qkv(x)[..., 32:64].view(2, -1, 4, 8).transpose(1, 2)
        expected = torch.softmax(query @ key.transpose(-1, -2) * attention.scaling + bias, dim=-1)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_class_token_only_last_block_with_relative_attention(implementation):
    # The classifier's shortcut (last block on the class token only) slices the relative bias to that query row.
    config = make_config(position_embedding_type="relative", head_zero_init=False, attn_implementation=implementation)
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


def test_relative_tables_are_resampled_for_a_longer_sequence():
    model = _perturbed_model(ViTForImageClassification, position_embedding_type="relative", head_zero_init=False)
    old = model.vit.encoder.layers[1].attention.relative_position_embeddings.detach().clone()
    model.resize_position_embeddings(48)  # 6 x 6 = 36 patches
    table = model.vit.encoder.layers[1].attention.relative_position_embeddings
    assert table.shape == (2 * 36 - 1, 32)
    # The zero offset stays in the middle and the extreme offsets at the ends (corners aligned).
    torch.testing.assert_close(table[35], old[15])
    torch.testing.assert_close(table[0], old[0])
    torch.testing.assert_close(table[-1], old[-1])


def test_flash_attention_refuses_relative_attention_with_a_clear_error():
    model = _perturbed_model(position_embedding_type="relative")
    model.config._attn_implementation = "flash_attention_2"  # no flash-attn here: the check must come first
    with pytest.raises(ValueError, match="relative.*flash attention has no additive bias.*'sdpa'"):
        model(pixel_values_for(model.config))


# ---- pooling -------------------------------------------------------------------------------------------------------


def _tokens_after_norm(model, pixel_values):
    with torch.no_grad():
        out = model(pixel_values)
    return out, out.last_hidden_state[:, model.config.num_prefix_tokens :]


def test_max_pooling_takes_the_channel_wise_max_of_the_patch_tokens():
    model = _perturbed_model(pooling="max", use_class_token=True)
    out, tokens = _tokens_after_norm(model, pixel_values_for(model.config))
    torch.testing.assert_close(out.pooler_output, tokens.max(dim=1).values)


@pytest.mark.parametrize("pooling, groups", [("gem", 1), ("ggem", 4)])
def test_gem_pooling_is_the_generalized_mean_with_one_exponent_per_group(pooling, groups):
    model = _perturbed_model(pooling=pooling, gem_p_init=2.5)
    pooler = model.pooler
    assert pooler.gem_p.shape == (groups,)
    with torch.no_grad():
        pooler.gem_p.copy_(torch.linspace(1.5, 4.0, groups))
    out, tokens = _tokens_after_norm(model, pixel_values_for(model.config))
    expected = torch.empty_like(out.pooler_output)
    width = 32 // groups
    for g in range(groups):
        p = pooler.gem_p[g].item()
        part = tokens[..., g * width : (g + 1) * width].clamp(min=1e-6)
        expected[:, g * width : (g + 1) * width] = part.pow(p).mean(dim=1).pow(1 / p)
    torch.testing.assert_close(out.pooler_output, expected, rtol=1e-5, atol=1e-6)
    # Freshly initialised: every exponent at gem_p_init.
    assert torch.equal(ViTModel(make_config(pooling=pooling, gem_p_init=2.5)).pooler.gem_p, torch.full((groups,), 2.5))


def test_map_head_is_big_vision_maphead():
    model = _perturbed_model(pooling="map")
    head = model.pooler.map_head
    out, tokens = _tokens_after_norm(model, pixel_values_for(model.config))
    # probe -> multi-head attention over the tokens (q from the probe, k and v from the tokens) -> x + MLP(LN(x)).
    weight, bias = head.attention.qkv.weight, head.attention.qkv.bias
    q = (head.probe @ weight[:32].T + bias[:32]).view(1, 1, 4, 8).transpose(1, 2)
    k = (tokens @ weight[32:64].T + bias[32:64]).view(2, -1, 4, 8).transpose(1, 2)
    v = (tokens @ weight[64:].T + bias[64:]).view(2, -1, 4, 8).transpose(1, 2)
    attended = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v  # (2, 4, 1, 8)
    x = head.attention.o_proj(attended.transpose(1, 2).reshape(2, 1, 32))
    ln = F.layer_norm(x, (32,), head.layernorm.weight, head.layernorm.bias, eps=1e-6)
    x = x + head.mlp.fc2(F.gelu(head.mlp.fc1(ln), approximate="tanh"))
    torch.testing.assert_close(out.pooler_output, x[:, 0], rtol=1e-5, atol=1e-5)
    # big_vision's initialisation: the probe xavier-uniform over (1, 1, D); no class token by default.
    fresh = ViTModel(make_config(pooling="map"))
    assert fresh.embeddings.cls_token is None
    assert 0 < fresh.pooler.map_head.probe.abs().max() <= math.sqrt(6 / 33)


def test_poolings_other_than_cls_ignore_the_class_token():
    # With a class token kept, "gap"-like poolings read the patch tokens only: the class token's output must not
    # change the pooled vector.
    for pooling in ("max", "gem", "ggem", "map"):
        model = _perturbed_model(pooling=pooling, use_class_token=True)
        hidden = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(0))
        changed = hidden.clone()
        changed[:, 0] += 5.0
        with torch.no_grad():
            torch.testing.assert_close(model.pooler(hidden), model.pooler(changed), rtol=0, atol=0, msg=pooling)


# ---- stochastic depth ----------------------------------------------------------------------------------------------


def test_drop_path_schedule_and_behaviour():
    model = ViTModel(make_config(drop_path_rate=0.3, num_hidden_layers=4))
    rates = [layer.drop_path.rate for layer in model.encoder.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    drop = model.encoder.layers[3].drop_path
    x = torch.ones(4000, 3, 2)
    drop.train()
    y = drop(x)
    kept = y[:, 0, 0] != 0
    # Whole samples are dropped, the kept ones rescaled by 1 / (1 - rate); the mean is preserved in expectation.
    assert torch.all((y == 0).all(dim=(1, 2)) | (y == 1 / 0.7).all(dim=(1, 2)))
    assert abs(kept.float().mean().item() - 0.7) < 0.03
    drop.eval()
    assert torch.equal(drop(x), x)


# ---- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"position_embedding_type": "learned_2d", "hidden_size": 36, "num_attention_heads": 4, "intermediate_size": 8}, None),
        ({"position_embedding_type": "learned_2d", "hidden_size": 33, "num_attention_heads": 3}, "must be even"),
        ({"position_embedding_type": "sincos_2d", "hidden_size": 30, "num_attention_heads": 3}, "multiple of 4"),
        ({"pooling": "gem", "gem_p_init": 0}, "`gem_p_init`"),
        ({"drop_path_rate": 1.0}, "`drop_path_rate`"),
        ({"pooling": "mean"}, r"\['cls', 'gap', 'max', 'gem', 'ggem', 'map', 'cls_and_gap'\]"),
        ({"position_embedding_type": "rope"}, r"\['learned_1d', 'none', 'learned_2d', 'relative', 'sincos_2d'\]"),
    ],
)
def test_option_validation(overrides, message):
    if message is None:
        assert make_config(**overrides).position_embedding_type == overrides["position_embedding_type"]
        return
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


@pytest.mark.flex
@pytest.mark.slow
def test_flex_attention_takes_the_relative_bias():
    # Flex attention adds `position_bias[b, h, q, k]` in its score_mod; it compiles per shape (tens of seconds).
    model = _perturbed_model(ViTForImageClassification, position_embedding_type="relative", head_zero_init=False)
    pixel_values = pixel_values_for(model.config)
    with torch.no_grad():
        expected = model(pixel_values).logits
        model.set_attn_implementation("flex_attention")
        got = model(pixel_values).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Token dropping (patch_drop_rate): training drops a random share of each image's patch tokens after the positions


def test_drop_patch_tokens_keeps_the_prefix_and_a_random_subset_of_patches():
    from hf_vit.modeling_hf_vit import drop_patch_tokens

    tokens = torch.arange(2 * 19 * 1, dtype=torch.float32).view(2, 19, 1).expand(2, 19, 4).contiguous()
    torch.manual_seed(0)
    kept = drop_patch_tokens(tokens, num_prefix_tokens=3, rate=0.25)  # 16 patches, round(4) dropped
    assert kept.shape == (2, 3 + 12, 4)
    assert torch.equal(kept[:, :3], tokens[:, :3])
    for image in range(2):
        rows = kept[image, 3:, 0].tolist()
        patches = tokens[image, 3:, 0].tolist()
        assert len(set(rows)) == 12 and set(rows) <= set(patches)  # distinct patch tokens of the same image
    orders = {tuple(drop_patch_tokens(tokens, 3, 0.5)[0, 3:, 0].tolist()) for _ in range(5)}
    assert len(orders) > 1  # random per call
    assert drop_patch_tokens(tokens, 3, 0.99).shape[1] == 3 + 1  # at least one patch stays


@pytest.mark.parametrize("overrides", [
    {"position_embedding_type": "learned_1d", "num_register_tokens": 2},
    {"position_embedding_type": "learned_2d", "pooling": "gap"},
    {"position_embedding_type": "sincos_2d", "use_distillation_token": True},
    {"backbone_depths": [1], "backbone_width_factor": 0.25, "backbone_num_groups": 8, "patch_size": 1},
], ids=["learned_1d_registers", "learned_2d_gap", "sincos_distillation", "hybrid"])
def test_patch_drop_keeps_positions_and_evaluation_sees_every_token(overrides):
    config = make_config(patch_drop_rate=0.5, **overrides)
    model = ViTModel(config)
    pixel_values = pixel_values_for(config, batch_size=2)
    prefix, num_patches = config.num_prefix_tokens, config.num_patches
    model.eval()
    full = model(pixel_values).last_hidden_state
    assert full.shape[1] == prefix + num_patches  # evaluation: every token
    with torch.no_grad():
        embeddings = model.embeddings(pixel_values)  # the position information is already in
    model.train()
    torch.manual_seed(3)
    dropped = model(pixel_values).last_hidden_state
    keep = num_patches - round(0.5 * num_patches)
    assert dropped.shape[1] == prefix + keep
    # The same draw by hand: the kept patch embeddings, positions included, then the encoder and the final norm.
    torch.manual_seed(3)
    order = torch.rand(2, num_patches).argsort(dim=1)[:, :keep]
    patches = embeddings[:, prefix:].gather(1, order[..., None].expand(-1, -1, embeddings.shape[-1]))
    expected = model.layernorm(model.encoder(torch.cat([embeddings[:, :prefix], patches], 1)).last_hidden_state)
    torch.testing.assert_close(dropped, expected, atol=1e-5, rtol=1e-5)


def test_patch_drop_is_refused_with_relative_attention():
    with pytest.raises(ValueError, match="patch_drop_rate.*relative"):
        make_config(patch_drop_rate=0.5, position_embedding_type="relative")
    with pytest.raises(ValueError, match="`patch_drop_rate` must be a probability"):
        make_config(patch_drop_rate=1.0)
