"""Confusion matrix, an `evaluate` metric module shipped inside hf_vit (loads offline from its folder path).

It imports only evaluate, datasets and numpy, since `evaluate` copies it into its module cache before importing it.
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Confusion matrix of a classifier: entry [i][j] counts the examples of true class i predicted as class j.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    num_labels (`int`, *optional*): number of classes K (default: 1 + the largest index seen).
Returns:
    `confusion_matrix` (`list` of `list` of `int`, K x K, rows = true class, columns = predicted class).
Examples:
    >>> metric = evaluate.load("path/to/confusion_matrix")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)
    {'confusion_matrix': [[1, 1], [0, 1]]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        predicted = np.asarray(predictions, dtype=np.int64)
        true = np.asarray(references, dtype=np.int64)
        if len(predicted) != len(true):
            raise ValueError(f"{len(predicted)} predictions for {len(true)} references.")
        seen = int(max(predicted.max(initial=-1), true.max(initial=-1))) + 1
        size = seen if num_labels is None else int(num_labels)
        if seen > size or min(predicted.min(initial=0), true.min(initial=0)) < 0:
            raise ValueError(f"class indices must be in [0, {size}); got values up to {seen - 1}.")
        matrix = np.zeros((size, size), dtype=np.int64)
        np.add.at(matrix, (true, predicted), 1)
        return {"confusion_matrix": matrix.tolist()}
