"""The data entry point: every source (digits, IDX, imagefolder, streaming, Hub ids), splits, bad images."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vit import ViTImageProcessor
from hf_vit.data import (
    BadImageError,
    DataArguments,
    DecodedImages,
    ImageClassificationCollator,
    find_bad_images,
    load_image_classification_data,
    resolve_source_kind,
)
from hf_vit.data.idx import read_idx
from hf_vit.training import TrainArguments
from hf_vit.training.loop import train
from hf_vit.training.tasks import ClassificationTask


def _write_idx(path, array, compress):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx_folder(folder, num_train=60, num_test=20, size=12, compress=True, seed=0):
    """MNIST-layout IDX files, 10 classes, class k bright at row k (so a label can be read off the pixels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = rng.integers(0, 40, size=(count, size, size), dtype=np.uint8)
        images[np.arange(count), labels] = 255
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return folder


def make_image_folder(root, per_class=8, size=16, corrupt=(), split=None):
    """Class folders of small PNG/JPEG photos-to-be; `corrupt` names files that get broken bytes."""
    rng = np.random.default_rng(0)
    base = root / split if split else root
    paths = []
    for label in ("cat", "dog"):
        (base / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            path = base / label / f"{label}{i}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(pixels).save(path)
            paths.append(path)
    for name in corrupt:
        path = next(p for p in paths if p.name == name)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if name.endswith(".jpg") else b"not an image at all")
    return root


# ---------------------------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_loads_with_its_test_split(tmp_path, compress):
    folder = make_idx_folder(tmp_path / "fashion-mnist", compress=compress)
    data = load_image_classification_data(DataArguments(dataset=str(folder), validation_fraction=0.1))
    assert data.kind == "idx" and len(data.test) == 20 and len(data.train) + len(data.validation) == 60
    assert data.label_names[:3] == ["T-shirt/top", "Trouser", "Pullover"]  # the Debian folder name says Fashion-MNIST
    example = data.train[0]
    pixels = np.asarray(example["image"])
    assert pixels.shape == (12, 12) and pixels[example["label"]].min() == 255  # the pixels survive unchanged


def test_idx_errors_name_the_file(tmp_path):
    folder = make_idx_folder(tmp_path / "digits-idx", compress=False)
    names = list("abcdefghij")
    data = load_image_classification_data(DataArguments(dataset=str(folder), label_names=names))
    assert data.label_names == names
    assert load_image_classification_data(DataArguments(dataset=str(folder))).label_names[:2] == ["0", "1"]
    with pytest.raises(ValueError, match="label_names"):
        load_image_classification_data(DataArguments(dataset=str(folder), label_names=["a", "b"]))
    broken = folder / "t10k-images-idx3-ubyte"
    broken.write_bytes(broken.read_bytes()[:-7])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        load_image_classification_data(DataArguments(dataset=str(folder)))
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match="'test' IDX split is incomplete"):
        load_image_classification_data(DataArguments(dataset=str(folder)))
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(bad))


# ---------------------------------------------------------------------------------------------------------------------
# Sources and splits


def test_source_kinds(tmp_path):
    assert resolve_source_kind("digits") == "digits"
    assert resolve_source_kind("uoft-cs/cifar10") == "hub" and resolve_source_kind("mnist") == "hub"
    assert resolve_source_kind(str(make_image_folder(tmp_path / "photos"))) == "imagefolder"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source_kind("./no/such/folder")
    with pytest.raises(ValueError, match="dataset_format"):
        resolve_source_kind("digits", "tfrecord")


def test_digits_split_is_fixed_and_stratified():
    first = load_image_classification_data(DataArguments(dataset="digits"))
    second = load_image_classification_data(DataArguments(dataset="digits"))
    assert len(first.test) == 360 and len(first.validation) == 144 and len(first.train) == 1293
    assert first.test["label"] == second.test["label"]
    assert np.array_equal(np.asarray(first.test[5]["image"]), np.asarray(second.test[5]["image"]))
    counts = np.bincount(first.test["label"])
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class
    other = load_image_classification_data(DataArguments(dataset="digits", split_seed=1, validation_fraction=0.0))
    assert other.validation is None and other.test["label"] != first.test["label"]


def test_imagefolder_with_train_and_test_folders(tmp_path):
    root = make_image_folder(tmp_path / "photos", split="train")
    make_image_folder(root, per_class=3, split="test")
    data = load_image_classification_data(DataArguments(dataset=str(root), validation_fraction=0.25))
    assert data.kind == "imagefolder" and data.label_names == ["cat", "dog"]
    assert len(data.test) == 6 and len(data.train) == 12 and len(data.validation) == 4


# ---------------------------------------------------------------------------------------------------------------------
# Bad images


def test_bad_images_are_skipped_with_a_count_or_fail_with_the_list(tmp_path, capsys):
    root = make_image_folder(tmp_path / "photos", corrupt=("cat3.png", "dog2.jpg"))
    data = load_image_classification_data(DataArguments(dataset=str(root), validation_fraction=0.0, test_fraction=0.25))
    printed = capsys.readouterr().out
    assert "skipping 2 unreadable image(s)" in printed and "cat3.png" in printed
    assert len(data.train) + len(data.test) == 14 and len(data.skipped_images) == 2
    assert {where.rsplit("/", 1)[-1] for _, _, where, _ in data.skipped_images} == {"cat3.png", "dog2.jpg"}
    assert not find_bad_images(data.train) and not find_bad_images(data.test)
    with pytest.raises(BadImageError) as error:
        load_image_classification_data(DataArguments(dataset=str(root), on_bad_image="fail"))
    assert "2 unreadable image(s)" in str(error.value)
    assert "cat3.png" in str(error.value) and "dog2.jpg" in str(error.value)
    with pytest.raises(ValueError, match="on_bad_image"):
        load_image_classification_data(DataArguments(dataset=str(root), on_bad_image="ignore"))


# ---------------------------------------------------------------------------------------------------------------------
# Streaming (a local imagefolder with streaming=True)


def test_streaming_imagefolder_trains_and_skips_bad_rows(tmp_path):
    root = make_image_folder(tmp_path / "photos", per_class=12, corrupt=("dog5.png",))
    data_args = DataArguments(dataset=str(root), streaming=True, streaming_holdout_size=4, validation_fraction=0.0)
    data = load_image_classification_data(data_args)
    assert data.streaming and data.label_names == ["cat", "dog"]
    rows = list(data.train)
    assert len(rows) == 24 - 4 - 1  # the held-out test rows and the corrupt file are not trained on
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    batch = ImageClassificationCollator(processor)(rows)  # streamed rows arrive undecoded; the collator decodes
    assert batch["pixel_values"].shape == (19, 3, 16, 16)
    from tests.test_training import tiny_model

    task = ClassificationTask(tiny_model(num_labels=2), processor)
    args = TrainArguments(output_dir=str(tmp_path / "run"), report_to="none", batch_size=4, max_steps=7,
                          eval_every_steps=-1, warmup_steps=1, save_every_steps=3, save_total_limit=0)
    result = train(task, data.train, args, eval_dataset=data.test, shuffle_buffer_size=8)
    assert result.global_step == 7  # 19 rows = 4 full batches per pass: the stream was read into a second epoch
    assert result.last_eval["num_examples"] == 4
    # The stream's position is part of the checkpoint: resuming from step 6 continues the second pass.
    checkpoint = str(tmp_path / "run" / "checkpoints" / "step-00000006")
    args.resume = checkpoint
    resumed = train(ClassificationTask(tiny_model(num_labels=2), processor), data.train, args,
                    eval_dataset=data.test, shuffle_buffer_size=8)
    assert resumed.resumed_from == checkpoint and resumed.global_step == 7
    with pytest.raises(ValueError, match="max_steps"):
        train(ClassificationTask(tiny_model(num_labels=2), processor), data.train,
              TrainArguments(output_dir=str(tmp_path / "run2"), report_to="none", batch_size=4))

    strict = load_image_classification_data(DataArguments(dataset=str(root), streaming=True, on_bad_image="fail"))
    with pytest.raises(BadImageError, match="dog5.png"):
        list(strict.train)


def test_collator_batches_any_source(tmp_path):
    folder = make_idx_folder(tmp_path / "idx")
    data = load_image_classification_data(DataArguments(dataset=str(folder)))
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    batch = ImageClassificationCollator(processor)([data.test[i] for i in range(5)])
    assert batch["pixel_values"].shape == (5, 3, 16, 16) and batch["labels"].dtype == torch.long
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0


def test_decoded_images_give_the_batches_of_the_undecoded_data_set(tmp_path):
    photos = make_image_folder(tmp_path / "photos", per_class=6, size=12)
    turned = Image.fromarray(np.arange(12 * 8 * 3, dtype=np.uint8).reshape(12, 8, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation "rotate 90": the processor shows it upright, the cache must too
    turned.save(photos / "cat" / "turned.jpg", exif=exif)
    turned.convert("P").save(photos / "dog" / "palette.png")  # decoded to RGB by the processor, not to indices
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    collate = ImageClassificationCollator(processor)
    for source in (make_idx_folder(tmp_path / "idx", size=12), photos):
        train = load_image_classification_data(DataArguments(dataset=str(source), validation_fraction=0)).train
        cached = DecodedImages(train, processor, chunk_size=7)  # chunks that do not divide the set
        assert len(cached) == len(train) and all(isinstance(image, np.ndarray) for image in cached.images)
        channels = 1 if source.name == "idx" else 3
        assert cached.nbytes == sum(image.size[0] * image.size[1] for image in train["image"]) * channels
        rows = list(range(len(train)))[::-1]
        expected, got = collate(train.__getitems__(rows)), collate(cached.__getitems__(rows))
        assert torch.equal(got["labels"], expected["labels"])
        assert torch.equal(got["pixel_values"], expected["pixel_values"])


def test_cached_images_are_refused_for_a_stream(tmp_path):
    root = make_image_folder(tmp_path / "photos", per_class=4)
    with pytest.raises(ValueError, match="`cache_decoded_images`.*streamed"):
        load_image_classification_data(DataArguments(dataset=str(root), streaming=True, cache_decoded_images=True))


# ---------------------------------------------------------------------------------------------------------------------
# Loader options


def test_pin_memory_reaches_both_loaders_when_there_is_an_accelerator(monkeypatch):
    from hf_vit.data import build_eval_loader, build_train_loader
    from hf_vit.data import loader as loader_module
    from hf_vit.training.arguments import BOOKKEEPING_FIELDS

    rows = [{"image": np.zeros((4, 4), dtype=np.uint8), "label": 0}] * 8
    collate = ImageClassificationCollator(ViTImageProcessor(size=4))
    for available in (False, True):  # on a CPU-only machine there is nothing to pin for: the option is dropped
        monkeypatch.setattr(loader_module, "can_pin_memory", lambda: available)
        train_loader, _ = build_train_loader(rows, collate, 4, 0, 1, 0, 1, pin_memory=True)
        eval_loader = build_eval_loader(rows, collate, 4, pin_memory=True)
        assert train_loader.pin_memory is available and eval_loader.pin_memory is available
        assert build_eval_loader(rows, collate, 4).pin_memory is False
    assert DataArguments().pin_memory is False and "pin_memory" in BOOKKEEPING_FIELDS  # a resumed run may change it
