"""ViTForMaskedAutoencoding (MAE, He et al. 2021): the generic suite, the masking, the objective against an independent
computation, parity with transformers' ViTMAEForPreTraining, and fine-tuning from its checkpoint."""

import copy
import json
import textwrap

import numpy as np
import pytest
import torch
import transformers

from hf_vit import ViTForImageClassification, ViTForMaskedAutoencoding, ViTModel
from hf_vit.modeling_hf_vit import mae_sincos_2d_position_embeddings, mae_unpatch_pixels, sincos_2d_position_embeddings

from .common import TINY, TINY_HYBRID, ModelTesterMixin, make_config, pixel_values_for, run_without_hf_vit


DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
               decoder_intermediate_size=64)
MAE_SETTING = dict(position_embedding_type="sincos_2d", position_embedding_sincos_style="mae", hidden_act="gelu")


def fixed_noise(batch, num_patches):
    """The same noise for every image of the batch (so the generic suite's batch-independence check applies)."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(1, num_patches, generator=generator).expand(batch, -1)


class TestViTForMaskedAutoencoding(ModelTesterMixin):
    model_class = ViTForMaskedAutoencoding
    has_labels = False
    variants = {
        "mae": {**DECODER, **MAE_SETTING},
        "learned_1d": {**DECODER},
        "registers_no_class_token": {**DECODER, "pooling": "gap", "num_register_tokens": 2,
                                     "position_embedding_type": "learned_2d"},
    }

    def forward(self, model, pixel_values, **kwargs):
        th, tw = model.config.token_pixel_size
        num_patches = (pixel_values.shape[2] // th) * (pixel_values.shape[3] // tw)
        return model(pixel_values, noise=fixed_noise(pixel_values.shape[0], num_patches), **kwargs)

    def loss_of(self, model, pixel_values, config):
        return self.forward(model, pixel_values).loss

    def expected_logits_shape(self, config, batch_size):
        ph, pw = config.patch_hw
        return (batch_size, config.num_patches, ph * pw * config.num_channels)

    def test_hidden_states_and_attentions(self, variant):
        # The encoder runs on the prefix tokens and the kept patches only: 16 patches, int(16 * 0.25) = 4 kept.
        model = self.build(variant)
        config = model.config
        tokens = config.num_prefix_tokens + 4
        with torch.no_grad():
            out = self.forward(model, pixel_values_for(config), output_hidden_states=True, output_attentions=True)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert all(h.shape == (2, tokens, config.hidden_size) for h in out.hidden_states)
        assert len(out.attentions) == config.num_hidden_layers
        assert all(w.shape == (2, config.num_attention_heads, tokens, tokens) for w in out.attentions)


def _model(**overrides):
    torch.manual_seed(0)
    model = ViTForMaskedAutoencoding(make_config(**{**DECODER, **MAE_SETTING, **overrides}))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def _mae_target(pixel_values, patch, norm_pix_loss=True):
    """MAE's `patchify` ('nchpwq->nhwpqc') and per-patch normalisation, written out independently."""
    b, c, h, w = pixel_values.shape
    x = pixel_values.reshape(b, c, h // patch, patch, w // patch, patch)
    x = torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // patch) * (w // patch), patch * patch * c)
    if norm_pix_loss:
        x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-6) ** 0.5
    return x


# ---- the masking --------------------------------------------------------------------------------------------------


def test_the_model_draws_75_percent_per_image_and_noise_fixes_which():
    model = _model()
    pixel_values = pixel_values_for(model.config, batch_size=3)
    with torch.no_grad():
        drawn = model(pixel_values)
        again = model(pixel_values)
    assert drawn.mask.shape == (3, 16) and drawn.mask.sum(1).tolist() == [12.0, 12.0, 12.0]  # int(16 * 0.25) = 4 kept
    assert not torch.equal(drawn.mask, again.mask)  # a new draw each call
    noise = torch.rand(3, 16)
    with torch.no_grad():
        out = model(pixel_values, noise=noise)
    kept = noise.argsort(dim=1)[:, :4]  # the smallest noise is kept (transformers' convention)
    expected = torch.ones(3, 16)
    expected.scatter_(1, kept, 0.0)
    assert torch.equal(out.mask, expected)
    assert torch.equal(out.ids_restore, noise.argsort(dim=1).argsort(dim=1))


def test_the_encoder_sees_only_the_kept_patches_with_their_own_positions():
    model = _model(position_embedding_type="learned_1d")
    pixel_values = pixel_values_for(model.config, batch_size=2)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        out = model(pixel_values, noise=noise, output_hidden_states=True)
        full = model.vit.embeddings(pixel_values)  # (2, 1 + 16, D): every patch with its position
    kept = noise.argsort(dim=1)[:, :4]
    expected = torch.cat([full[:, :1], full[:, 1:].gather(1, kept[..., None].expand(-1, -1, full.shape[-1]))], dim=1)
    torch.testing.assert_close(out.hidden_states[0], expected, rtol=0, atol=0)


def test_bool_masked_pos_is_a_plan_with_the_same_count_per_image():
    model = _model()
    pixel_values = pixel_values_for(model.config, batch_size=2)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, :12] = True
    with torch.no_grad():
        out = model(pixel_values, bool_masked_pos=mask)
        as_int = model(pixel_values, bool_masked_pos=mask.long())  # run_mim.py collates 0/1 integers
    assert torch.equal(out.mask, mask.float())
    torch.testing.assert_close(as_int.logits, out.logits, rtol=0, atol=0)
    # The same masking through noise (kept patches: the smallest noise) gives the same result.
    noise = mask.float() + torch.linspace(0, 0.5, 16)
    with torch.no_grad():
        through_noise = model(pixel_values, noise=noise)
    torch.testing.assert_close(through_noise.logits, out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(through_noise.loss, out.loss, rtol=1e-5, atol=1e-6)
    uneven = mask.clone()
    uneven[0, 3] = True
    with pytest.raises(ValueError, match="same number of patches in every image"):
        model(pixel_values, bool_masked_pos=uneven)
    with pytest.raises(ValueError, match="hides every patch"):
        model(pixel_values, bool_masked_pos=torch.ones(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bool_masked_pos.*\(2, 16\)"):
        model(pixel_values, bool_masked_pos=mask[:, :8])
    with pytest.raises(ValueError, match="either `noise`"):
        model(pixel_values, noise=noise, bool_masked_pos=mask)
    with pytest.raises(ValueError, match=r"noise.*\(2, 16\)"):
        model(pixel_values, noise=torch.rand(2, 15))


# ---- the objective ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_is_the_mse_of_the_hidden_patches_pixels(norm_pix_loss):
    model = _model(norm_pix_loss=norm_pix_loss)
    pixel_values = pixel_values_for(model.config, batch_size=2)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        out = model(pixel_values, noise=noise)
    target = _mae_target(pixel_values, 8, norm_pix_loss)  # (2, 16, 192)
    per_patch = (out.logits - target).pow(2).mean(-1)
    hidden = out.mask.bool()
    torch.testing.assert_close(out.loss, per_patch[hidden].mean(), rtol=1e-5, atol=1e-6)
    # The kept patches' reconstructions do not count.
    assert not torch.isclose(out.loss, per_patch.mean())
    # With Trainer's num_items_in_batch: the sum over this batch's hidden patches divided by it.
    with torch.no_grad():
        summed = model(pixel_values, noise=noise, num_items_in_batch=48)
    torch.testing.assert_close(summed.loss, per_patch[hidden].sum() / 48, rtol=1e-5, atol=1e-6)


def test_nothing_hidden_gives_no_loss_and_the_ratio_is_validated():
    model = _model(mask_ratio=0.0)
    with torch.no_grad():
        out = model(pixel_values_for(model.config))
    assert out.loss is None and out.mask.sum() == 0 and out.logits.shape == (2, 16, 192)
    with pytest.raises(ValueError, match="mask_ratio"):
        make_config(mask_ratio=1.0)
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        make_config(decoder_hidden_size=30, decoder_num_attention_heads=3)


def test_unpatching_the_prediction_layout_gives_the_image_back():
    pixel_values = pixel_values_for(make_config(), batch_size=2)
    patches = _mae_target(pixel_values, 8, norm_pix_loss=False)
    torch.testing.assert_close(mae_unpatch_pixels(patches, (4, 4), 8, 3), pixel_values, rtol=0, atol=0)


def test_configs_it_cannot_serve_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="plain ViT"):
        ViTForMaskedAutoencoding(make_config(**DECODER, **TINY_HYBRID))
    with pytest.raises(ValueError, match="relative"):
        ViTForMaskedAutoencoding(make_config(**DECODER, position_embedding_type="relative"))
    with pytest.raises(ValueError, match="layer_norm_after_pooling"):
        ViTForMaskedAutoencoding(make_config(**DECODER, pooling="gap", layer_norm_after_pooling=True))
    model = _model()
    with pytest.raises(TypeError, match="labels.*pixel targets from `pixel_values`"):
        model(pixel_values_for(model.config), labels=torch.zeros(2, dtype=torch.long))


# ---- MAE's position table ------------------------------------------------------------------------------------------


def test_mae_sincos_table_is_transformers_vit_mae_table():
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    for grid, dim in (((4, 4), 32), ((14, 14), 768), ((7, 7), 64)):
        reference = build_2d_sinusoidal_position_embedding(grid[0], grid[1], dim, cls_token=True)
        # transformers stores it with the halves swapped (the original MAE's [w | h] layout): its "rotate".
        half = dim // 2
        reference = torch.cat([reference[:, half:], reference[:, :half]], dim=-1)
        assert torch.equal(reference[0], torch.zeros(dim))  # MAE's class-token row: no position
        torch.testing.assert_close(mae_sincos_2d_position_embeddings(grid, dim)[0], reference[1:], rtol=0, atol=0)


def test_mae_sincos_table_on_a_rectangular_grid_and_against_big_vision():
    rows, cols, dim = 3, 5, 16
    table = mae_sincos_2d_position_embeddings((rows, cols), dim)[0]
    quarter = dim // 4
    for index in (0, 7, 14):
        y, x = divmod(index, cols)
        for k in range(quarter):
            w = 10000.0 ** (-k / quarter)
            expected = [np.sin(x * w), np.cos(x * w), np.sin(y * w), np.cos(y * w)]
            got = [float(table[index, part * quarter + k]) for part in range(4)]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # big_vision's table divides by D/4 - 1: the same layout, other frequencies.
    other = sincos_2d_position_embeddings((rows, cols), dim)[0]
    torch.testing.assert_close(other[:, 0], table[:, 0])  # frequency 1 in both
    assert not torch.allclose(other, table)
    config = make_config(position_embedding_type="sincos_2d", position_embedding_sincos_style="mae")
    positions = ViTModel(config).embeddings.position_embeddings_for((4, 4), False)
    torch.testing.assert_close(positions, mae_sincos_2d_position_embeddings((4, 4), TINY["hidden_size"]))
    with pytest.raises(ValueError, match="position_embedding_sincos_style"):
        make_config(position_embedding_sincos_style="moco")


# ---- parity with transformers' ViTMAEForPreTraining ----------------------------------------------------------------


def _transformers_mae(tmp_path, norm_pix_loss=True):
    """A tiny transformers ViTMAEForPreTraining with random weights, saved; its fixed sin-cos tables set as MAE (and a
    trained checkpoint) has them (transformers 5.24 leaves them at zero in a freshly built model)."""
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        decoder_hidden_size=24, decoder_num_hidden_layers=2, decoder_num_attention_heads=3, decoder_intermediate_size=48,
        norm_pix_loss=norm_pix_loss, mask_ratio=0.75,
    )
    reference = transformers.ViTMAEForPreTraining(config).eval()

    def table(dim):
        rows = build_2d_sinusoidal_position_embedding(4, 4, dim, cls_token=True)
        return torch.cat([rows[:, dim // 2 :], rows[:, : dim // 2]], dim=-1)[None]

    with torch.no_grad():
        for param in reference.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.02)
        reference.vit.embeddings.position_embeddings.copy_(table(32))
        reference.decoder.decoder_pos_embed.copy_(table(24))
    reference.save_pretrained(tmp_path)
    return reference


@pytest.mark.parity
@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_parity_with_transformers_vit_mae_for_pretraining(tmp_path, norm_pix_loss):
    """Same weights (transformers' folder loaded by from_pretrained: the key map), same noise: the same loss, logits,
    mask and ids_restore, and the same gradients. Tolerance 1e-5: fp32, fused vs separate q/k/v projections."""
    reference = _transformers_mae(tmp_path, norm_pix_loss)
    model = ViTForMaskedAutoencoding.from_pretrained(tmp_path).eval()
    config = model.config
    assert (config.position_embedding_type, config.position_embedding_sincos_style) == ("sincos_2d", "mae")
    assert (config.decoder_hidden_size, config.decoder_num_attention_heads, config.norm_pix_loss) == (24, 3, norm_pix_loss)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(3))
    ours, theirs = model(pixel_values, noise=noise), reference(pixel_values, noise=noise)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.mask, theirs.mask) and torch.equal(ours.ids_restore, theirs.ids_restore)
    ours.loss.backward()
    theirs.loss.backward()
    torch.testing.assert_close(model.vit.embeddings.patch_embeddings.projection.weight.grad,
                               reference.vit.embeddings.patch_embeddings.projection.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.decoder.mask_token.grad, reference.decoder.mask_token.grad, rtol=1e-4, atol=1e-6)


def test_a_vit_mae_checkpoint_with_other_position_tables_is_refused(tmp_path):
    reference = _transformers_mae(tmp_path)
    with torch.no_grad():
        reference.decoder.decoder_pos_embed.add_(0.1)  # trained, not MAE's fixed table
    reference.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="decoder.position_embeddings is not MAE's fixed 2-D sin-cos table"):
        ViTForMaskedAutoencoding.from_pretrained(tmp_path)
    ViTModel.from_pretrained(tmp_path)  # the encoder alone still loads (it keeps the stored table)


# ---- saving, the Auto classes, fine-tuning ---------------------------------------------------------------------------


def test_a_copy_and_another_attention_backend_compute_the_same():
    model = _model()
    pixel_values, noise = pixel_values_for(model.config), torch.rand(2, 16)
    with torch.no_grad():
        expected = model(pixel_values, noise=noise).logits
        torch.testing.assert_close(copy.deepcopy(model)(pixel_values, noise=noise).logits, expected, rtol=0, atol=0)
        model.set_attn_implementation("eager")
        # The decoder's blocks read the model's config live: they switch too.
        assert model.decoder.layers[0].attention.config._attn_implementation == "eager"
        torch.testing.assert_close(model(pixel_values, noise=noise).logits, expected, rtol=1e-5, atol=1e-5)


def test_fine_tuning_from_an_mae_folder_gets_maes_head(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    assert type(transformers.AutoModelForPreTraining.from_pretrained(tmp_path)) is ViTForMaskedAutoencoding
    classifier = ViTForImageClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True).eval()
    config = classifier.config
    assert (config.pooling, config.layer_norm_after_pooling, config.use_class_token) == ("gap", True, True)
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith("vit.") and not k.startswith("vit.layernorm")}
    loaded = classifier.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in encoder.items())
    assert classifier.classifier.weight.shape == (5, 32) and classifier.classifier.weight.abs().sum() == 0
    # What the head reads: the mean of the un-normalised patch tokens, then the pooler's own (fresh) LayerNorm.
    pixel_values = pixel_values_for(model.config)
    with torch.no_grad():
        tokens = model.vit.encoder(model.vit.embeddings(pixel_values)).last_hidden_state[:, 1:]  # no final norm
        expected = torch.nn.functional.layer_norm(tokens.mean(1), (32,), eps=config.layer_norm_eps)
        torch.testing.assert_close(classifier.vit(pixel_values).pooler_output, expected, rtol=1e-5, atol=1e-5)
    # The caller's choice wins.
    kept = ViTForImageClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True, pooling="cls")
    assert (kept.config.pooling, kept.config.layer_norm_after_pooling) == ("cls", False)


def test_transformers_vit_mae_fine_tunes_with_the_same_head(tmp_path):
    _transformers_mae(tmp_path)
    ours = tmp_path / "ours"
    ViTForMaskedAutoencoding.from_pretrained(tmp_path).save_pretrained(ours)
    from_transformers = ViTForImageClassification.from_pretrained(tmp_path, num_labels=4, ignore_mismatched_sizes=True)
    from_ours = ViTForImageClassification.from_pretrained(ours, num_labels=4, ignore_mismatched_sizes=True)
    for name in ("pooling", "layer_norm_after_pooling", "use_class_token"):
        assert getattr(from_ours.config, name) == getattr(from_transformers.config, name)
    pixel_values = pixel_values_for(from_ours.config)
    with torch.no_grad():
        torch.testing.assert_close(from_ours.vit(pixel_values).pooler_output,
                                   from_transformers.vit(pixel_values).pooler_output, rtol=1e-5, atol=1e-5)


def test_saved_folders_map_auto_model_for_pretraining_to_the_mae(tmp_path):
    _model().save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForPreTraining"] == "modeling_hf_vit.ViTForMaskedAutoencoding"
    assert (tmp_path / "modeling_hf_vit.py").exists()


_REMOTE_MAE = textwrap.dedent(
    """
    import torch, transformers
    model = transformers.AutoModelForPreTraining.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    generator = torch.Generator().manual_seed(0)
    pixel_values, noise = torch.randn(2, 3, 32, 32, generator=generator), torch.rand(2, 16, generator=generator)
    with torch.no_grad():
        out = model(pixel_values, noise=noise)
    print(json.dumps({"module": type(model).__module__, "loss": float(out.loss), "mask": out.mask.tolist()}))
    """
)


@pytest.mark.slow  # a fresh interpreter imports transformers and compiles the remote module
def test_remote_code_loads_the_mae_where_hf_vit_is_not_installed(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "mae")
    result = run_without_hf_vit(_REMOTE_MAE, tmp_path / "mae", tmp_path=tmp_path)
    assert result["module"].startswith("transformers_modules")
    generator = torch.Generator().manual_seed(0)
    pixel_values, noise = torch.randn(2, 3, 32, 32, generator=generator), torch.rand(2, 16, generator=generator)
    with torch.no_grad():
        out = model(pixel_values, noise=noise)
    assert result["loss"] == pytest.approx(float(out.loss), abs=1e-5)
    assert result["mask"] == out.mask.tolist()
