"""Evaluation: classification metrics (and, with later issues, few-shot linear evaluation)."""

from .metrics import classification_metrics, compute_accuracy, top_k_accuracy


__all__ = ["classification_metrics", "compute_accuracy", "top_k_accuracy"]
