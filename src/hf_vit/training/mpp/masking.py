"""Masked patch prediction planning: which patches are corrupted, how, and what the model must predict.

The paper's self-supervision (ViT paper, section 4.6 and appendix B.1.2): corrupt 50% of the patch embeddings
(80% replaced by a learnable [mask] embedding, 10% by another patch's embedding, 10% left as they are) and predict,
from each corrupted position's output, the patch's 3-bit mean colour (512 classes). Attention-guided masking
(AttMask, Kakogeorgiou et al. 2022) chooses the positions a teacher attends to most instead of random ones.

The plan is drawn here, in the data pipeline, and only *applied* by `ViTForMaskedPatchPrediction` (docs/mpp.md, "Where
the plan lives"). A plan for a batch of B images with N patches each, M = round(rate * N) corrupted per image:

    corrupted_positions  (B, M) long   patch indices (row-major on the patch grid), sorted, distinct per image
    corruption_kind      (B, M) long   MASK (0): the [mask] embedding; REPLACE (1): another patch; KEEP (2): unchanged
    replacement_index    (B, M) long   where kind == REPLACE: flat index b' * N + n' of the patch embedding that
                                       replaces it (another image of the batch when B > 1; see `sample_replacements`)
    labels               mean_color: (B, M) long in [0, 512); downsampled: (B, M, 16) long; pixels: (B, M, P*P*C)
"""

import math

import torch

from ...configuration_hf_vit import MPP_TARGETS, as_pair
from ...data import augmented_pixel_values, derive_seed
# The targets are computed by the model file (a model given `bool_masked_pos` computes them itself): one copy.
from ...modeling_hf_vit import (
    KEEP,
    MASK,
    MPP_COLOR_BITS,
    REPLACE,
    gather_positions,
    mpp_targets,
    patchify,
    quantize_colors,
)


MASKING_STRATEGIES = ("random", "attmask")


def _check_probability(name, value, low_open=True):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        allowed = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"`{name}` must be a number in {allowed}, got {value!r}.")


def num_corrupted(num_patches: int, rate: float) -> int:
    """M, the patches corrupted per image: `round(rate * N)`, at least 1."""
    _check_probability("mask_ratio", rate)
    return max(1, int(round(rate * num_patches)))


def sample_positions(batch: int, num_patches: int, rate: float, generator=None) -> torch.Tensor:
    """(B, M) distinct patch indices per image, uniformly at random, sorted.

    NOTE: exactly M = round(rate * N) positions per image (BERT's per-token coin flips give a varying count); a fixed
    count keeps the prediction head's batch rectangular. The rate is the paper's either way.
    """
    m = num_corrupted(num_patches, rate)
    scores = torch.rand(batch, num_patches, generator=generator)
    return scores.topk(m, dim=1).indices.sort(dim=1).values


def sample_kinds(shape, split=(0.8, 0.1, 0.1), generator=None) -> torch.Tensor:
    """Corruption kind of each planned position, drawn independently with probabilities (mask, replace, keep)."""
    split = validate_split(split)
    probabilities = torch.tensor(split, dtype=torch.float64)
    flat = torch.multinomial(probabilities, math.prod(shape), replacement=True, generator=generator)
    return flat.view(*shape)


def validate_split(split) -> tuple[float, float, float]:
    if not isinstance(split, (list, tuple)) or len(split) != 3:
        raise ValueError(f"`mask_split` must be three shares (mask, replace, keep), got {split!r}.")
    for value in split:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"`mask_split` shares must be non-negative numbers, got {split!r}.")
    total = float(sum(split))
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"`mask_split` shares must add up to 1 (mask, replace, keep), got {split!r} (sum {total}).")
    return tuple(float(v) for v in split)


def sample_replacements(positions: torch.Tensor, num_patches: int, generator=None) -> torch.Tensor:
    """(B, M) flat indices b' * N + n' of the patch embedding each position would be replaced with.

    The source is a uniformly random patch of a *different* image of the batch (uniform over the other B - 1 images
    and all their N positions), like BERT's random token from the vocabulary rather than from the same sentence:
    a patch of the same image would often be a near copy of its neighbour. With a batch of one image, a random
    other position of the same image.
    """
    batch, m = positions.shape
    if batch > 1:
        offset = torch.randint(1, batch, (batch, m), generator=generator)
        source_image = (torch.arange(batch)[:, None] + offset) % batch
        source_position = torch.randint(0, num_patches, (batch, m), generator=generator)
    else:
        if num_patches < 2:
            raise ValueError("Replacing a patch with another needs at least 2 patches per image.")
        shift = torch.randint(1, num_patches, (batch, m), generator=generator)
        source_image = torch.zeros(batch, m, dtype=torch.long)
        source_position = (positions + shift) % num_patches
    return source_image * num_patches + source_position


def num_target_classes(target: str, num_channels: int = 3) -> int:
    """Classes per prediction of a categorical target (512 for RGB 3-bit colours); 0 for "pixels"."""
    if target not in MPP_TARGETS:
        raise ValueError(f"`mpp_target` must be one of {list(MPP_TARGETS)}, got {target!r}.")
    return 0 if target == "pixels" else (2**MPP_COLOR_BITS) ** num_channels


def attention_guided_positions(
    scores: torch.Tensor, rate: float, random_share: float = 0.0, generator=None
) -> torch.Tensor:
    """AttMask: (B, N) attention of the teacher's class token to each patch -> (B, M) positions to corrupt, sorted.

    `M * (1 - random_share)` positions are the most attended ones; the remaining share is drawn uniformly from the
    positions left, so the student still sees some easy cases (AttMask's high-attention masking with a random part).
    """
    _check_probability("attmask_random_share", random_share, low_open=False)
    batch, n = scores.shape
    m = num_corrupted(n, rate)
    num_random = int(round(random_share * m))
    num_top = m - num_random
    order = scores.argsort(dim=1, descending=True)  # (B, N), most attended first
    top = order[:, :num_top]
    if num_random:
        rest = order[:, num_top:]
        pick = torch.rand(rest.shape, generator=generator).topk(num_random, dim=1).indices
        top = torch.cat([top, rest.gather(1, pick)], dim=1)
    return top.sort(dim=1).values


def plan_corruption(
    batch: int,
    num_patches: int,
    rate: float = 0.5,
    split=(0.8, 0.1, 0.1),
    positions: torch.Tensor | None = None,
    generator=None,
) -> dict:
    """A full plan for a batch: positions (random unless given), kinds and replacement sources."""
    if positions is None:
        positions = sample_positions(batch, num_patches, rate, generator=generator)
    return {
        "corrupted_positions": positions,
        "corruption_kind": sample_kinds(tuple(positions.shape), split, generator=generator),
        "replacement_index": sample_replacements(positions, num_patches, generator=generator),
    }


class MaskedPatchCollator:
    """list of {"image": ...} -> pixel_values, the corruption plan and the targets (labels) of masked patch prediction.

    Args:
        image_processor: turns the images into normalised `pixel_values` (B, C, H, W).
        patch_size: the model's patch size (int or (h, w)).
        mask_ratio: share of the patches corrupted per image (the paper: 0.5; its comparison: 0.15).
        mask_split: shares of (mask, replace, keep) among the corrupted positions (the paper: 0.8, 0.1, 0.1).
        mpp_target: "mean_color" | "downsampled" | "pixels".
        augment: optional augmentation applied before the targets are computed (targets follow what the model sees):
            a `BatchAugmentation` (its random resized crop is cut from the decoded image and resized once:
            `hf_vit.data.augmented_pixel_values`) or any batch function `(pixel_values, generator=...) ->
            pixel_values` on the processor's output.
        seed: makes every plan reproducible (the same sequence of batches gives the same plans). When the training
            loader gives each batch its own seed (`hf_vit.training.loader`), the plan is drawn from that instead, so a
            resumed run draws the same plans as an uninterrupted one.
        return_all_targets: also return `all_targets`, every patch's target (B, N, ...), and a `plan_seed`, for
            re-planning after a teacher pass (AttMask).
        per_batch_plans: draw each batch's plan from its content (evaluation: the same batch always gets the same
            plan, whatever was drawn before).

    Targets are computed from the *unnormalised* pixels: `pixel_values * image_std + image_mean`, i.e. the image in
    [0, 1] the processor started from.
    """

    def __init__(self, image_processor, patch_size, mask_ratio=0.5, mask_split=(0.8, 0.1, 0.1),
                 mpp_target="mean_color", augment=None, seed=None, return_all_targets=False, per_batch_plans=False):
        num_corrupted(4, mask_ratio)  # validates the ratio now
        self.split = validate_split(mask_split)
        if mpp_target not in MPP_TARGETS:
            raise ValueError(f"`mpp_target` must be one of {list(MPP_TARGETS)}, got {mpp_target!r}.")
        self.image_processor = image_processor
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.mpp_target = mpp_target
        self.augment = augment
        self.return_all_targets = return_all_targets
        self.per_batch_plans = per_batch_plans
        self.seed = 0 if seed is None else seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def unnormalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised (B, C, H, W) -> the [0, 1] image, inverting the processor's normalisation."""
        processor = self.image_processor
        if not getattr(processor, "do_normalize", False):
            return pixel_values
        channels = pixel_values.shape[1]
        mean = torch.tensor(processor.image_mean, dtype=pixel_values.dtype).expand(channels).view(1, -1, 1, 1)
        std = torch.tensor(processor.image_std, dtype=pixel_values.dtype).expand(channels).view(1, -1, 1, 1)
        return pixel_values * std + mean

    def _generator(self, examples, pixel_values):
        """The batch's random source: the loader's per-batch seed (resumable runs), else a plan that depends only on
        the batch's content (`per_batch_plans`, for evaluation), else the collator's own seeded stream."""
        seed = getattr(examples, "seed", None)
        if seed is not None:
            return torch.Generator().manual_seed(derive_seed("masked-patch-plan", seed)), seed
        if self.per_batch_plans:
            content = round(float(pixel_values.double().sum()), 3)
            seed = derive_seed("masked-patch-plan", self.seed, len(examples), content)
            return torch.Generator().manual_seed(seed), seed
        return self.generator, None

    def __call__(self, examples) -> dict:
        images = [e["image"] for e in examples]
        content = None  # the unaugmented batch, which content-derived plans are drawn from
        if self.augment is None or (self.per_batch_plans and getattr(examples, "seed", None) is None):
            content = augmented_pixel_values(images, self.image_processor)
        generator, seed = self._generator(examples, content)
        pixel_values = content
        if self.augment is not None:
            pixel_values = augmented_pixel_values(images, self.image_processor, self.augment, generator)
        batch = pixel_values.shape[0]
        ph, pw = as_pair(self.patch_size)
        num_patches = (pixel_values.shape[2] // ph) * (pixel_values.shape[3] // pw)
        plan = plan_corruption(batch, num_patches, self.mask_ratio, self.split, generator=generator)
        targets = mpp_targets(self.unnormalize(pixel_values), (ph, pw), self.mpp_target)
        out = {"pixel_values": pixel_values, **plan, "labels": gather_positions(targets, plan["corrupted_positions"])}
        if self.return_all_targets:
            out["all_targets"] = targets  # (B, N, ...): attention-guided masking re-plans positions after a teacher pass
            # A seed for that re-planning, so it is as reproducible (and resumable) as the rest of the plan.
            replan = seed if seed is not None else int(torch.randint(0, 2**62, (1,), generator=generator))
            out["plan_seed"] = torch.tensor(replan, dtype=torch.long)
        return out


__all__ = [
    "KEEP",
    "MASK",
    "MASKING_STRATEGIES",
    "MPP_TARGETS",
    "MaskedPatchCollator",
    "REPLACE",
    "attention_guided_positions",
    "gather_positions",
    "mpp_targets",
    "num_corrupted",
    "num_target_classes",
    "patchify",
    "plan_corruption",
    "quantize_colors",
    "sample_kinds",
    "sample_positions",
    "sample_replacements",
]
