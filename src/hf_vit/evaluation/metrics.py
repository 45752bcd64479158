"""Classification metrics through `evaluate`, with the metric modules shipped in the package (ViT paper, section 4.1).

`evaluate.load("accuracy")` fetches its script from the Hub and fails offline; hf_vit ships its metric modules in
`metric_modules/` and loads them by path, so evaluation needs no network.
"""

import functools
import os

import numpy as np
import torch


METRIC_MODULES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metric_modules")
SHIPPED_METRICS = ("top_k_accuracy", "confusion_matrix")


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """One of hf_vit's shipped `evaluate` metric modules, loaded offline from its folder (cached per process)."""
    import evaluate

    if name not in SHIPPED_METRICS:
        raise ValueError(f"Unknown shipped metric {name!r}; allowed are {list(SHIPPED_METRICS)}.")
    return evaluate.load(os.path.join(METRIC_MODULES_DIR, name), keep_in_memory=True)


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Share of rows whose label is among the k largest logits. (B, K), (B,) -> float in [0, 1]."""
    if logits.shape[0] == 0:
        raise ValueError("top_k_accuracy needs at least one example.")
    result = load_metric("top_k_accuracy").compute(
        predictions=logits.float().cpu().numpy(), references=labels.long().cpu().numpy(), k=[k]
    )
    return result[f"top{k}_accuracy"]


def confusion_matrix(predictions, labels, num_labels: int | None = None) -> list[list[int]]:
    """K x K counts, rows = true class, columns = predicted class (class indices in, via `evaluate`)."""
    predictions = np.asarray(torch.as_tensor(predictions).cpu(), dtype=np.int64)
    labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    return load_metric("confusion_matrix").compute(predictions=predictions, references=labels, num_labels=num_labels)[
        "confusion_matrix"
    ]


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, with_confusion_matrix: bool = False) -> dict:
    """Top-1 (`accuracy`) and top-5 accuracy and mean cross-entropy of (N, K) logits against (N,) labels."""
    logits, labels = logits.float().cpu(), labels.long().cpu()
    if logits.shape[0] == 0:
        raise ValueError("classification_metrics needs at least one example.")
    accuracies = load_metric("top_k_accuracy").compute(predictions=logits.numpy(), references=labels.numpy(), k=[1, 5])
    metrics = {
        "accuracy": accuracies["top1_accuracy"],
        "top5_accuracy": accuracies["top5_accuracy"],
        "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
        "num_examples": int(labels.shape[0]),
    }
    if with_confusion_matrix:
        metrics["confusion_matrix"] = confusion_matrix(logits.argmax(-1), labels, num_labels=logits.shape[-1])
    return metrics


def compute_accuracy(eval_prediction) -> dict:
    """`compute_metrics` for `transformers.Trainer`: top-1 (and top-5) accuracy of an `EvalPrediction`, offline."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    result = load_metric("top_k_accuracy").compute(predictions=np.asarray(logits), references=np.asarray(labels), k=[1, 5])
    return {"accuracy": result["top1_accuracy"], "top5_accuracy": result["top5_accuracy"]}
