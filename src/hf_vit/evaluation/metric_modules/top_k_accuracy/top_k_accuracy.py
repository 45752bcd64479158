"""Top-k accuracy, an `evaluate` metric module shipped inside hf_vit (ViT paper, section 4.1: top-1 accuracy).

`evaluate.load("accuracy")` needs the Hub; this file loads offline with `evaluate.load(<path of this folder>)`
(see `hf_vit.evaluation.metrics.load_metric`). It imports only evaluate, datasets and numpy, since `evaluate` copies
it into its module cache before importing it.
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Top-k accuracy: the share of examples whose reference label is among the k highest-scoring classes of the
prediction. `predictions` are score vectors (logits or probabilities, one float per class), `references` class
indices. Top-1 is the usual accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one score vector per example, all of the same length K.
    references (`list` of `int`): the true class of each example, in [0, K).
    k (`int` or `list` of `int`, *optional*, defaults to `[1, 5]`): which top-k accuracies to report; k larger
        than K counts as K.
Returns:
    `top{k}_accuracy` (`float` in [0, 1]) for every requested k.
Examples:
    >>> metric = evaluate.load("path/to/top_k_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], k=[1, 2])
    {'top1_accuracy': 0.5, 'top2_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        scores = np.asarray(predictions, dtype=np.float32)
        labels = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or len(scores) != len(labels):
            raise ValueError(
                f"`predictions` must be one score vector per reference; got shape {scores.shape} for "
                f"{len(labels)} references."
            )
        if len(labels) == 0:
            raise ValueError("top-k accuracy needs at least one example.")
        num_classes = scores.shape[1]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"`references` must be class indices in [0, {num_classes}); got {labels.min()}..{labels.max()}.")
        ks = [k] if isinstance(k, int) else list(k)
        # Rank of the true class: classes scoring higher, plus equal-scoring classes of lower index (ties broken as
        # argmax breaks them: a constant prediction is right for one class only, not for all).
        true_scores = scores[np.arange(len(labels)), labels][:, None]
        lower_index = np.arange(num_classes)[None, :] < labels[:, None]
        rank = ((scores > true_scores) | ((scores == true_scores) & lower_index)).sum(axis=1)
        return {f"top{kk}_accuracy": float((rank < min(kk, num_classes)).mean()) for kk in ks}
