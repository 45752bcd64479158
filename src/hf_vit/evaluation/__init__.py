"""Evaluation (ViT paper, section 4.1): top-1 / top-5 accuracy, loss and the confusion matrix counted batch by batch
(and through `evaluate` with metric modules shipped in the package, offline), the paper's few-shot linear evaluation,
and flip test-time augmentation as an option."""

from .fewshot import (
    FewShotEvaluator,
    FewShotResult,
    extract_representations,
    fewshot_linear_accuracy,
    ridge_fit,
    ridge_predict,
)
from .metrics import (
    CONFUSION_MATRIX_MAX_CLASSES,
    StreamingAccuracy,
    StreamingClassificationMetrics,
    classification_metrics,
    compute_accuracy,
    confusion_matrix,
    load_metric,
    top_k_accuracy,
)
from .tta import TEST_TIME_AUGMENTATIONS, classify


__all__ = [
    "CONFUSION_MATRIX_MAX_CLASSES",
    "StreamingAccuracy",
    "StreamingClassificationMetrics",
    "TEST_TIME_AUGMENTATIONS",
    "FewShotEvaluator",
    "FewShotResult",
    "classification_metrics",
    "classify",
    "compute_accuracy",
    "confusion_matrix",
    "extract_representations",
    "fewshot_linear_accuracy",
    "load_metric",
    "ridge_fit",
    "ridge_predict",
    "top_k_accuracy",
]
