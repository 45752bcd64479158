"""Everything the recipes share (ViT paper, section 4 and appendix B): data, augmentation, tasks, optimisers and
schedules, EMA, checkpoints, and the Accelerate loop. See docs/training.md."""

from .arguments import (
    DataArguments,
    FinetuneModelArguments,
    FinetuneTrainArguments,
    ModelArguments,
    TrainArguments,
    parse_recipe_args,
    save_resolved_args,
)
from .classification import run_image_classification
from .data import (
    ImageClassificationCollator,
    ImageClassificationData,
    TrainerTransform,
    find_bad_images,
    load_image_classification_data,
)
from .ema import ModelEMA
from .loop import TrainResult, make_accelerator, train
from .run import build_model, build_processor, save_run
from .tasks import ClassificationTask, Task
from .transforms import BatchAugmentation, resolve_augmentation


__all__ = [
    "BatchAugmentation",
    "ClassificationTask",
    "DataArguments",
    "FinetuneModelArguments",
    "FinetuneTrainArguments",
    "ImageClassificationCollator",
    "ImageClassificationData",
    "ModelArguments",
    "ModelEMA",
    "Task",
    "TrainArguments",
    "TrainResult",
    "TrainerTransform",
    "build_model",
    "build_processor",
    "find_bad_images",
    "load_image_classification_data",
    "make_accelerator",
    "parse_recipe_args",
    "resolve_augmentation",
    "run_image_classification",
    "save_resolved_args",
    "save_run",
    "train",
]
