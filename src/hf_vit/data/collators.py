"""Batches for training and evaluation: decoding, the image processor, augmentation and mixup/cutmix, in the
DataLoader's workers; the same for `transformers.Trainer` (`TrainerTransform`); and the in-memory decoded copy of a
training split (`cache_decoded_images`)."""

import io

import PIL.Image
import torch

from ..image_processing_hf_vit import pil_to_array
from .augmentation import mixup_cutmix


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
    `cache_decoded_images`, else as is."""
    return DecodedImages(data.train, image_processor) if data_args.cache_decoded_images else data.train


class ImageClassificationCollator:
    """
    list of {"image", "label"} -> {"pixel_values": (B, 3, H, W), "labels": (B,) or soft (B, K) with mixup/cutmix}.

    Runs in the DataLoader workers: preprocessing (the model's `ViTImageProcessor`, batched), then the training
    augmentation and mixup/cutmix, with randomness from the batch's own seed when the sampler gives one (resumable),
    else from the worker's global generator.
    """

    def __init__(self, image_processor, augmentation=None, num_classes=None, mixup_alpha=0.0, cutmix_alpha=0.0):
        if (mixup_alpha > 0 or cutmix_alpha > 0) and not num_classes:
            raise ValueError("mixup / cutmix need `num_classes`.")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"`mixup_alpha` and `cutmix_alpha` must be >= 0 (0 = off), got {mixup_alpha}, {cutmix_alpha}.")
        self.image_processor = image_processor
        self.augment = augmentation
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha

    def __call__(self, examples):
        seed = getattr(examples, "seed", None)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        images = [as_image(e["image"]) for e in examples]
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        if self.augment is not None:
            pixel_values = self.augment(pixel_values, generator=generator)
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            pixel_values, labels = mixup_cutmix(
                pixel_values, labels, self.num_classes, self.mixup_alpha, self.cutmix_alpha, generator=generator
            )
        return {"pixel_values": pixel_values, "labels": labels}


class TrainerTransform:
    """
    The same preprocessing and augmentation for `transformers.Trainer`: a `Dataset.with_transform` function
    (batch of columns -> {"pixel_values", "labels"}). Use it with `remove_unused_columns=False`.

    Example:

    ```python
    >>> data = load_image_classification_data(DataArguments(dataset="digits"))
    >>> train = data.train.with_transform(TrainerTransform(processor, BatchAugmentation("translate", ...)))
    >>> test = data.test.with_transform(TrainerTransform(processor))
    ```
    """

    def __init__(self, image_processor, augmentation=None):
        self.image_processor = image_processor
        self.augment = augmentation

    def __call__(self, batch: dict) -> dict:
        images = [as_image(image) for image in batch["image"]]
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        if self.augment is not None:
            pixel_values = self.augment(pixel_values)  # the worker's own generator
        return {"pixel_values": pixel_values, "labels": torch.tensor(batch["label"], dtype=torch.long)}
