"""Task objects for the shared loop: what one step computes and how a split is evaluated."""

import torch
import torch.nn.functional as F

from ..evaluation.metrics import classification_metrics


class ClassificationTask:
    """Supervised image classification: cross-entropy (optionally label-smoothed) on `logits`."""

    name = "image-classification"

    def __init__(self, model, label_smoothing: float = 0.0):
        self.model = model
        self.label_smoothing = label_smoothing

    def step(self, batch) -> tuple[torch.Tensor, dict]:
        logits = self.model(pixel_values=batch["pixel_values"]).logits
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=self.label_smoothing)
        accuracy = (logits.detach().argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": accuracy}

    @torch.no_grad()
    def evaluate(self, loader, accelerator) -> dict:
        was_training = self.model.training
        self.model.eval()
        all_logits, all_labels = [], []
        for batch in loader:
            logits = self.model(pixel_values=batch["pixel_values"]).logits
            logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
            all_logits.append(logits.float().cpu())
            all_labels.append(labels.cpu())
        self.model.train(was_training)
        return classification_metrics(torch.cat(all_logits), torch.cat(all_labels))
