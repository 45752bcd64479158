"""Few-shot linear evaluation (ViT paper, section 4.1: "few-shot accuracies are obtained by solving a regularized
least-squares regression problem that maps the (frozen) representation of a subset of training images to
{-1, 1}^K target vectors"; 1, 5, 10 and 25 shots per class).

For each shot count: draw that many images per class from the training set (seeded), fit the closed-form ridge
regression for every regularisation strength of a small grid, keep the strength that classifies a held-out part of
the training set (disjoint from the shots) best, and report its accuracy on the test set. The representation is the
model's pooled output (the pre-logits when the model has them), as in the paper.
"""

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader


DEFAULT_SHOTS = (1, 5, 10, 25)
# NOTE: the reference code fixes one strength (2^10 on normalised features); a grid chosen on held-out training
# images is what the paper describes as "a small grid", and it adapts to untrained and tiny models too.
DEFAULT_L2_GRID = tuple(2.0**p for p in range(-6, 14, 2))


def ridge_fit(features: torch.Tensor, targets: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Closed-form ridge regression with an unregularised bias: (N, D), (N, K) -> weights (D, K), bias (K,).

    Solved in float64 in whichever form is smaller: primal (X^T X + l2 I)^-1 X^T Y when N >= D, else the
    equivalent dual X^T (X X^T + l2 I)^-1 Y (few shots of wide features).
    """
    x = features.double()
    y = targets.double()
    x_mean, y_mean = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    x, y = x - x_mean, y - y_mean  # centring = a bias that the penalty does not touch
    n, d = x.shape
    if n >= d:
        weights = torch.linalg.solve(x.T @ x + l2 * torch.eye(d, dtype=x.dtype), x.T @ y)
    else:
        weights = x.T @ torch.linalg.solve(x @ x.T + l2 * torch.eye(n, dtype=x.dtype), y)
    bias = (y_mean - x_mean @ weights).squeeze(0)
    return weights, bias


def ridge_predict(features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N,) predicted classes (argmax of the regression outputs)."""
    return (features.double() @ weights + bias).argmax(-1)


def _signed_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, num_classes).double() * 2.0 - 1.0  # targets in {-1, 1}^K


@dataclass
class FewShotResult:
    shots: int
    accuracy: float
    l2: float
    holdout_accuracy: float

    def as_metrics(self, prefix: str = "fewshot") -> dict:
        return {f"{prefix}/{self.shots}shot_accuracy": self.accuracy, f"{prefix}/{self.shots}shot_l2": self.l2}


def fewshot_linear_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    shots=DEFAULT_SHOTS,
    l2_grid=DEFAULT_L2_GRID,
    holdout_per_class: int = 10,
    seed: int = 0,
    num_classes: int | None = None,
) -> list[FewShotResult]:
    """
    The paper's few-shot linear accuracy on precomputed representations.

    Args:
        train_features, train_labels: (N, D) representations and (N,) labels to draw the shots from.
        test_features, test_labels: (M, D), (M,) what the accuracy is measured on.
        shots: images per class to fit on (1, 5, 10, 25 in the paper).
        l2_grid: regularisation strengths to choose from.
        holdout_per_class: training images per class, never used as shots, that choose the strength.
        seed: the draw of shots and held-out images.

    Returns one `FewShotResult` per shot count.
    """
    train_labels, test_labels = train_labels.long(), test_labels.long()
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    if not l2_grid:
        raise ValueError("`l2_grid` must hold at least one regularisation strength.")
    generator = torch.Generator().manual_seed(seed)
    # One shuffled list of rows per class: the first `holdout_per_class` choose l2, shots come from the rest.
    per_class = []
    for label in range(num_classes):
        rows = (train_labels == label).nonzero().flatten()
        per_class.append(rows[torch.randperm(len(rows), generator=generator)])
    max_shots = max(shots)
    short = [c for c, rows in enumerate(per_class) if len(rows) < holdout_per_class + max_shots]
    if short:
        counts = {c: len(per_class[c]) for c in short}
        raise ValueError(
            f"Few-shot evaluation with up to {max_shots} shots and {holdout_per_class} held-out images per class needs "
            f"{holdout_per_class + max_shots} training images of every class; classes {counts} have fewer."
        )
    holdout = torch.cat([rows[:holdout_per_class] for rows in per_class])
    results = []
    for k in shots:
        if k < 1:
            raise ValueError(f"`shots` must be positive, got {k}.")
        chosen = torch.cat([rows[holdout_per_class : holdout_per_class + k] for rows in per_class])
        x, y = train_features[chosen], _signed_one_hot(train_labels[chosen], num_classes)
        best = None
        for l2 in l2_grid:
            weights, bias = ridge_fit(x, y, l2)
            held = (ridge_predict(train_features[holdout], weights, bias) == train_labels[holdout]).double().mean().item()
            if best is None or held > best[0]:
                best = (held, l2, weights, bias)
        held, l2, weights, bias = best
        accuracy = (ridge_predict(test_features, weights, bias) == test_labels).double().mean().item()
        results.append(FewShotResult(shots=k, accuracy=accuracy, l2=l2, holdout_accuracy=held))
    return results


@contextlib.contextmanager
def root_parameters_gathered(model):
    """
    For reading features from inside an FSDP2-sharded model (its backbone, not its root forward): the root unit's
    own parameters (those no inner unit owns: class token, position embeddings, head) are gathered on every process
    for that time; the inner units (the transformer blocks) gather theirs as the forward reaches them. Every process
    must run the same forward passes. Use it after the model's first forward pass (FSDP2 finds its root there), as
    the training loop's evaluators are. Does nothing for a model that is not sharded.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        FSDPModule = ()
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()


@torch.no_grad()
def extract_representations(model, loader, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Frozen representations (N, D) and labels (N,) of every batch of `loader` ({"pixel_values", "labels"}): the pooled
    output (pre-logits if the model has them) of any hf_vit model, with or without a head.
    """
    inner = getattr(model, "module", model)
    backbone = getattr(inner, inner.base_model_prefix, inner) if hasattr(inner, "base_model_prefix") else inner
    device = device or next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    for batch in loader:
        output = backbone(pixel_values=batch["pixel_values"].to(device))
        pooled = output.pooler_output
        if pooled is None:  # a backbone without pooling layer: the class token after the final norm
            pooled = output.last_hidden_state[:, 0]
        features.append(pooled.float().cpu())
        labels.append(batch["labels"].cpu())
    backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


class FewShotEvaluator:
    """
    Few-shot linear accuracy as a periodic evaluator for the training loop (or on its own): representations of
    fixed train / test subsets, then `fewshot_linear_accuracy`. Call it with a model; returns
    {"fewshot/{k}shot_accuracy": ..., "fewshot/{k}shot_l2": ...}.

    Args:
        train_dataset, test_dataset: rows with `image` and `label` (a `datasets.Dataset`).
        collate_fn: rows -> {"pixel_values", "labels"} (e.g. `ImageClassificationCollator(processor)`).
        shots, l2_grid, holdout_per_class, seed: see `fewshot_linear_accuracy`.
        max_train_per_class: training rows per class to represent (enough for the shots and the held-out part).
        max_test_examples: test rows to represent (0 = all).
    """

    name = "fewshot"

    def __init__(self, train_dataset, test_dataset, collate_fn, shots=DEFAULT_SHOTS, l2_grid=DEFAULT_L2_GRID,
                 holdout_per_class=10, seed=0, max_train_per_class=None, max_test_examples=0, batch_size=256):
        self.shots, self.l2_grid, self.holdout_per_class, self.seed = tuple(shots), tuple(l2_grid), holdout_per_class, seed
        self.collate_fn, self.batch_size = collate_fn, batch_size
        per_class = max_train_per_class or (holdout_per_class + max(self.shots))
        labels = torch.as_tensor(train_dataset["label"])
        generator = torch.Generator().manual_seed(seed)
        rows = []
        for label in labels.unique().tolist():
            members = (labels == label).nonzero().flatten()
            rows.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
        self.train_rows = train_dataset.select(torch.cat(rows).sort().values.tolist())
        self.test_rows = test_dataset
        if max_test_examples and len(test_dataset) > max_test_examples:
            self.test_rows = test_dataset.select(range(max_test_examples))
        self.num_classes = len(labels.unique())

    def _loader(self, dataset):
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate_fn)

    def __call__(self, model, accelerator=None) -> dict:
        device = accelerator.device if accelerator is not None else None
        train_x, train_y = extract_representations(model, self._loader(self.train_rows), device)
        test_x, test_y = extract_representations(model, self._loader(self.test_rows), device)
        metrics = {}
        for result in fewshot_linear_accuracy(
            train_x, train_y, test_x, test_y, self.shots, self.l2_grid, self.holdout_per_class, self.seed,
            num_classes=max(self.num_classes, int(test_y.max()) + 1),
        ):
            metrics.update(result.as_metrics(self.name))
        return metrics
