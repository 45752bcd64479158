"""Batch augmentations on preprocessed tensors (B, C, H, W), chosen per data set (ViT paper, section 4.1)."""

import torch
import torch.nn.functional as F


AUGMENTATIONS = ("none", "translate", "inception_crop_flip")
# "auto" picks per data set: digits must not be flipped (a mirrored 2 is not a 2), natural images get the paper's
# inception-style crop and horizontal flip.
AUTO_AUGMENTATION = {"digits": "translate"}


def resolve_augmentation(name: str, dataset: str) -> str:
    if name == "auto":
        return AUTO_AUGMENTATION.get(dataset, "inception_crop_flip")
    if name not in AUGMENTATIONS:
        raise ValueError(f"`augmentation` must be 'auto' or one of {list(AUGMENTATIONS)}, got {name!r}.")
    return name


def random_translate(pixel_values: torch.Tensor, max_shift: float = 0.125, generator=None) -> torch.Tensor:
    """Shift each image by up to `max_shift` of its size in x and y, filling with the border (B, C, H, W)."""
    batch, _, height, width = pixel_values.shape
    pad_h, pad_w = max(1, round(height * max_shift)), max(1, round(width * max_shift))
    padded = F.pad(pixel_values, (pad_w, pad_w, pad_h, pad_h), mode="replicate")
    top = torch.randint(0, 2 * pad_h + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * pad_w + 1, (batch,), generator=generator)
    rows = (top[:, None] + torch.arange(height))[:, None, :, None]  # (B, 1, H, 1)
    cols = (left[:, None] + torch.arange(width))[:, None, None, :]  # (B, 1, 1, W)
    batch_index = torch.arange(batch)[:, None, None, None]
    channel_index = torch.arange(pixel_values.shape[1])[None, :, None, None]
    return padded[batch_index, channel_index, rows, cols]


def random_resized_crop_flip(
    pixel_values: torch.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None
) -> torch.Tensor:
    """Inception-style crop (random area and aspect ratio, resized back) and a horizontal flip with p=0.5."""
    batch, _, height, width = pixel_values.shape
    area = torch.empty(batch).uniform_(*scale, generator=generator) * height * width
    log_ratio = torch.empty(batch).uniform_(*torch.tensor(ratio).log().tolist(), generator=generator)
    aspect = log_ratio.exp()
    crop_w = (area * aspect).sqrt().round().clamp(1, width).long()
    crop_h = (area / aspect).sqrt().round().clamp(1, height).long()
    out = torch.empty_like(pixel_values)
    flips = torch.rand(batch, generator=generator) < 0.5
    for i in range(batch):
        top = int(torch.randint(0, height - crop_h[i] + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - crop_w[i] + 1, (1,), generator=generator))
        crop = pixel_values[i : i + 1, :, top : top + crop_h[i], left : left + crop_w[i]]
        crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        out[i] = crop[0].flip(-1) if flips[i] else crop[0]
    return out


def augmentation_for(name: str):
    """The batch function for a resolved augmentation name (None for 'none')."""
    if name == "none":
        return None
    if name == "translate":
        return random_translate
    if name == "inception_crop_flip":
        return random_resized_crop_flip
    raise ValueError(f"`augmentation` must be one of {list(AUGMENTATIONS)}, got {name!r}.")
