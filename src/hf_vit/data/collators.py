"""Batches for training and evaluation: decoding, the image processor, augmentation and mixup/cutmix, in the
DataLoader's workers; the same for `transformers.Trainer` (`TrainerTransform`); and the in-memory decoded copy of a
training split (`cache_decoded_images`).

Training batches with a random resized crop are cut from the decoded images and resized once
(`augmented_pixel_values`, `hf_vit.data.decoding`); evaluation batches are the processor's (resize, optional centre
crop), exactly as at inference.
"""

import io
import math

import PIL.Image
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from transformers import TrainerCallback

from ..image_processing_hf_vit import pil_to_array
from .augmentation import mixup_cutmix
from .decoding import crop_resize_batch
from .loader import derive_seed


def move_to_device(batch: dict, device) -> dict:
    """A collated batch with its tensors on `device` (other entries as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def as_image(value):
    """A decoded image, or an undecoded {"bytes", "path"} value decoded now."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        image = PIL.Image.open(source)
        image.load()
        return image
    return value


class DecodedImages(torch.utils.data.Dataset):
    """
    A map-style image data set decoded once into memory: each image as the array the image processor makes of it
    (uint8, or float32 for 16-bit / float images), with its label. The training loader then reads arrays instead of
    decoding every image again in every epoch (worth it for small images that fit in memory, such as Fashion-MNIST's;
    bench/bench_data.py measures it). The processor, augmentation and batches are unchanged.
    """

    def __init__(self, dataset, image_processor, chunk_size: int = 1000):
        if not hasattr(dataset, "__len__"):
            raise ValueError("DecodedImages needs a map-style data set (with a length); got a streamed one.")
        convert_rgb = image_processor.do_convert_rgb
        self.images, self.labels = [], []
        for start in range(0, len(dataset), chunk_size):
            rows = dataset[start : start + chunk_size]
            for offset, value in enumerate(rows["image"]):
                image = as_image(value)
                self.images.append(pil_to_array(image, start + offset, convert_rgb)
                                   if isinstance(image, PIL.Image.Image) else image)
            self.labels.extend(rows["label"])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "label": self.labels[index]}

    def __getitems__(self, indices):
        return [self[index] for index in indices]

    @property
    def nbytes(self) -> int:
        return sum(getattr(image, "nbytes", 0) for image in self.images)


def training_rows(data, data_args, image_processor):
    """The training split of an `ImageClassificationData` as the loader reads it: decoded once into memory with
    `cache_decoded_images`; else with its images left undecoded ({"bytes", "path"}), so the collator decodes each
    one once, in the worker, knowing its crop (a JPEG can then be decoded at a reduced scale)."""
    if data_args.cache_decoded_images:
        return DecodedImages(data.train, image_processor)
    return undecoded_images(data.train)


def undecoded_images(dataset):
    """A map-style data set whose `image` column `datasets` decodes, with that column left undecoded instead."""
    feature = (getattr(dataset, "features", None) or {}).get("image")
    if isinstance(dataset, Dataset) and isinstance(feature, ImageFeature) and feature.decode:
        return dataset.cast_column("image", ImageFeature(decode=False))
    return dataset


def augmented_pixel_values(images, image_processor, augmentation=None, generator=None, num_threads=None,
                           reduced_jpeg_decoding: bool | None = None) -> torch.Tensor:
    """
    A training batch's `pixel_values` (B, C, H, W): with an augmentation that crops (`crops_decoded_images`, the
    random resized crop), each crop cut from the decoded image and resized once (`hf_vit.data.decoding`), then the
    augmentation's stage on the model-size batch; with any other augmentation, the processor's batch augmented;
    without one, the processor's batch. `images` may be undecoded {"bytes", "path"} values.
    """
    if augmentation is not None and getattr(augmentation, "crops_decoded_images", False):
        draws = augmentation.draw_crops(len(images), generator)
        pixel_values = crop_resize_batch(images, image_processor, augmentation, draws, num_threads,
                                         reduced_jpeg_decoding)
        return augmentation.augment_resized(pixel_values, generator=generator)
    pixel_values = image_processor([as_image(image) for image in images], return_tensors="pt")["pixel_values"]
    return augmentation(pixel_values, generator=generator) if augmentation is not None else pixel_values


class ImageClassificationCollator:
    """
    list of {"image", "label"} -> {"pixel_values": (B, 3, H, W), "labels": (B,) or soft (B, K) with mixup/cutmix}.

    Runs in the DataLoader workers: the training augmentation (a random resized crop on the decoded images, the rest on
    the model-size batch: `augmented_pixel_values`) or, without one, the model's `ViTImageProcessor`; then
    mixup/cutmix. Randomness comes from the batch's own seed when the sampler gives one (resumable), else from the
    worker's global generator.

    Args:
        num_threads: images of a batch decoded at once (None: the CPUs per worker process).
        reduced_jpeg_decoding: see `hf_vit.data.decoding.crop_resize_batch` (None: the augmentation's setting).
    """

    def __init__(self, image_processor, augmentation=None, num_classes=None, mixup_alpha=0.0, cutmix_alpha=0.0,
                 num_threads=None, reduced_jpeg_decoding: bool | None = None):
        if (mixup_alpha > 0 or cutmix_alpha > 0) and not num_classes:
            raise ValueError("mixup / cutmix need `num_classes`.")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"`mixup_alpha` and `cutmix_alpha` must be >= 0 (0 = off), got {mixup_alpha}, {cutmix_alpha}.")
        self.image_processor = image_processor
        self.augment = augmentation
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.num_threads, self.reduced_jpeg_decoding = num_threads, reduced_jpeg_decoding

    def __call__(self, examples):
        seed = getattr(examples, "seed", None)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        pixel_values = augmented_pixel_values([e["image"] for e in examples], self.image_processor, self.augment,
                                              generator, self.num_threads, self.reduced_jpeg_decoding)
        labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            pixel_values, labels = mixup_cutmix(
                pixel_values, labels, self.num_classes, self.mixup_alpha, self.cutmix_alpha, generator=generator
            )
        return {"pixel_values": pixel_values, "labels": labels}


class TrainerTransform(TrainerCallback):
    """
    The same preprocessing and augmentation for `transformers.Trainer`: a `Dataset.with_transform` function
    (batch of columns -> {"pixel_values", "labels"}). Use it with `remove_unused_columns=False`.

    Unseeded (`seed=None`), augmentations draw from the global random state of whichever process runs the transform.
    Seeded, each row's augmentation depends only on (seed, epoch, row index): the same whatever the batch size, the
    number of DataLoader workers or processes, and the same again when the Trainer resumes. That needs the row index
    (`prepare(dataset)` adds it as a column) and the epoch (pass the transform as a Trainer callback: it follows
    `on_epoch_begin`; with `dataloader_persistent_workers=True` the workers would keep the first epoch's value).

    Example:

    ```python
    >>> data = load_image_classification_data(DataArguments(dataset="digits"))
    >>> transform = TrainerTransform(processor, BatchAugmentation("translate", ...), seed=0)
    >>> trainer = Trainer(..., train_dataset=transform.prepare(data.train), callbacks=[transform],
    ...                   eval_dataset=data.test.with_transform(TrainerTransform(processor)))
    ```
    """

    ROW_COLUMN = "hf_vit_row_index"

    def __init__(self, image_processor, augmentation=None, seed: int | None = None, num_threads=None):
        self.image_processor = image_processor
        self.augment = augmentation
        self.seed = seed
        self.num_threads = num_threads
        self.epoch = 0

    def prepare(self, dataset):
        """`dataset` transformed by this transform (seeded: with the row-index column the seeds are derived from)."""
        if self.seed is not None:
            if self.ROW_COLUMN in dataset.column_names:
                dataset = dataset.remove_columns(self.ROW_COLUMN)
            dataset = dataset.add_column(self.ROW_COLUMN, list(range(len(dataset))))
        return dataset.with_transform(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the (fractional) number of epochs done: the index of the epoch that begins (also on resume).
        self.set_epoch(math.floor(state.epoch + 1e-6))

    def __call__(self, batch: dict) -> dict:
        images, labels = batch["image"], torch.tensor(batch["label"], dtype=torch.long)
        if self.augment is None or self.seed is None:
            pixel_values = augmented_pixel_values(images, self.image_processor, self.augment,
                                                  num_threads=self.num_threads)
            return {"pixel_values": pixel_values, "labels": labels}
        if self.ROW_COLUMN not in batch:
            raise ValueError(f"A seeded TrainerTransform derives each row's augmentation from its index: transform the "
                             f"data set with `transform.prepare(dataset)` (it adds the {self.ROW_COLUMN!r} column).")
        generators = [torch.Generator().manual_seed(derive_seed("trainer-transform", self.seed, self.epoch, int(row)))
                      for row in batch[self.ROW_COLUMN]]
        if getattr(self.augment, "crops_decoded_images", False):
            draws = torch.cat([self.augment.draw_crops(1, generator) for generator in generators])
            pixel_values = crop_resize_batch(images, self.image_processor, self.augment, draws, self.num_threads)
            rows = [self.augment.augment_resized(pixel_values[i : i + 1], generator=generator)
                    for i, generator in enumerate(generators)]
        else:
            pixel_values = augmented_pixel_values(images, self.image_processor, num_threads=self.num_threads)
            rows = [self.augment(pixel_values[i : i + 1], generator=g) for i, g in enumerate(generators)]
        return {"pixel_values": torch.cat(rows), "labels": labels}
