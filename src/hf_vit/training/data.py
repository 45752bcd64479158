"""Image-classification data for the recipes: one entry point, fixed splits, and the batch collator."""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .transforms import augmentation_for


@dataclass
class ImageClassificationData:
    """Train/validation/test splits (`datasets.Dataset`s with an `image` and a `label` column) and the label names."""

    train: "object"
    validation: "object"
    test: "object"
    label_names: list
    name: str

    @property
    def id2label(self) -> dict:
        return dict(enumerate(self.label_names))


def _split_indices(labels, test_fraction, validation_fraction, seed):
    """Stratified, seeded train/validation/test index split (the same on every machine)."""
    from sklearn.model_selection import train_test_split

    for name, value in (("test_fraction", test_fraction), ("validation_fraction", validation_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"`{name}` must be in (0, 1), got {value}.")
    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=labels)
    train, validation = train_test_split(
        train, test_size=validation_fraction, random_state=seed, stratify=np.asarray(labels)[train]
    )
    return train, validation, test


def load_digits_data(test_fraction=0.2, validation_fraction=0.1, split_seed=0) -> ImageClassificationData:
    """scikit-learn's digits: 1,797 real 8x8 grayscale scans of handwritten digits, shipped inside scikit-learn."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are ink intensities 0..16; as 8-bit grayscale images (0 = paper, 255 = full ink).
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = [Image.fromarray(p, mode="L") for p in pixels]
    names = [str(i) for i in range(10)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    full = Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    train, validation, test = _split_indices(digits.target, test_fraction, validation_fraction, split_seed)
    return ImageClassificationData(
        train=full.select(train), validation=full.select(validation), test=full.select(test), label_names=names, name="digits"
    )


def load_image_classification_data(data_args) -> ImageClassificationData:
    """The recipes' one entry point for data (`DataArguments.dataset`)."""
    if data_args.dataset == "digits":
        return load_digits_data(data_args.test_fraction, data_args.validation_fraction, data_args.split_seed)
    raise ValueError(f"`dataset` {data_args.dataset!r} is not supported; allowed: 'digits'.")


class ImageClassificationCollator:
    """list of {"image": PIL, "label": int} -> {"pixel_values": (B, 3, H, W), "labels": (B,)}, augmented for training."""

    def __init__(self, image_processor, augmentation="none", generator_seed=None):
        self.image_processor = image_processor
        self.augment = augmentation_for(augmentation)
        self.generator = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None

    def __call__(self, examples):
        pixel_values = self.image_processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
        if self.augment is not None:
            pixel_values = self.augment(pixel_values, generator=self.generator)
        labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return {"pixel_values": pixel_values, "labels": labels}
