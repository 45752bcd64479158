"""Classification metrics (ViT paper, section 4.1): counted batch by batch for the recipes and `hf-vit evaluate`
(memory independent of the number of examples, nothing quadratic in the classes unless asked for), and through
`evaluate` with the metric modules shipped in the package for `transformers.Trainer` and single calls.

`evaluate.load("accuracy")` fetches its script from the Hub and fails offline; hf_vit ships its metric modules in
`metric_modules/` and loads them by path, so evaluation needs no network.
"""

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F


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


# A dense K x K confusion matrix is kept up to this many classes (8 MB of int64 counts at 1,000); beyond it the matrix
# is left out: it would grow with the square of the classes (ImageNet-21k: 3.8 GB) and nobody reads it.
CONFUSION_MATRIX_MAX_CLASSES = 1000


class StreamingClassificationMetrics:
    """
    Top-1 (`accuracy`) and top-5 accuracy, mean cross-entropy and, up to `CONFUSION_MATRIX_MAX_CLASSES` classes on
    request, the confusion matrix, counted batch by batch: memory is independent of the number of examples. Ties are
    broken as argmax breaks them (the lower class index ranks first), like the shipped `top_k_accuracy` module.

    Several processes: compute `per_example(scores, labels)` on each process's batch, gather those (B,) vectors
    (`accelerator.gather_for_metrics`, which drops the padding of the last batch) and `update` every process with
    them; then every process holds the same totals.

    Example:

    ```python
    >>> metrics = StreamingClassificationMetrics(num_classes=10)
    >>> for logits, labels in batches:
    ...     metrics.update(**metrics.per_example(logits, labels))
    >>> metrics.compute()["accuracy"]
    ```
    """

    def __init__(self, num_classes: int, with_confusion_matrix: bool = False):
        self.num_classes = num_classes
        self.with_confusion_matrix = with_confusion_matrix and num_classes <= CONFUSION_MATRIX_MAX_CLASSES
        self.count, self.top1, self.top5, self.loss_sum = 0, 0, 0, 0.0
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long) if self.with_confusion_matrix else None

    @staticmethod
    @torch.no_grad()
    def per_example(scores: torch.Tensor, labels: torch.Tensor) -> dict:
        """(B, K) scores, (B,) labels -> the (B,) vectors the totals are made of: the true class's rank, the
        cross-entropy, the predicted class and the label."""
        scores, labels = scores.float(), labels.long()
        true = scores.gather(1, labels[:, None])  # (B, 1)
        rank = (scores > true).sum(1)  # (B,): classes ranked before the true one ...
        if bool(((scores == true).sum(1) > 1).any()):  # ... and tied classes of lower index (rare with float scores)
            lower = torch.arange(scores.shape[1], device=scores.device)[None, :] < labels[:, None]
            rank = rank + ((scores == true) & lower).sum(1)
        loss = F.cross_entropy(scores, labels, reduction="none")
        return {"rank": rank, "loss": loss, "prediction": scores.argmax(-1), "labels": labels}

    def update(self, rank, loss, prediction, labels) -> None:
        labels = labels.long().cpu()
        self.count += int(labels.numel())
        self.top1 += int((rank == 0).sum())
        self.top5 += int((rank < min(5, self.num_classes)).sum())
        self.loss_sum += float(loss.double().sum())
        if self.confusion is not None:
            cells = labels * self.num_classes + prediction.long().cpu()
            self.confusion.index_add_(0, cells, torch.ones_like(cells))  # O(B), not O(K^2), per batch

    def compute(self) -> dict:
        if self.count == 0:
            raise ValueError("classification metrics need at least one example.")
        metrics = {
            "accuracy": self.top1 / self.count,
            "top5_accuracy": self.top5 / self.count,
            "loss": self.loss_sum / self.count,
            "num_examples": self.count,
        }
        if self.confusion is not None:
            metrics["confusion_matrix"] = self.confusion.view(self.num_classes, self.num_classes).tolist()
        return metrics


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, with_confusion_matrix: bool = False,
                           chunk_size: int = 4096) -> dict:
    """
    Top-1 (`accuracy`) and top-5 accuracy and mean cross-entropy of (N, K) logits against (N,) labels, and the
    K x K confusion matrix (rows: true class) when asked for and K <= `CONFUSION_MATRIX_MAX_CLASSES`.
    """
    if logits.shape[0] == 0:
        raise ValueError("classification_metrics needs at least one example.")
    metrics = StreamingClassificationMetrics(logits.shape[-1], with_confusion_matrix)
    for start in range(0, logits.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        metrics.update(**metrics.per_example(logits[chunk], labels[chunk]))
    return metrics.compute()


def compute_accuracy(eval_prediction) -> dict:
    """`compute_metrics` for `transformers.Trainer`: top-1 (and top-5) accuracy of an `EvalPrediction`, offline."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    result = load_metric("top_k_accuracy").compute(predictions=np.asarray(logits), references=np.asarray(labels), k=[1, 5])
    return {"accuracy": result["top1_accuracy"], "top5_accuracy": result["top5_accuracy"]}


class StreamingAccuracy:
    """
    `compute_metrics` for `transformers.Trainer` with `TrainingArguments(batch_eval_metrics=True)`: the Trainer then
    hands over one batch at a time instead of every logit of the evaluation set, and this counts top-1 / top-5
    accuracy and the loss as it goes (`StreamingClassificationMetrics`).

    Example:

    ```python
    >>> args = TrainingArguments("out", batch_eval_metrics=True, remove_unused_columns=False)
    >>> trainer = Trainer(model=model, args=args, ..., compute_metrics=StreamingAccuracy())
    ```
    """

    def __init__(self):
        self.metrics = None

    def __call__(self, eval_prediction, compute_result: bool = True) -> dict:
        logits, labels = eval_prediction.predictions, eval_prediction.label_ids
        logits = torch.as_tensor(logits[0] if isinstance(logits, tuple) else logits)
        if self.metrics is None:
            self.metrics = StreamingClassificationMetrics(logits.shape[-1])
        self.metrics.update(**self.metrics.per_example(logits, torch.as_tensor(labels)))
        if not compute_result:
            return {}
        result, self.metrics = self.metrics.compute(), None
        return {"accuracy": result["accuracy"], "top5_accuracy": result["top5_accuracy"]}
