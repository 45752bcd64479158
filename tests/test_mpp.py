"""ViTForMaskedPatchPrediction (ViT paper, section 4.6, appendix B.1.2): the generic suite and what is unique to it."""

import pytest
import torch
import torch.nn.functional as F

from hf_vit import ViTConfig, ViTForImageClassification, ViTForMaskedPatchPrediction
from hf_vit.training.mpp.masking import KEEP, MASK, REPLACE, MaskedPatchCollator

from .common import TINY, TINY_HYBRID, ModelTesterMixin, make_config, pixel_values_for


def fixed_plan(batch, num_patches):
    """A plan that is the same for every image and draws replacements from the same image (so the generic suite's
    batch-independence check applies): every other patch, kinds cycling mask / replace / keep."""
    positions = torch.arange(0, num_patches, 2).expand(batch, -1)
    m = positions.shape[1]
    kinds = torch.tensor([MASK, REPLACE, KEEP] * m)[:m].expand(batch, -1)
    sources = torch.arange(batch)[:, None] * num_patches + (positions + 1) % num_patches
    return {"corrupted_positions": positions, "corruption_kind": kinds, "replacement_index": sources}


def mpp_labels(config, batch, m, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if config.mpp_target == "mean_color":
        return torch.randint(0, 512, (batch, m), generator=generator)
    if config.mpp_target == "downsampled":
        return torch.randint(0, 512, (batch, m, 16), generator=generator)
    ph, pw = config.patch_hw
    return torch.rand(batch, m, config.num_channels * ph * pw, generator=generator)


class TestViTForMaskedPatchPrediction(ModelTesterMixin):
    model_class = ViTForMaskedPatchPrediction
    variants = {
        "mean_color": {},
        "downsampled": {"mpp_target": "downsampled"},
        "pixels": {"mpp_target": "pixels"},
        "gap_sincos": {"pooling": "gap", "position_embedding_type": "sincos_2d"},
    }

    def forward(self, model, pixel_values, **kwargs):
        th, tw = model.config.token_pixel_size
        num_patches = (pixel_values.shape[2] // th) * (pixel_values.shape[3] // tw)
        return model(pixel_values, **fixed_plan(pixel_values.shape[0], num_patches), **kwargs)

    def loss_of(self, model, pixel_values, config):
        m = config.num_patches // 2
        return self.forward(model, pixel_values, labels=mpp_labels(config, pixel_values.shape[0], m)).loss

    def expected_logits_shape(self, config, batch_size):
        m = config.num_patches // 2
        ph, pw = config.patch_hw
        return {
            "mean_color": (batch_size, m, 512),
            "downsampled": (batch_size, m, 16, 512),
            "pixels": (batch_size, m, 3 * ph * pw),
        }[config.mpp_target]


def _model(**overrides):
    torch.manual_seed(0)
    model = ViTForMaskedPatchPrediction(make_config(**overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def test_corruption_happens_before_the_position_embeddings():
    model = _model()
    config = model.config
    pixel_values = pixel_values_for(config, batch_size=2)
    plan = {
        "corrupted_positions": torch.tensor([[1, 4, 7], [0, 2, 15]]),
        "corruption_kind": torch.tensor([[MASK, REPLACE, KEEP], [REPLACE, MASK, MASK]]),
        "replacement_index": torch.tensor([[0, 16 + 3, 0], [9, 0, 0]]),  # (image 1, patch 3); (image 0, patch 9)
    }
    with torch.no_grad():
        patches, _ = model.vit.embeddings.embed_patches(pixel_values)  # (2, 16, D)
        embedded = model(pixel_values, **plan, output_hidden_states=True).hidden_states[0]  # (2, 1 + 16, D)
    positions = model.vit.embeddings.position_embeddings[0, 1:]  # (16, D): the patch rows
    mask = model.mask_token[0, 0]
    expected = patches + positions
    expected[0, 1] = mask + positions[1]
    expected[0, 4] = patches[1, 3] + positions[4]  # another image's patch, with *this* position
    expected[1, 0] = patches[0, 9] + positions[0]
    expected[1, 2] = mask + positions[2]
    expected[1, 15] = mask + positions[15]
    torch.testing.assert_close(embedded[:, 1:], expected, rtol=1e-6, atol=1e-6)


def test_loss_covers_only_the_corrupted_positions():
    model = _model()
    config = model.config
    pixel_values = pixel_values_for(config, batch_size=2)
    positions = torch.tensor([[0, 3, 5, 10], [2, 4, 6, 8]])
    labels = torch.randint(0, 512, (2, 4))
    keep = torch.full_like(positions, KEEP)  # nothing changes: the outputs are the uncorrupted model's
    with torch.no_grad():
        out = model(pixel_values, corrupted_positions=positions, corruption_kind=keep, labels=labels)
        every_patch = model(pixel_values).logits  # (2, 16, 512): no plan, every patch predicted
    gathered = every_patch.gather(1, positions[..., None].expand(-1, -1, 512))
    torch.testing.assert_close(out.logits, gathered, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(gathered.reshape(-1, 512), labels.reshape(-1)), rtol=1e-5, atol=1e-6)
    # A label at an uncorrupted position cannot matter: the loss only sees the M planned ones.
    assert out.logits.shape == (2, 4, 512)


def test_gradient_reaches_the_mask_token_only_through_masked_positions():
    model = _model().train()
    config = model.config
    pixel_values = pixel_values_for(config)
    positions = torch.tensor([[1, 2], [3, 4]])
    labels = torch.randint(0, 512, (2, 2))
    model(pixel_values, corrupted_positions=positions, corruption_kind=torch.full_like(positions, KEEP), labels=labels).loss.backward()
    assert model.mask_token.grad is None or model.mask_token.grad.abs().sum() == 0
    model.zero_grad()
    model(pixel_values, corrupted_positions=positions, labels=labels).loss.backward()  # default kind: [mask]
    assert model.mask_token.grad.abs().sum() > 0


def test_bad_plans_and_labels_get_clear_errors():
    model = _model()
    pixel_values = pixel_values_for(model.config)
    with pytest.raises(ValueError, match="corrupted_positions.*shape"):
        model(pixel_values, corrupted_positions=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"corrupted_positions.*\[0, 16\)"):
        model(pixel_values, corrupted_positions=torch.tensor([[1, 16], [0, 1]]))
    with pytest.raises(ValueError, match="replacement_index"):
        model(pixel_values, corrupted_positions=torch.tensor([[1], [2]]), corruption_kind=torch.tensor([[REPLACE], [MASK]]))
    with pytest.raises(ValueError, match="labels"):
        model(pixel_values, corrupted_positions=torch.tensor([[1], [2]]), labels=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mpp_target"):
        ViTConfig(**TINY, mpp_target="colour")


def test_hybrid_configs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="plain ViT"):
        ViTForMaskedPatchPrediction(make_config(**TINY_HYBRID))


def test_collator_plans_run_through_the_model_at_another_resolution():
    from hf_vit import ViTImageProcessor
    from PIL import Image
    import numpy as np

    model = _model()
    processor = ViTImageProcessor(size={"height": 48, "width": 40})  # 6 x 5 patches instead of the config's 4 x 4
    images = [{"image": Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 20, 3), dtype=np.uint8))} for i in range(3)]
    batch = MaskedPatchCollator(processor, patch_size=8, seed=0)(images)
    assert batch["corrupted_positions"].shape == (3, 15)
    inputs = {k: batch[k] for k in ("pixel_values", "corrupted_positions", "corruption_kind", "replacement_index", "labels")}
    out = model(**inputs, interpolate_pos_encoding=True)
    assert out.logits.shape == (3, 15, 512) and torch.isfinite(out.loss)


def test_fine_tuning_from_an_mpp_checkpoint_keeps_the_encoder(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    classifier = ViTForImageClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith("vit.")}
    loaded = classifier.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in encoder.items())
    assert classifier.classifier.weight.shape == (5, 32) and classifier.classifier.weight.abs().sum() == 0
