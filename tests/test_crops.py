"""The random resized crop on the decoded image (issue 17, point 1): box statistics, crops cut from the original and
resized once, the processor's conversions, seeds independent of threads / workers / caching, the Trainer and
masked-patch routes."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vit import ViTImageProcessor
from hf_vit.data import (
    BatchAugmentation,
    DataArguments,
    DecodedImages,
    ImageClassificationCollator,
    TrainerTransform,
    augmented_pixel_values,
    build_train_loader,
    crop_resize_batch,
    derive_seed,
    load_image_classification_data,
    sample_crop_box,
    training_rows,
)
from hf_vit.data.augmentation import crop_is_flipped, draw_crops
from hf_vit.data.loader import ExampleBatch


MEAN = STD = [0.5, 0.5, 0.5]


def inception(**options):
    return BatchAugmentation("inception_crop_flip", MEAN, STD, **options)


def _ks_uniform(values, low, high) -> float:
    """Kolmogorov-Smirnov distance between the sample and the uniform distribution on [low, high]."""
    values = np.sort((np.asarray(values) - low) / (high - low))
    n = len(values)
    return max(np.max(np.arange(1, n + 1) / n - values), np.max(values - np.arange(n) / n))


def _jpeg(array, quality=95) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return {"bytes": buffer.getvalue(), "path": None}


def _stripes(size=512, period=8) -> np.ndarray:
    """Vertical black and white stripes, `period` pixels each pair: a pattern a pre-resized image cannot hold."""
    row = np.where((np.arange(size) // (period // 2)) % 2 == 0, 0, 255).astype(np.uint8)
    return np.repeat(np.broadcast_to(row, (size, size))[..., None], 3, axis=2).copy()


# ---------------------------------------------------------------------------------------------------------------------
# The boxes


def test_crop_boxes_have_the_papers_area_and_aspect_distribution():
    height = width = 1000
    draws = draw_crops(20000, torch.Generator().manual_seed(0))
    boxes = np.array([sample_crop_box(height, width, row) for row in draws])
    top, left, crop_h, crop_w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + crop_h <= height).all() and (left + crop_w <= width).all()  # always inside the image
    share, aspect = crop_h * crop_w / (height * width), crop_w / crop_h
    assert share.min() >= 0.08 * 0.99 and share.max() <= 1.0
    assert aspect.min() >= 0.75 * 0.99 and aspect.max() <= 4 / 3 * 1.01  # whole pixels: within rounding
    # Below 75% of the area every aspect fits, so there the draws are uniform in area and in log-aspect, as sampled.
    small = share < 0.75
    assert small.mean() > 0.6
    assert _ks_uniform(share[small], 0.08, 0.75) < 0.02
    assert _ks_uniform(np.log(aspect[small]), math.log(0.75), math.log(4 / 3)) < 0.02
    # Positions uniform over where the box fits (never always at one edge); a flip for about half of the images.
    room = height - crop_h
    assert abs(np.mean(top[room > 0] / room[room > 0]) - 0.5) < 0.02
    flips = np.array([crop_is_flipped(row) for row in draws])
    assert abs(flips.mean() - 0.5) < 0.02


def test_crop_boxes_of_a_photo_and_the_fallback():
    draws = draw_crops(2000, torch.Generator().manual_seed(1))
    boxes = np.array([sample_crop_box(375, 500, row, scale=(0.3, 0.6), ratio=(0.5, 2.0)) for row in draws])
    top, left, crop_h, crop_w = boxes.T
    assert (top + crop_h <= 375).all() and (left + crop_w <= 500).all()
    share = crop_h * crop_w / (375 * 500)
    assert share.min() >= 0.3 * 0.98 and share.max() <= 0.6 * 1.02
    # A panorama where no box of the whole area and an aspect <= 4/3 fits: torchvision's fallback, the largest centred
    # box with the aspect clamped into range.
    assert sample_crop_box(100, 1000, draws[0], scale=(1.0, 1.0)) == (0, (1000 - 133) // 2, 100, 133)
    with pytest.raises(ValueError, match="crop_scale"):
        inception(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="crop_ratio"):
        inception(crop_ratio=(0.0, 1.0))


# ---------------------------------------------------------------------------------------------------------------------
# Cut from the original, resized once


def test_the_crop_is_cut_from_the_original_image():
    processor = ViTImageProcessor(size=32)
    stripes = _stripes()  # 512 x 512, period 8: 64 periods
    rows = [{"image": _jpeg(stripes), "label": 0}, {"image": Image.fromarray(stripes), "label": 1}]
    augment = inception(crop_scale=(0.01, 0.01), crop_ratio=(1.0, 1.0))  # a 51-pixel square: ~6 periods
    batch = ImageClassificationCollator(processor, augment)(ExampleBatch(rows, seed=3))["pixel_values"]
    assert batch.shape == (2, 3, 32, 32)
    assert (batch.std(dim=(1, 2, 3)) > 0.6).all()  # the stripes survive (black and white: std up to 1)
    # The same box cut from the model-size image (what the collator did before) holds no stripes any more: the
    # resize to 32 pixels averaged 16 periods into every pixel.
    resized = processor([Image.fromarray(stripes)])["pixel_values"]
    assert float(augment(resized, generator=torch.Generator().manual_seed(0)).std()) < 0.1


def test_a_whole_image_crop_is_the_processors_output_for_every_kind_of_image():
    processor = ViTImageProcessor(size=24)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation "rotate 90"
    Image.fromarray(photo).save(turned, "JPEG", exif=exif)
    rgba = np.concatenate([photo, rng.integers(0, 256, (40, 40, 1), dtype=np.uint8)], axis=2)
    png16 = io.BytesIO()
    Image.fromarray((photo[..., 0].astype(np.uint16) * 257)).save(png16, "PNG")
    images = [
        _jpeg(photo), {"bytes": turned.getvalue(), "path": None}, Image.fromarray(photo).convert("L"),
        Image.fromarray(rgba), {"bytes": png16.getvalue(), "path": None}, photo, torch.from_numpy(photo).permute(2, 0, 1),
    ]
    whole = inception(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    draws = whole.draw_crops(len(images), torch.Generator().manual_seed(0))
    draws[:, -1] = 0.75  # no flips
    got = crop_resize_batch(images, processor, whole, draws, num_threads=2)
    decoded = [Image.open(io.BytesIO(i["bytes"])) if isinstance(i, dict) else i for i in images]
    expected = processor(decoded)["pixel_values"]
    assert got.shape == expected.shape == (7, 3, 24, 24)
    for index in range(len(images)):
        if index == 4:  # 16-bit: float arithmetic, resized alone instead of in the processor's batch
            assert torch.allclose(got[index], expected[index], atol=1e-6), index
        else:
            assert torch.equal(got[index], expected[index]), index
    flipped = whole.draw_crops(1, torch.Generator().manual_seed(0))
    flipped[:, -1] = 0.25
    mirrored = crop_resize_batch(images[:1], processor, whole, flipped)
    assert torch.equal(mirrored[0], expected[0].flip(-1))


def test_crops_follow_the_processors_size_centre_crop_and_channels():
    photo = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    cropping = ViTImageProcessor(size=40, do_center_crop=True, crop_size=32)
    out = augmented_pixel_values([Image.fromarray(photo)], cropping, inception(), torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 32, 32)  # the model's input size: the processor's crop size
    grey = ViTImageProcessor(size=16, do_convert_rgb=False, image_mean=[0.5], image_std=[0.5])
    out = augmented_pixel_values([Image.fromarray(photo).convert("L")] * 2, grey, inception())
    assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="different channel counts"):
        augmented_pixel_values([Image.fromarray(photo).convert("L"), Image.fromarray(photo)], grey, inception())


@pytest.mark.parametrize("mode, options", [
    ("RGB", dict(quality=90)),  # 4:2:0 chroma: 16-row blocks
    ("RGB", dict(quality=90, progressive=True)),
    ("RGB", dict(quality=95, subsampling=0)),  # 4:4:4: 8-row blocks
    ("RGB", dict(quality=85, restart_marker_rows=1)),
    ("L", dict(quality=90)),
])
def test_a_jpeg_decoded_down_to_its_box_has_exactly_the_full_decodes_rows(mode, options):
    from sklearn.datasets import load_sample_images

    from hf_vit.data.decoding import _jpeg_down_to, _jpeg_frame

    buffer = io.BytesIO()
    Image.fromarray(load_sample_images().images[0][50:250, 100:400]).convert(mode).save(buffer, "JPEG", **options)
    data = buffer.getvalue()
    frame = _jpeg_frame(data)
    assert (frame.height, frame.width, frame.components) == (200, 300, 3 if mode == "RGB" else 1)
    full = np.asarray(Image.open(io.BytesIO(data)))
    for bottom in (1, 16, 37, 120, 150):
        short = _jpeg_down_to(data, frame, bottom)
        rows = np.asarray(Image.open(io.BytesIO(short)))
        assert bottom + frame.block_rows <= rows.shape[0] <= bottom + 2 * frame.block_rows  # fewer rows decoded
        assert np.array_equal(rows[:bottom], full[:bottom]), bottom
    assert _jpeg_down_to(data, frame, frame.height - frame.block_rows) is data  # no row of blocks to save


def test_jpegs_that_may_turn_or_are_not_rgb_take_the_processors_path():
    from hf_vit.data.decoding import _jpeg_frame

    photo = Image.fromarray(np.zeros((16, 24, 3), dtype=np.uint8))
    exif, cmyk = io.BytesIO(), io.BytesIO()
    photo.save(exif, "JPEG", exif=Image.Exif())
    photo.convert("CMYK").save(cmyk, "JPEG")
    assert _jpeg_frame(exif.getvalue()) is None and _jpeg_frame(cmyk.getvalue()) is None
    assert _jpeg_frame(b"\x89PNG\r\n") is None


# ---------------------------------------------------------------------------------------------------------------------
# Seeds: the same batch whatever the threads, workers or caching


def _photo_folder(root, per_class=6):
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    for label in ("china", "flower"):
        (root / label).mkdir(parents=True)
    for i in range(2 * per_class):
        label, photo = ("china", photos[0]) if i % 2 == 0 else ("flower", photos[1])
        top, left = 7 * i, 11 * i
        Image.fromarray(photo[top : top + 150, left : left + 200]).save(root / label / f"{i}.jpg", quality=90)
    return root


def test_crops_are_the_same_with_any_threads_workers_or_decoded_cache(tmp_path):
    data_args = DataArguments(dataset=str(_photo_folder(tmp_path / "photos")), validation_fraction=0.0,
                              test_fraction=0.25)
    data = load_image_classification_data(data_args)
    processor = ViTImageProcessor(size=32)
    rows = training_rows(data, data_args, processor)
    assert rows[0]["image"]["path"].endswith(".jpg")  # undecoded: the collator decodes each image once
    examples = ExampleBatch(rows.__getitems__(list(range(len(rows)))), seed=7)
    one = ImageClassificationCollator(processor, inception(), num_threads=1)(examples)["pixel_values"]
    three = ImageClassificationCollator(processor, inception(), num_threads=3)(examples)["pixel_values"]
    assert torch.equal(one, three)
    cached = DecodedImages(data.train, processor)
    from_memory = ImageClassificationCollator(processor, inception())(
        ExampleBatch(cached.__getitems__(list(range(len(cached)))), seed=7))["pixel_values"]
    assert torch.equal(from_memory, one)  # decoded in memory or from the files: the same crops
    other_seed = ImageClassificationCollator(processor, inception())(ExampleBatch(list(examples), seed=8))
    assert not torch.equal(other_seed["pixel_values"], one)

    batches = {}
    for workers in (0, 2):
        loader, sampler = build_train_loader(rows, ImageClassificationCollator(processor, inception()), 3, 0, 1, 0, 1,
                                             num_workers=workers)
        sampler.set_epoch(1)
        batches[workers] = [b["pixel_values"] for _, b in zip(range(2), loader)]
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))


def test_reduced_jpeg_decoding_is_close_and_decodes_smaller(monkeypatch):
    from sklearn.datasets import load_sample_images

    photo = _jpeg(load_sample_images().images[0][:400, :400], quality=90)
    processor = ViTImageProcessor(size=64)
    whole = inception(crop_scale=(0.9, 1.0))
    draws = whole.draw_crops(4, torch.Generator().manual_seed(0))
    decoded_widths = []
    crop = Image.Image.crop

    def spy(image, box=None):
        decoded_widths.append(image.size[0])
        return crop(image, box)

    monkeypatch.setattr(Image.Image, "crop", spy)
    full = crop_resize_batch([photo] * 4, processor, whole, draws, num_threads=1)
    assert decoded_widths == [400] * 4
    decoded_widths.clear()
    reduced = crop_resize_batch([photo] * 4, processor, whole, draws, num_threads=1, reduced_jpeg_decoding=True)
    assert decoded_widths == [100] * 4  # boxes of 300-400 pixels for 64: 1/4 scale (1/8 would not fit)
    # Another low-pass before the resize (libjpeg's scaled IDCT) and box edges on the reduced grid: a difference of
    # a level or two on average on this photo (the full decode differs from PIL's own crop-and-resize by 0.04).
    levels = (reduced - full).abs() * 127.5  # in 8-bit levels
    assert 0.5 < float(levels.mean()) < 3.0 and float(levels.quantile(0.99)) < 20.0


# ---------------------------------------------------------------------------------------------------------------------
# The Trainer and masked-patch routes


def test_seeded_trainer_transform_depends_on_seed_epoch_and_row_only(tmp_path):
    data = load_image_classification_data(DataArguments(dataset=str(_photo_folder(tmp_path / "photos", 3)),
                                                        validation_fraction=0.0, test_fraction=0.3))
    processor = ViTImageProcessor(size=24)
    transform = TrainerTransform(processor, inception(randaugment_num_ops=1), seed=5)
    rows = transform.prepare(data.train)
    together = rows[[2, 0]]["pixel_values"]
    assert torch.equal(together[0], rows[[2]]["pixel_values"][0])  # a row's view does not depend on its batch
    assert torch.equal(together[1], rows[[3, 0]]["pixel_values"][1])
    transform.on_epoch_begin(None, type("State", (), {"epoch": 1.0})(), None)
    assert transform.epoch == 1
    next_epoch = rows[[2, 0]]["pixel_values"]
    assert not torch.equal(next_epoch, together)
    transform.set_epoch(0)
    assert torch.equal(rows[[2, 0]]["pixel_values"], together)
    with pytest.raises(ValueError, match="prepare"):
        data.train.with_transform(transform)[[0]]


def test_masked_patch_collator_crops_the_original_image():
    from hf_vit.training.mpp.masking import MaskedPatchCollator, gather_positions, mpp_targets

    processor = ViTImageProcessor(size=32)
    augment = inception(crop_scale=(0.01, 0.01), crop_ratio=(1.0, 1.0))
    rows = ExampleBatch([{"image": _jpeg(_stripes()), "label": 0}] * 2, seed=11)
    batch = MaskedPatchCollator(processor, 8, augment=augment)(rows)
    generator = torch.Generator().manual_seed(derive_seed("masked-patch-plan", 11))
    expected = augmented_pixel_values([r["image"] for r in rows], processor, augment, generator)
    assert torch.equal(batch["pixel_values"], expected)  # the batch's crops, drawn from the plan's generator
    assert (batch["pixel_values"].std(dim=(1, 2, 3)) > 0.6).all()
    # Targets follow what the model sees: computed from the cropped stripes.
    targets = mpp_targets(expected * 0.5 + 0.5, 8)
    assert torch.equal(batch["labels"], gather_positions(targets, batch["corrupted_positions"]))
