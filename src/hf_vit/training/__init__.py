"""Everything the recipes share: data, augmentation, tasks, optimisers and schedules, and the Accelerate loop."""

from .arguments import DataArguments, ModelArguments, TrainArguments, parse_recipe_args, save_resolved_args
from .data import ImageClassificationCollator, ImageClassificationData, load_image_classification_data
from .loop import TrainResult, train
from .tasks import ClassificationTask


__all__ = [
    "ClassificationTask",
    "DataArguments",
    "ImageClassificationCollator",
    "ImageClassificationData",
    "ModelArguments",
    "TrainArguments",
    "TrainResult",
    "load_image_classification_data",
    "parse_recipe_args",
    "save_resolved_args",
    "train",
]
