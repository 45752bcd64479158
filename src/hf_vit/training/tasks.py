"""Task objects for the shared loop: what one step computes, which collators feed it, how a split is evaluated.

The loop (`hf_vit.training.loop.train`) knows nothing about labels or heads: a task brings its model, its collators
(a task may batch differently: masked patch prediction draws its corruption plan there) and its evaluation.
"""

import torch
import torch.nn.functional as F

from ..data import ImageClassificationCollator, move_to_device
from ..evaluation.metrics import StreamingClassificationMetrics
from ..evaluation.tta import check_test_time_augmentation, classify


class Task:
    """
    The interface the loop drives. Subclasses set `model` and implement `step`, `evaluate` and the two collators.

    - `train_collator()` / `eval_collator()`: list of dataset rows -> batch dict (run in DataLoader workers).
    - `step(batch) -> (loss, metrics)`: the training loss (a scalar tensor to back-propagate) and a dict of scalar
      metrics for the progress bar and the logs.
    - `evaluate(loader, accelerator, model=None) -> dict`: metrics over a loader, with `model` (default: the task's;
      the loop passes the EMA copy to evaluate the average).
    """

    name = "task"
    model = None

    def train_collator(self):
        raise NotImplementedError

    def eval_collator(self):
        raise NotImplementedError

    def step(self, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self, loader, accelerator, model=None) -> dict:
        raise NotImplementedError


class ClassificationTask(Task):
    """
    Supervised image classification: cross-entropy (optionally label-smoothed) on `logits`; soft targets (B, K) from
    mixup / cutmix are taken as they are. Evaluation: top-1 / top-5 accuracy through `evaluate`, plus the loss.

    Args:
        model: a `ViTForImageClassification` (or any model whose output has `logits`).
        image_processor: turns the rows' images into `pixel_values` (the model's `ViTImageProcessor`).
        augmentation: a `BatchAugmentation` for training batches, or None.
        label_smoothing, mixup_alpha, cutmix_alpha: the regularisers of the DeiT-style recipes (0 = off).
        test_time_augmentation: "none" (one view, the paper's evaluation) or "flip" (each evaluation image's and its
            mirror image's class probabilities averaged; `hf_vit.evaluation.tta`).
    """

    name = "image-classification"

    def __init__(self, model, image_processor=None, augmentation=None, label_smoothing: float = 0.0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, test_time_augmentation: str = "none"):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        self.model = model
        self.image_processor = image_processor
        self.augmentation = augmentation
        self.label_smoothing = label_smoothing
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.test_time_augmentation = check_test_time_augmentation(test_time_augmentation)

    @property
    def num_labels(self) -> int:
        return getattr(self.model, "module", self.model).config.num_labels

    def train_collator(self):
        return ImageClassificationCollator(
            self.image_processor, self.augmentation, self.num_labels, self.mixup_alpha, self.cutmix_alpha
        )

    def eval_collator(self):
        return ImageClassificationCollator(self.image_processor)

    def step(self, batch) -> tuple[torch.Tensor, dict]:
        logits = self.model(pixel_values=batch["pixel_values"]).logits  # (B, K)
        labels = batch["labels"]  # (B,) class indices, or (B, K) soft targets
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        hard = labels.argmax(-1) if labels.ndim == 2 else labels
        accuracy = (logits.detach().argmax(-1) == hard).float().mean()
        return loss, {"accuracy": accuracy}

    @torch.no_grad()
    def measure(self, loader, accelerator, model=None, with_single_view: bool = False,
                with_confusion_matrix: bool = False):
        """
        Metrics of a loader (`StreamingClassificationMetrics`: counted batch by batch over every process, the padding
        of the last batch dropped), with the task's test-time augmentation. With `with_single_view`, also the
        one-view metrics from the same pass: `(metrics, one_view_metrics)`.
        """
        model = model if model is not None else self.model
        was_training = model.training
        model.eval()
        views, num_labels = self.test_time_augmentation, self.num_labels
        totals = StreamingClassificationMetrics(num_labels, with_confusion_matrix)
        single = StreamingClassificationMetrics(num_labels) if with_single_view else None
        for batch in loader:
            batch = move_to_device(batch, accelerator.device)
            scores, logits = classify(model, batch["pixel_values"], views, return_single_view=True)
            for metrics, values in ((totals, scores), (single, logits)):
                if metrics is not None:
                    local = metrics.per_example(values, batch["labels"])
                    gathered = accelerator.gather_for_metrics(tuple(local.values()))
                    metrics.update(**dict(zip(local, gathered)))
        model.train(was_training)
        return (totals.compute(), single.compute()) if with_single_view else totals.compute()

    def evaluate(self, loader, accelerator, model=None) -> dict:
        return self.measure(loader, accelerator, model)
