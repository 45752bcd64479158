"""Image data for the recipes and the evaluation (ViT paper, section 4.1): sources (scikit-learn's digits, IDX files,
image folders, Hub data sets, streaming), fixed splits, bad-image screening, augmentation, collators and the seeded,
resumable loader. Nothing here knows about training; `hf_vit.training` and `hf_vit.evaluation` build on it."""

from .arguments import DataArguments
from .augmentation import AUGMENTATIONS, BatchAugmentation, mixup_cutmix, resolve_augmentation, sample_crop_box
from .collators import (
    DecodedImages,
    ImageClassificationCollator,
    TrainerTransform,
    as_image,
    augmented_pixel_values,
    move_to_device,
    training_rows,
    undecoded_images,
)
from .decoding import crop_resize_batch
from .loader import build_eval_loader, build_train_loader, derive_seed
from .screening import BadImageError, check_image, find_bad_images
from .sources import ImageClassificationData, load_digits_data, load_image_classification_data, resolve_source_kind


__all__ = [
    "AUGMENTATIONS",
    "BadImageError",
    "BatchAugmentation",
    "DataArguments",
    "DecodedImages",
    "ImageClassificationCollator",
    "ImageClassificationData",
    "TrainerTransform",
    "as_image",
    "augmented_pixel_values",
    "build_eval_loader",
    "build_train_loader",
    "check_image",
    "crop_resize_batch",
    "derive_seed",
    "find_bad_images",
    "load_digits_data",
    "load_image_classification_data",
    "mixup_cutmix",
    "move_to_device",
    "resolve_augmentation",
    "resolve_source_kind",
    "sample_crop_box",
    "training_rows",
    "undecoded_images",
]
