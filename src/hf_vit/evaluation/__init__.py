"""Evaluation (ViT paper, section 4.1): top-1 / top-5 accuracy and the confusion matrix through `evaluate` with
metric modules shipped in the package (offline), and the paper's few-shot linear evaluation."""

from .fewshot import (
    FewShotEvaluator,
    FewShotResult,
    extract_representations,
    fewshot_linear_accuracy,
    ridge_fit,
    ridge_predict,
)
from .metrics import classification_metrics, compute_accuracy, confusion_matrix, load_metric, top_k_accuracy


__all__ = [
    "FewShotEvaluator",
    "FewShotResult",
    "classification_metrics",
    "compute_accuracy",
    "confusion_matrix",
    "extract_representations",
    "fewshot_linear_accuracy",
    "load_metric",
    "ridge_fit",
    "ridge_predict",
    "top_k_accuracy",
]
