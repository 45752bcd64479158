"""Training (ViT paper, section 4 and appendix B): recipe arguments, the one Accelerate loop, tasks, optimisers and
schedules, EMA, resumable checkpoints, model building and the run skeleton every recipe shares; masked patch
prediction in `mpp/`. Data comes from `hf_vit.data`, metrics from `hf_vit.evaluation`, publishing from `hf_vit.hub`.
See docs/training.md."""

from .arguments import (
    FinetuneModelArguments,
    FinetuneTrainArguments,
    ModelArguments,
    TrainArguments,
    parse_recipe_args,
    save_resolved_args,
)
from .classification import ClassificationRecipe, run_image_classification
from .ema import ModelEMA
from .loop import TrainResult, make_accelerator, train
from .models import build_model, build_processor
from .run import Recipe, run_recipe
from .tasks import ClassificationTask, Task


__all__ = [
    "ClassificationRecipe",
    "ClassificationTask",
    "FinetuneModelArguments",
    "FinetuneTrainArguments",
    "ModelArguments",
    "ModelEMA",
    "Recipe",
    "Task",
    "TrainArguments",
    "TrainResult",
    "build_model",
    "build_processor",
    "make_accelerator",
    "parse_recipe_args",
    "run_image_classification",
    "run_recipe",
    "save_resolved_args",
    "train",
]
