"""Classification metrics on tensors (no network: `evaluate.load` cannot fetch metric scripts offline)."""

import numpy as np
import torch


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Share of rows whose label is among the k largest logits. (B, K), (B,) -> float in [0, 1]."""
    if logits.shape[0] == 0:
        raise ValueError("top_k_accuracy needs at least one example.")
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices  # (B, k)
    return (top == labels[:, None]).any(dim=-1).float().mean().item()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 accuracy and mean cross-entropy of a set of predictions."""
    logits, labels = logits.float(), labels.long()
    return {
        "accuracy": top_k_accuracy(logits, labels, 1),
        "top5_accuracy": top_k_accuracy(logits, labels, 5),
        "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
        "num_examples": int(labels.shape[0]),
    }


def compute_accuracy(eval_prediction) -> dict:
    """`compute_metrics` for `transformers.Trainer`: top-1 accuracy of an `EvalPrediction`."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}
