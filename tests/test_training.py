"""The shared training system: optimiser groups, schedules, EMA, augmentations, the seeded sampler, the loop."""

import math
import types

import pytest
import torch

from hf_vit import ViTConfig, ViTForImageClassification, ViTImageProcessor
from hf_vit.data import DataArguments, ImageClassificationCollator, TrainerTransform, load_image_classification_data
from hf_vit.data.augmentation import (
    BatchAugmentation,
    mixup_cutmix,
    rand_augment,
    random_resized_crop_flip,
    random_translate,
    resolve_augmentation,
)
from hf_vit.data.loader import SeededBatchSampler, build_train_loader
from hf_vit.training import ModelArguments, TrainArguments, parse_recipe_args
from hf_vit.training.ema import ModelEMA
from hf_vit.training.loop import batch_plan, train
from hf_vit.training.optim import build_optimizer, lr_multiplier, parameter_groups
from hf_vit.training.tasks import ClassificationTask


def tiny_model(num_labels=10, **overrides):
    fields = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, num_labels=num_labels)
    fields.update(overrides)
    return ViTForImageClassification(ViTConfig(**fields))


def tiny_args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), report_to="none", batch_size=32, max_steps=6, warmup_steps=1,
                  eval_every_steps=-1, log_every_steps=2, learning_rate=3e-3)
    values.update(overrides)
    return TrainArguments(**values)


@pytest.fixture(scope="module")
def digits():
    return load_image_classification_data(DataArguments(dataset="digits"))


@pytest.fixture(scope="module")
def processor():
    return ViTImageProcessor(size={"height": 16, "width": 16})


# ---------------------------------------------------------------------------------------------------------------------
# Optimiser groups and schedules


def test_weight_decay_follows_the_models_declaration():
    model = tiny_model()
    groups = parameter_groups(model, weight_decay=0.1)
    exempt = model.no_weight_decay_parameter_names()
    for group in groups:
        for name in group["names"]:
            assert (name in exempt) == (group["weight_decay"] == 0.0), name
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert "vit.embeddings.position_embeddings" not in decayed and "vit.embeddings.cls_token" not in decayed
    assert any(n.endswith("qkv.weight") for n in decayed)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_layer_decay_scales_by_declared_depth():
    model = tiny_model()
    depths = model.parameter_layer_ids()
    groups = parameter_groups(model, weight_decay=0.0, layer_decay=0.5)
    top = max(depths.values())  # 3: head and final norm; 0: embeddings
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    assert scale["classifier.weight"] == 1.0
    assert scale["vit.embeddings.patch_embeddings.projection.weight"] == pytest.approx(0.5**top)
    assert scale["vit.encoder.layers.0.attention.qkv.weight"] == pytest.approx(0.5 ** (top - 1))
    args = types.SimpleNamespace(weight_decay=0.0, layer_decay=0.5, learning_rate=0.1, optimizer="sgd", momentum=0.9)
    optimizer = build_optimizer(model, args)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx(sorted({0.1 * 0.5**k for k in range(top + 1)}))
    with pytest.raises(ValueError, match="layer_decay"):
        parameter_groups(model, 0.0, layer_decay=1.5)


def test_schedule_warms_up_then_decays():
    values = [lr_multiplier(s, 100, 10, "linear") for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[55] == pytest.approx(0.5) and values[-1] < 0.02
    cosine = [lr_multiplier(s, 100, 10, "cosine") for s in range(10, 100)]
    assert cosine[0] == pytest.approx(1.0) and cosine[45] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    with pytest.raises(ValueError, match="lr_decay"):
        lr_multiplier(0, 10, 0, "step")


def test_batch_plan_reaches_the_global_batch():
    assert batch_plan(64, 1, 512) == (64, 1)
    assert batch_plan(4096, 2, 512) == (512, 4)
    assert batch_plan(96, 2, 20) == (16, 3)  # 48 per process, at most 20 at once -> 3 x 16
    with pytest.raises(ValueError, match="divisible"):
        batch_plan(33, 2, 512)


# ---------------------------------------------------------------------------------------------------------------------
# EMA


def test_ema_warms_up_and_averages():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = ModelEMA(model, decay=0.9999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.model.weight.flatten().tolist() == pytest.approx([0.9, 0.9])  # 0.1 * 0 + 0.9 * 1
    assert ema.current_decay() == pytest.approx(2 / 11)
    for _ in range(100_000):
        ema.num_updates += 1
    assert ema.current_decay() == 0.9999  # the paper's factor once warmed up
    fixed = ModelEMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    fixed.update(model)
    assert fixed.model.weight.flatten().tolist() == pytest.approx([0.9 * 1.0 + 0.1 * 2.0] * 2)
    restored = ModelEMA(model, decay=0.5)
    restored.load_state_dict(fixed.state_dict())
    assert restored.num_updates == 1 and torch.equal(restored.model.weight, fixed.model.weight)
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEMA(model, decay=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Augmentations


def test_translation_moves_content_and_keeps_shape():
    image = torch.zeros(1, 3, 16, 16)
    image[:, :, 6:10, 6:10] = 1.0
    generator = torch.Generator().manual_seed(0)
    shifted = [random_translate(image, generator=generator) for _ in range(20)]
    assert all(s.shape == image.shape for s in shifted)
    assert all(s.sum() == image.sum() for s in shifted)  # the square stays whole (shift <= 2 px, 6 px margin)
    assert any(not torch.equal(s, image) for s in shifted)


def test_augmentation_is_a_function_of_its_generator():
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    for name in ("translate", "crop", "crop_flip", "inception_crop_flip"):
        augment = BatchAugmentation(name, [0.5] * 3, [0.5] * 3, randaugment_num_ops=2)
        a = augment(images, generator=torch.Generator().manual_seed(1))
        b = augment(images, generator=torch.Generator().manual_seed(1))
        c = augment(images, generator=torch.Generator().manual_seed(2))
        assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c), name


def test_crop_flip_pads_with_black_and_flips():
    augment = BatchAugmentation("crop_flip", [0.5] * 3, [0.5] * 3)
    assert augment.black == -1.0
    image = torch.ones(64, 1, 8, 8)
    out = augment(image, generator=torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {-1.0, 1.0} and (out == -1.0).any()  # borders are black, no smearing
    ramp = torch.arange(8.0).expand(64, 1, 8, 8)
    flipped = BatchAugmentation("crop_flip", [0.0], [1.0])(ramp, generator=torch.Generator().manual_seed(0))
    rows = flipped[:, 0, 4]
    assert (rows[:, 3] < rows[:, 4]).any() and (rows[:, 3] > rows[:, 4]).any()  # some mirrored, some not


def test_inception_crop_covers_the_requested_area_range():
    image = torch.linspace(-1, 1, 32).expand(16, 3, 32, 32).contiguous()
    full = random_resized_crop_flip(image, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(full.abs(), image.abs(), atol=1e-5)  # a full-area square crop is the image or its mirror
    small = random_resized_crop_flip(image, scale=(0.1, 0.1), generator=torch.Generator().manual_seed(0))
    span = small.amax(dim=(1, 2, 3)) - small.amin(dim=(1, 2, 3))
    assert (span < 1.5).all()  # a 10% crop spans only part of the ramp's range of 2


def test_rand_augment_magnitude_zero_keeps_photometric_images():
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    out = rand_augment(images, num_ops=2, magnitude=0, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                       generator=torch.Generator().manual_seed(0), ops=("identity", "brightness", "contrast"))
    assert torch.allclose(out, images, atol=1e-6)
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        rand_augment(images, 1, 11, [0.5] * 3, [0.5] * 3)


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_mix_pixels_and_labels_alike(mixup, cutmix):
    images = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])  # image i is constant i
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = mixup_cutmix(images, labels, 5, mixup, cutmix, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(targets.sum(-1), torch.ones(4))
    lam = targets[0, 0].item()  # image 0 is mixed with image 3 (the batch reversed)
    assert targets[0, 3].item() == pytest.approx(1 - lam)
    assert mixed[0].mean().item() == pytest.approx(3 * (1 - lam), abs=1e-5)  # pixels mixed with the same weight
    none = mixup_cutmix(images, labels, 5)[1]
    assert torch.equal(none, torch.nn.functional.one_hot(labels, 5).float())


def test_auto_augmentation_per_data_set():
    assert resolve_augmentation("auto", "digits") == "translate"  # digits are never flipped
    assert resolve_augmentation("auto", "idx") == "crop"
    assert resolve_augmentation("auto", "imagefolder") == "inception_crop_flip"  # the paper's, natural images
    with pytest.raises(ValueError, match="augmentation"):
        resolve_augmentation("flip_everything", "digits")


# ---------------------------------------------------------------------------------------------------------------------
# Seeded batches


def test_sampler_covers_each_epoch_and_resumes_mid_epoch():
    sampler = SeededBatchSampler(100, 8, seed=0, accumulation=2)  # 12 chunks -> 6 steps of 2
    assert sampler.steps_per_epoch == 6
    first = list(sampler)
    rows = [r for batch in first for r in batch]
    assert len(rows) == 96 and len(set(rows)) == 96
    sampler.set_epoch(1)
    assert [list(b) for b in sampler] != [list(b) for b in first]  # a new permutation each epoch
    sampler.set_epoch(0, start_step=4)
    resumed = list(sampler)
    assert [(list(b), b.seed) for b in resumed] == [(list(b), b.seed) for b in first[8:]]


def test_sampler_shards_are_the_single_process_chunks():
    single = list(SeededBatchSampler(100, 8, seed=3, accumulation=2))
    shards = [list(SeededBatchSampler(100, 8, seed=3, num_processes=2, process_index=p)) for p in range(2)]
    interleaved = [batch for pair in zip(*shards) for batch in pair]
    assert [(list(b), b.seed) for b in interleaved] == [(list(b), b.seed) for b in single]


def test_workers_give_the_same_batches_as_the_main_process(digits, processor):
    augment = BatchAugmentation("translate", processor.image_mean, processor.image_std)
    collate = ImageClassificationCollator(processor, augment)
    batches = {}
    for workers in (0, 2):
        loader, sampler = build_train_loader(digits.train, collate, 64, 0, 1, 0, 1, num_workers=workers)
        sampler.set_epoch(0)
        batches[workers] = [b["pixel_values"] for _, b in zip(range(3), loader)]
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))


# ---------------------------------------------------------------------------------------------------------------------
# Arguments


def test_yaml_values_are_typed_like_the_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-3\nfewshot_shots: [1, 5]\nstreaming: false\nrepresentation_size: null\n")
    model_args, data_args, train_args = parse_recipe_args((ModelArguments, DataArguments, TrainArguments), [str(config)])
    assert isinstance(train_args.learning_rate, float) and train_args.learning_rate == 1e-3  # YAML 1.1 reads a string
    assert train_args.fewshot_shots == [1, 5] and data_args.streaming is False
    _, _, overridden = parse_recipe_args(
        (ModelArguments, DataArguments, TrainArguments), [str(config), "--learning_rate", "0.5"]
    )
    assert overridden.learning_rate == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# The loop


def _train_tiny(tmp_path, digits, processor, seed=0, **overrides):
    torch.manual_seed(0)
    model = tiny_model()
    task = ClassificationTask(model, processor)
    args = tiny_args(tmp_path, seed=seed, **overrides)
    result = train(task, digits.train, args, eval_dataset=digits.validation.select(range(64)))
    return task.model, result


def test_accumulation_matches_one_big_batch(tmp_path, digits, processor):
    # SGD: Adam would normalise the pure-rounding-noise gradient of the key bias (softmax ignores it) to full steps.
    sgd = dict(optimizer="sgd", learning_rate=0.5)
    whole, result = _train_tiny(tmp_path / "a", digits, processor, **sgd)
    accumulated, _ = _train_tiny(tmp_path / "b", digits, processor, max_device_batch_size=16, **sgd)
    assert result.global_step == 6 and "accuracy" in result.last_eval
    # Same examples, same mean gradient: only the float summation order differs.
    for (name, a), b in zip(whole.state_dict().items(), accumulated.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), name
    torch.manual_seed(0)
    initial = tiny_model().state_dict()
    moved = (whole.state_dict()["vit.encoder.layers.0.attention.qkv.weight"] - initial["vit.encoder.layers.0.attention.qkv.weight"])
    assert moved.abs().max().item() > 1e-3  # ... while training moved the weights far more than that


def test_loop_learns_and_keeps_an_ema(tmp_path, digits, processor):
    model, result = _train_tiny(tmp_path, digits, processor, max_steps=60, ema_decay=0.99, eval_every_steps=60)
    assert result.ema is not None and result.ema.num_updates == 60
    assert result.last_eval["accuracy"] > 0.25 and "ema_accuracy" in result.last_eval
    averaged = result.ema.model.state_dict()["classifier.weight"]
    assert not torch.equal(averaged, model.state_dict()["classifier.weight"])


def test_soft_targets_and_label_smoothing_in_the_task(processor):
    model = tiny_model(num_labels=3)
    task = ClassificationTask(model, processor, label_smoothing=0.1)
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 0])}
    loss, metrics = task.step(batch)
    assert loss.item() == pytest.approx(math.log(3), abs=1e-5)  # zero-initialised head: uniform predictions
    soft = dict(batch, labels=torch.full((4, 3), 1 / 3))
    assert task.step(soft)[0].item() == pytest.approx(math.log(3), abs=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationTask(model, processor, label_smoothing=1.0)


def test_trainer_route_uses_the_same_data_and_transforms(tmp_path, digits, processor):
    from transformers import Trainer, TrainingArguments

    from hf_vit.evaluation import compute_accuracy

    torch.manual_seed(0)
    model = tiny_model()
    transform = TrainerTransform(processor, BatchAugmentation("translate", processor.image_mean, processor.image_std),
                                 seed=0)
    train_set = transform.prepare(digits.train)  # seeded: with the row index each row's augmentation comes from
    eval_set = digits.test.with_transform(TrainerTransform(processor))
    arguments = TrainingArguments(
        str(tmp_path / "trainer"), remove_unused_columns=False, per_device_train_batch_size=64, max_steps=40,
        learning_rate=3e-3, report_to=[], save_strategy="no", logging_steps=5, use_cpu=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=train_set, eval_dataset=eval_set,
                      compute_metrics=compute_accuracy, callbacks=[transform])
    trainer.train()
    assert transform.epoch == 1  # 40 batches of 64: the second pass over the 1293 rows (21 batches each) began
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] > 0.2 and "eval_top5_accuracy" in metrics


def test_bf16_mixed_precision_trains(tmp_path, digits, processor):
    from accelerate.state import AcceleratorState

    # Accelerate keeps one precision per process: start from a fresh state, and leave one for the float32 tests.
    AcceleratorState._reset_state()
    try:
        model, result = _train_tiny(tmp_path, digits, processor, max_steps=3, mixed_precision="bf16", eval_every_steps=3)
    finally:
        AcceleratorState._reset_state()
    assert result.global_step == 3 and math.isfinite(result.last_eval["loss"])
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay in float32
