"""transformers' conventions on every hf_vit model class: `bool_masked_pos` trains masked patch prediction (targets
computed in the model from `pixel_values`, with the processor's normalisation recorded in the config), the other
keywords of transformers' image models are honoured or refused with a clear error, `labels` shapes are checked, and
`num_items_in_batch` (what `Trainer` passes) scales the loss as `Trainer` expects."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from hf_vit import (
    ViTBackbone,
    ViTConfig,
    ViTForImageClassification,
    ViTForMaskedAutoencoding,
    ViTForMaskedPatchPrediction,
    ViTImageProcessor,
    ViTModel,
)

from .common import make_config, pixel_values_for
from .test_mpp import _model as _mpp  # the seeded, perturbed masked-patch model of the model tests




def _patchwise_images(batch=2, seed=0):
    """(B, 3, 32, 32) images in [0, 1], each 8x8 patch one flat colour, and the 3-bit class of every patch, worked out
    by hand: channel value v -> level floor(8 v), class = 64 r + 8 g + b."""
    generator = torch.Generator().manual_seed(seed)
    colors = torch.rand(batch, 3, 4, 4, generator=generator)
    images = colors.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    levels = (colors * 8).floor().long().clamp(max=7)  # (B, 3, 4, 4)
    classes = (levels[:, 0] * 64 + levels[:, 1] * 8 + levels[:, 2]).reshape(batch, 16)
    return images, classes


# ---- bool_masked_pos on masked patch prediction ----------------------------------------------------------------------


def test_bool_masked_pos_puts_the_mask_embedding_before_the_positions():
    model = _mpp()
    pixel_values = pixel_values_for(model.config)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 5]] = True
    mask[1, [0, 2, 3, 15]] = True  # another count per image: allowed here
    with torch.no_grad():
        patches, _ = model.vit.embeddings.embed_patches(pixel_values)
        out = model(pixel_values, bool_masked_pos=mask, output_hidden_states=True)
    positions = model.vit.embeddings.position_embeddings[0, 1:]
    expected = torch.where(mask[..., None], model.mask_token[0], patches) + positions
    torch.testing.assert_close(out.hidden_states[0][:, 1:], expected, rtol=1e-6, atol=1e-6)
    assert out.logits.shape == (2, 16, 512)  # every patch predicted; the loss reads the masked ones


def test_without_labels_the_model_computes_the_papers_targets_from_pixel_values():
    model = _mpp()
    images, classes = _patchwise_images()
    pixel_values = ViTImageProcessor(size={"height": 32, "width": 32})(list(images), return_tensors="pt")["pixel_values"]
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    with torch.no_grad():
        out = model(pixel_values, bool_masked_pos=mask)
    expected = F.cross_entropy(out.logits[mask], classes[mask])
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    # The same targets given as labels (the unmasked ones left out with -100) give the same loss.
    labels = torch.where(mask, classes, torch.full_like(classes, -100))
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values, bool_masked_pos=mask, labels=labels).loss, expected)
    # A plan without labels: the targets at its positions, from the same computation.
    positions = torch.tensor([[0, 3, 9], [1, 2, 14]])
    with torch.no_grad():
        planned = model(pixel_values, corrupted_positions=positions)
    torch.testing.assert_close(planned.loss, F.cross_entropy(planned.logits.reshape(-1, 512), classes.gather(1, positions).reshape(-1)))


def test_the_recorded_processor_normalisation_is_what_the_targets_invert():
    images, classes = _patchwise_images(seed=3)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.2, 0.4, 0.6], image_std=[0.1, 0.3, 0.2])
    pixel_values = processor(list(images), return_tensors="pt")["pixel_values"]
    mask = torch.ones(2, 16, dtype=torch.bool)
    model = _mpp()
    with torch.no_grad():
        wrong = model(pixel_values, bool_masked_pos=mask).loss  # still the default 0.5 / 0.5
        model.config.record_image_normalization(processor)
        right = model(pixel_values, bool_masked_pos=mask)
    torch.testing.assert_close(right.loss, F.cross_entropy(right.logits.reshape(-1, 512), classes.reshape(-1)))
    assert not torch.isclose(wrong, right.loss)
    assert model.config.image_mean == [0.2, 0.4, 0.6] and model.config.image_std == [0.1, 0.3, 0.2]
    # A processor that does not normalise: the input is the image itself.
    model.config.record_image_normalization(ViTImageProcessor(do_normalize=False))
    assert (model.config.image_mean, model.config.image_std) == ([0.0], [1.0])
    with torch.no_grad():
        raw = model(images, bool_masked_pos=mask)
    torch.testing.assert_close(raw.loss, F.cross_entropy(raw.logits.reshape(-1, 512), classes.reshape(-1)))
    # Saved and loaded with the model; defaults are ViTImageProcessor's.
    assert ViTConfig().image_mean == ViTImageProcessor().image_mean == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="image_mean.*1 or `num_channels` \\(3\\)"):
        ViTConfig(image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="image_std.*positive"):
        ViTConfig(image_std=[0.0])
    # A greyscale model: processors store three equal values, kept once; three different ones cannot apply.
    grey = ViTConfig(num_channels=1)
    assert (grey.image_mean, grey.image_std) == ([0.5], [0.5])
    grey.record_image_normalization(ViTImageProcessor(image_mean=[0.3, 0.3, 0.3], image_std=[0.2, 0.2, 0.2]))
    assert (grey.image_mean, grey.image_std) == ([0.3], [0.2])
    with pytest.raises(ValueError, match="image_mean.*1 or `num_channels` \\(1\\)"):
        grey.record_image_normalization(ViTImageProcessor(image_mean=[0.2, 0.4, 0.6]))
    assert (grey.image_mean, grey.image_std) == ([0.3], [0.2])  # unchanged after the refusal


@pytest.mark.parametrize("target", ["downsampled", "pixels"])
def test_bool_masked_pos_with_the_other_targets(target):
    model = _mpp(mpp_target=target)
    images, _ = _patchwise_images()
    pixel_values = (images - 0.5) / 0.5
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::3] = True
    with torch.no_grad():
        out = model(pixel_values, bool_masked_pos=mask)
    patches = images.reshape(2, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 3, 8, 8)
    if target == "downsampled":
        # Flat patches: all 16 sub-patches have the patch's colour.
        levels = (patches[..., 0, 0] * 8).floor().long().clamp(max=7)  # (2, 16, 3)
        classes = (levels[..., 0] * 64 + levels[..., 1] * 8 + levels[..., 2])[..., None].expand(-1, -1, 16)
        assert out.logits.shape == (2, 16, 16, 512)
        expected = F.cross_entropy(out.logits[mask].reshape(-1, 512), classes[mask].reshape(-1))
    else:
        assert out.logits.shape == (2, 16, 192)
        expected = F.mse_loss(out.logits[mask], patches.reshape(2, 16, 192)[mask])
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_bad_masks_are_refused_and_integer_masks_taken():
    model = _mpp()
    pixel_values = pixel_values_for(model.config)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values, bool_masked_pos=mask.long()).loss,
                                   model(pixel_values, bool_masked_pos=mask).loss, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"bool_masked_pos.*\(2, 16\)"):
        model(pixel_values, bool_masked_pos=mask[:, :15])
    with pytest.raises(ValueError, match="bool or 0/1 integer"):
        model(pixel_values, bool_masked_pos=mask.float())
    with pytest.raises(ValueError, match="only 0 and 1"):
        model(pixel_values, bool_masked_pos=mask.long() * 2)
    with pytest.raises(ValueError, match="not both"):
        model(pixel_values, bool_masked_pos=mask, corrupted_positions=torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="no patch to predict"):
        model(pixel_values, bool_masked_pos=torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"labels.*\(2, 16\)"):
        model(pixel_values, bool_masked_pos=mask, labels=torch.zeros(2, 4, dtype=torch.long))


def test_a_run_mim_style_trainer_loop_trains_masked_patch_prediction(tmp_path):
    """transformers' run_mim.py: the collator gives pixel_values and bool_masked_pos only, Trainer calls the model."""
    from hf_vit.data import load_digits_data

    data = load_digits_data()
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    generator = np.random.default_rng(0)

    def transform(batch):
        return {"pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"]}

    def collate(rows):
        masks = []
        for _ in rows:
            mask = np.zeros(16, dtype=int)  # run_mim.py's MaskGenerator: 0/1 integers, a fixed count
            mask[generator.permutation(16)[:8]] = 1
            masks.append(torch.tensor(mask))
        return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]), "bool_masked_pos": torch.stack(masks)}

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64)
    model = ViTForMaskedPatchPrediction(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=32, max_steps=40, learning_rate=3e-3, warmup_steps=4,
        logging_steps=10, remove_unused_columns=False, report_to="none", use_cpu=True, save_strategy="no", seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data.train.with_transform(transform),
                                   data_collator=collate)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.7 * losses[0], losses  # ln(512) = 6.2 at the start; digits have few grey levels


# ---- the other keywords of transformers' image models, on every class -----------------------------------------------


def _every_class():
    mae = dict(decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
               decoder_intermediate_size=64)
    return [
        (ViTModel, {}), (ViTForImageClassification, {}), (ViTBackbone, {}), (ViTForMaskedPatchPrediction, {}),
        (ViTForMaskedAutoencoding, mae),
    ]


@pytest.mark.parametrize("model_class,fields", _every_class(), ids=lambda v: getattr(v, "__name__", ""))
def test_unused_keywords_are_refused_never_dropped(model_class, fields):
    torch.manual_seed(0)
    model = model_class(make_config(**fields)).eval()
    pixel_values = pixel_values_for(model.config)
    name = model_class.__name__
    with pytest.raises(TypeError, match=f"{name}.forward.*'head_mask'.*does not mask attention heads"):
        model(pixel_values, head_mask=torch.ones(2, 4))
    with pytest.raises(TypeError, match="'attention_mask'.*no padding"):
        model(pixel_values, attention_mask=torch.ones(2, 17))
    with pytest.raises(TypeError, match="'output_router_logits'"):
        model(pixel_values, output_router_logits=True)
    # None means nothing was asked: accepted (generic callers pass such keywords), and Trainer's num_items_in_batch.
    torch.manual_seed(1)
    with torch.no_grad():
        plain = model(pixel_values)
    torch.manual_seed(1)
    with torch.no_grad():
        with_none = model(pixel_values, head_mask=None, attention_mask=None, num_items_in_batch=None)
    first = lambda out: out.feature_maps[-1] if hasattr(out, "feature_maps") else out[0]  # noqa: E731
    torch.testing.assert_close(first(with_none), first(plain), rtol=0, atol=0)
    if model_class is not ViTForMaskedAutoencoding:
        with pytest.raises(TypeError, match="'noise'.*ViTForMaskedAutoencoding"):
            model(pixel_values, noise=torch.rand(2, 16))
    if model_class in (ViTModel, ViTForImageClassification, ViTBackbone):
        with pytest.raises(TypeError, match="'bool_masked_pos'.*no \\[mask\\] embedding.*ViTForMaskedPatchPrediction"):
            model(pixel_values, bool_masked_pos=torch.zeros(2, 16, dtype=torch.bool))
    if model_class in (ViTModel, ViTBackbone):
        with pytest.raises(TypeError, match="'labels'.*computes no loss"):
            model(pixel_values, labels=torch.zeros(2, dtype=torch.long))


def test_classifier_labels_shapes_are_checked():
    torch.manual_seed(0)
    model = ViTForImageClassification(make_config(head_zero_init=False)).eval()  # 3 labels
    pixel_values = pixel_values_for(model.config)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        loss = model(pixel_values, labels=labels).loss
        torch.testing.assert_close(model(pixel_values, labels=labels[:, None]).loss, loss, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"one entry per image \(2\)"):
        model(pixel_values, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"Single-label `labels` must be integer class indices of shape \(2,\)"):
        model(pixel_values, labels=torch.zeros(2, 3, dtype=torch.long))
    # The first loss recorded the problem type (transformers' loss_function does): floats are refused for it now.
    assert model.config.problem_type == "single_label_classification"
    with pytest.raises(ValueError, match=r"Single-label `labels` must be integer.*got torch.float32"):
        model(pixel_values, labels=torch.tensor([0.0, 1.0]))
    torch.manual_seed(0)
    model = ViTForImageClassification(make_config(head_zero_init=False)).eval()
    with pytest.raises(ValueError, match=r"Multi-label `labels` must be float targets of shape \(2, 3\)"):
        model(pixel_values, labels=torch.tensor([0.0, 1.0]))
    multi = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with torch.no_grad():
        logits = model(pixel_values).logits
        torch.testing.assert_close(model(pixel_values, labels=multi).loss, F.binary_cross_entropy_with_logits(logits, multi))
    regression = ViTForImageClassification(make_config(num_labels=1)).eval()
    with pytest.raises(ValueError, match=r"Regression `labels`"):
        regression(pixel_values, labels=torch.zeros(2, 2))


def test_num_items_in_batch_makes_the_loss_a_share_of_the_steps_sum():
    torch.manual_seed(0)
    model = ViTForImageClassification(make_config(head_zero_init=False)).eval()
    pixel_values, labels = pixel_values_for(model.config), torch.tensor([1, -100])
    with torch.no_grad():
        logits = model(pixel_values).logits
        loss = model(pixel_values, labels=labels, num_items_in_batch=torch.tensor(5)).loss
    torch.testing.assert_close(loss, F.cross_entropy(logits[:1], labels[:1], reduction="sum") / 5)
    mpp = _mpp()
    positions, targets = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[4, 5], [6, 7]])
    with torch.no_grad():
        out = mpp(pixel_values, corrupted_positions=positions, labels=targets, num_items_in_batch=8)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.reshape(-1, 512), targets.reshape(-1), reduction="sum") / 8)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        model(pixel_values, labels=labels, num_items_in_batch=0)


def test_trainer_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Trainer passes num_items_in_batch and then does not divide by the accumulation steps: two micro-batches of 4
    must give the optimiser step of one batch of 8."""
    from hf_vit.data import load_digits_data

    data = load_digits_data()
    processor = ViTImageProcessor(size={"height": 16, "width": 16})

    def transform(batch):
        return {"pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"], "labels": batch["label"]}

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=64, num_labels=10, head_zero_init=False)
    weights = {}
    for batch, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = ViTForImageClassification(config)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / f"{batch}"), per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, max_steps=2, learning_rate=0.5, optim="sgd", weight_decay=0.0,
            lr_scheduler_type="constant", max_grad_norm=0.0, remove_unused_columns=False, report_to="none",
            use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
        )
        transformers.Trainer(model=model, args=args, train_dataset=data.train.with_transform(transform)).train()
        weights[accumulation] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[2][key], value, rtol=1e-4, atol=1e-6, msg=key)
