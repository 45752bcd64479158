"""Test-time augmentation: class scores averaged over views of each evaluation image.

`"flip"` averages the class probabilities of an image and its mirror image (two forward passes). The ViT paper
evaluates one centred view; this is an evaluation option (off by default) for data whose labels survive a horizontal
flip, as the flip augmentation used in training assumes. The result is returned as log-probabilities, so that argmax,
top-k and the cross-entropy of `classification_metrics` read it like logits.
"""

import math

import torch


TEST_TIME_AUGMENTATIONS = ("none", "flip")


def check_test_time_augmentation(name: str) -> str:
    if name not in TEST_TIME_AUGMENTATIONS:
        raise ValueError(f"`test_time_augmentation` must be one of {list(TEST_TIME_AUGMENTATIONS)}, got {name!r}.")
    return name


def classify(model, pixel_values: torch.Tensor, test_time_augmentation: str = "none", return_single_view: bool = False):
    """
    (B, C, H, W) -> (B, K) float32 class scores: the model's logits, or with "flip" the log of the views' mean
    probabilities (the image's and its mirror image's). With `return_single_view`, also the one-view logits (the
    forward pass the scores already made): `(scores, logits)`.
    """
    logits = model(pixel_values=pixel_values).logits.float()
    scores = logits
    if check_test_time_augmentation(test_time_augmentation) != "none":
        mirrored = model(pixel_values=pixel_values.flip(-1)).logits.float()
        views = torch.stack([logits.log_softmax(-1), mirrored.log_softmax(-1)])
        scores = torch.logsumexp(views, dim=0) - math.log(len(views))
    return (scores, logits) if return_single_view else scores


__all__ = ["TEST_TIME_AUGMENTATIONS", "check_test_time_augmentation", "classify"]
