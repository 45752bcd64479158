"""Training augmentations, chosen per data set (ViT paper, section 4.1).

The paper pre-trains with an inception-style random resized crop and a horizontal flip. Those destroy labels on
some data (a mirrored digit is another symbol; a crop of 8% of an 8x8 scan is noise), so "auto" picks per data set.
Options beyond the paper (RandAugment-style operations, mixup / cutmix) come from the later "How to train your ViT"
and DeiT recipes and are off unless asked for.

Two stages. The random resized crop changes the scale, so it acts on the decoded original image and resizes once to
the model size (`hf_vit.data.decoding`; as the reference's `inception_crop` and torchvision's `RandomResizedCrop`
do): this module only draws its boxes. Everything else runs on the batch of resized, normalised tensors
(B, C, H, W). NOTE: shifts (translate, pad-and-crop), flips and RandAugment's operations stay on the resized tensor:
a flip and an integer shift commute with the resize (the same pixels up to where the border starts), and RandAugment
acts on the model-size image in its reference implementation too (after the crop). All randomness comes from the
`torch.Generator` given per batch (see `loader.SeededBatchSampler`), so a resumed run sees the same augmented
batches as an uninterrupted one.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


AUGMENTATIONS = ("none", "flip", "translate", "crop", "crop_flip", "inception_crop_flip")
# "auto" picks per data-set kind: digit-like data is neither flipped nor heavily cropped.
AUTO_AUGMENTATION = {"digits": "translate", "idx": "crop"}
RANDAUGMENT_OPS = (
    "identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y",
    "brightness", "contrast", "sharpness", "solarize", "posterize", "autocontrast",
)


def resolve_augmentation(name: str, source_kind: str) -> str:
    """'auto' -> the augmentation for this kind of data set ('digits', 'idx', 'imagefolder', 'hub'); else checked."""
    if name == "auto":
        return AUTO_AUGMENTATION.get(source_kind, "inception_crop_flip")
    if name not in AUGMENTATIONS:
        raise ValueError(f"`augmentation` must be 'auto' or one of {list(AUGMENTATIONS)}, got {name!r}.")
    return name


# ---------------------------------------------------------------------------------------------------------------------
# Crops, shifts and flips


def random_translate(
    pixel_values: torch.Tensor, max_shift: float = 0.125, generator=None, fill: float | None = None
) -> torch.Tensor:
    """
    Shift each image by up to `max_shift` of its size in x and y (B, C, H, W). The uncovered border repeats the edge
    pixels (`fill=None`) or takes the value `fill` (pad-and-crop, as in the usual CIFAR / Fashion-MNIST recipe).
    """
    batch, channels, height, width = pixel_values.shape
    pad_h, pad_w = max(1, round(height * max_shift)), max(1, round(width * max_shift))
    if fill is None:
        padded = F.pad(pixel_values, (pad_w, pad_w, pad_h, pad_h), mode="replicate")
    else:
        padded = F.pad(pixel_values, (pad_w, pad_w, pad_h, pad_h), mode="constant", value=fill)
    top = torch.randint(0, 2 * pad_h + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * pad_w + 1, (batch,), generator=generator)
    rows = (top[:, None] + torch.arange(height))[:, None, :, None]  # (B, 1, H, 1)
    cols = (left[:, None] + torch.arange(width))[:, None, None, :]  # (B, 1, 1, W)
    batch_index = torch.arange(batch)[:, None, None, None]
    channel_index = torch.arange(channels)[None, :, None, None]
    return padded[batch_index, channel_index, rows, cols]


def random_flip(pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5. (B, C, H, W) -> (B, C, H, W)."""
    flips = torch.rand(pixel_values.shape[0], generator=generator) < 0.5
    return torch.where(flips[:, None, None, None], pixel_values.flip(-1), pixel_values)


# The random resized crop's boxes (the crop itself is taken from the decoded image: `hf_vit.data.decoding`)

CROP_ATTEMPTS = 10  # torchvision's: tries before falling back to a centred box
CROP_DRAWS = 2 * CROP_ATTEMPTS + 3  # per image: an area share and an aspect per try, the position (2), the flip
_TOP, _LEFT, _FLIP = 2 * CROP_ATTEMPTS, 2 * CROP_ATTEMPTS + 1, 2 * CROP_ATTEMPTS + 2


def check_crop_range(values, name: str, upper: float | None) -> tuple[float, float]:
    """A (low, high) range of the random resized crop, validated: 0 < low <= high (<= upper)."""
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be two numbers (low, high), got {values!r}.") from None
    if not (0.0 < low <= high) or (upper is not None and high > upper) or not math.isfinite(high):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"`{name}` must satisfy 0 < low <= high{bound}, got {values!r}.")
    return low, high


def draw_crops(batch: int, generator=None) -> torch.Tensor:
    """(B, CROP_DRAWS) float64 uniforms in [0, 1): all the randomness of each image's random resized crop and flip,
    drawn before any image is decoded (so the result does not depend on decoding order or threads)."""
    return torch.rand(batch, CROP_DRAWS, dtype=torch.float64, generator=generator)


def sample_crop_box(
    height: int, width: int, draws, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """
    (top, left, crop_height, crop_width) of a random resized crop of a `height` x `width` image, from one image's row
    of `draw_crops`. torchvision's `RandomResizedCrop.get_params`, which the reference's inception crop matches in
    distribution: up to 10 tries of an area share uniform in `scale` and an aspect ratio (width / height)
    log-uniform in `ratio`, rounded to whole pixels, until the box fits inside the image; its position uniform over
    the places where it fits. If no try fits, the largest centred box whose aspect ratio is clamped into `ratio`.
    """
    draws = draws.tolist() if isinstance(draws, torch.Tensor) else list(draws)
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(CROP_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * draws[attempt])
        aspect = math.exp(log_low + (log_high - log_low) * draws[CROP_ATTEMPTS + attempt])
        crop_w = int(round(math.sqrt(target * aspect)))
        crop_h = int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = min(int(draws[_TOP] * (height - crop_h + 1)), height - crop_h)
            left = min(int(draws[_LEFT] * (width - crop_w + 1)), width - crop_w)
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, min(height, int(round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        crop_w, crop_h = min(width, int(round(height * ratio[1]))), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def crop_is_flipped(draws) -> bool:
    """Whether one image's row of `draw_crops` mirrors it (probability 0.5)."""
    return float(draws[_FLIP]) < 0.5


def random_resized_crop_flip(
    pixel_values: torch.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None
) -> torch.Tensor:
    """
    The paper's inception-style crop and a horizontal flip, on a batch (B, C, H, W) taken as the original images:
    each crop (`sample_crop_box`) is resized back to H x W (bilinear, antialiased). The collators do not use this:
    they crop the decoded original image and resize once (`hf_vit.data.decoding`), never an already resized one.
    """
    batch, _, height, width = pixel_values.shape
    draws = draw_crops(batch, generator)
    out = torch.empty_like(pixel_values)
    for index in range(batch):
        top, left, crop_h, crop_w = sample_crop_box(height, width, draws[index], scale, ratio)
        crop = pixel_values[index : index + 1, :, top : top + crop_h, left : left + crop_w]
        resized = F.interpolate(crop, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        out[index] = resized[0].flip(-1) if crop_is_flipped(draws[index]) else resized[0]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# RandAugment-style operations (Cubuk et al. 2020), on tensors


def _affine(pixel_values, theta, fill):
    grid = F.affine_grid(theta, list(pixel_values.shape), align_corners=False)
    out = F.grid_sample(pixel_values - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def _randaugment_op(name: str, x: torch.Tensor, level: torch.Tensor, fill: float) -> torch.Tensor:
    """Apply one operation to images x in [0, 1] (n, C, H, W) with signed levels in [-1, 1] (n,)."""
    n = x.shape[0]
    if name == "identity":
        return x
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if name == "rotate":
            angle = level * math.radians(30.0)
            theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
            theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
        elif name == "shear_x":
            theta[:, 0, 1] = level * 0.3
        elif name == "shear_y":
            theta[:, 1, 0] = level * 0.3
        elif name == "translate_x":
            theta[:, 0, 2] = level * 0.6  # up to 30% of the width (the grid spans 2 units)
        else:
            theta[:, 1, 2] = level * 0.6
        return _affine(x, theta, fill)
    factor = (1.0 + level * 0.9)[:, None, None, None]
    if name == "brightness":
        return (x * factor).clamp(0, 1)
    if name == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (mean + (x - mean) * factor).clamp(0, 1)
    if name == "sharpness":
        kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
        kernel = kernel.expand(x.shape[1], 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        return (blurred + (x - blurred) * factor).clamp(0, 1)
    if name == "solarize":
        threshold = (1.0 - level.abs())[:, None, None, None]
        return torch.where(x >= threshold, 1.0 - x, x)
    if name == "posterize":
        bits = (8 - (level.abs() * 4).round()).clamp(4, 8)[:, None, None, None]
        steps = 2.0**bits
        return (x * 255.0 / (256.0 / steps)).floor() * (256.0 / steps) / 255.0
    if name == "autocontrast":
        low = x.amin(dim=(2, 3), keepdim=True)
        high = x.amax(dim=(2, 3), keepdim=True)
        scale = torch.where(high > low, 1.0 / (high - low).clamp_min(1e-6), torch.ones_like(high))
        return torch.where(high > low, (x - low) * scale, x)
    raise ValueError(f"Unknown RandAugment operation {name!r}; allowed are {list(RANDAUGMENT_OPS)}.")


def rand_augment(
    pixel_values: torch.Tensor,
    num_ops: int,
    magnitude: float,
    image_mean,
    image_std,
    generator=None,
    ops=RANDAUGMENT_OPS,
) -> torch.Tensor:
    """
    RandAugment-style: each image gets `num_ops` operations drawn uniformly from `ops`, each at `magnitude` (0..10)
    with a random sign. Works in [0, 1] pixel space (undoing the processor's normalisation and redoing it).
    """
    if not 0 <= magnitude <= 10:
        raise ValueError(f"`randaugment_magnitude` must be in [0, 10], got {magnitude}.")
    mean = torch.tensor(image_mean, dtype=pixel_values.dtype)[None, :, None, None]
    std = torch.tensor(image_std, dtype=pixel_values.dtype)[None, :, None, None]
    x = (pixel_values * std + mean).clamp(0, 1)
    batch = x.shape[0]
    for _ in range(num_ops):
        choice = torch.randint(0, len(ops), (batch,), generator=generator)
        sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        level = sign * magnitude / 10.0
        out = x.clone()
        for index, name in enumerate(ops):
            selected = (choice == index).nonzero().flatten()
            if selected.numel():
                out[selected] = _randaugment_op(name, x[selected], level[selected], fill=0.0)
        x = out
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------------------------------
# Mixup / cutmix (batch level: they mix pairs of examples and their labels)


def mixup_cutmix(
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    generator=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Mix each image with another of the batch (the batch reversed): mixup blends the pixels with a Beta(alpha, alpha)
    weight, cutmix pastes a box of that area. With both enabled, one of the two is picked per batch with
    probability 0.5. Labels become soft targets (B, K) mixed with the same weight.
    """
    targets = F.one_hot(labels, num_classes).float()
    use_mixup, use_cutmix = mixup_alpha > 0, cutmix_alpha > 0
    if not (use_mixup or use_cutmix):
        return pixel_values, targets
    if use_mixup and use_cutmix:
        use_cutmix = bool(torch.rand((), generator=generator) < 0.5)
        use_mixup = not use_cutmix
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = _beta_sample(alpha, generator)
    partner = pixel_values.flip(0)
    if use_mixup:
        mixed = pixel_values * lam + partner * (1.0 - lam)
    else:
        _, _, height, width = pixel_values.shape
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy = int(torch.randint(0, height, (1,), generator=generator))
        cx = int(torch.randint(0, width, (1,), generator=generator))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        mixed = pixel_values.clone()
        mixed[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area actually pasted
    return mixed, targets * lam + targets.flip(0) * (1.0 - lam)


def _beta_sample(alpha: float, generator) -> float:
    """One Beta(alpha, alpha) draw, reproducible from `generator` (torch's Beta sampler takes no generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


# ---------------------------------------------------------------------------------------------------------------------


class BatchAugmentation:
    """
    The training-time augmentation of one recipe, as one picklable callable for the DataLoader workers. Built from
    the resolved augmentation name, the RandAugment-style options and the processor's normalisation (to know where
    black is).

    With `inception_crop_flip` (`crops_decoded_images`), the collators crop the decoded image with the boxes this
    object draws (`draw_crops`, `crop_box`; `hf_vit.data.decoding.crop_resize_batch`) and then call
    `augment_resized` on the model-size batch. Called on a tensor, `(pixel_values (B, C, H, W), generator) ->
    pixel_values` does both on that tensor, taking it as the original images.

    Args:
        crop_scale, crop_ratio: the random resized crop's area share and aspect ratio (width / height) ranges
            (the paper's and torchvision's defaults: 8-100% of the area, 3/4-4/3).
        reduced_jpeg_decoding: let the crop decode a JPEG at a reduced DCT scale where its box allows
            (`hf_vit.data.decoding.crop_resize_batch`).
    """

    def __init__(self, name: str, image_mean, image_std, randaugment_num_ops: int = 0, randaugment_magnitude: float = 9,
                 max_shift: float = 0.125, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3),
                 reduced_jpeg_decoding: bool = False):
        if name not in AUGMENTATIONS:
            raise ValueError(f"`augmentation` must be one of {list(AUGMENTATIONS)}, got {name!r}.")
        if randaugment_num_ops < 0:
            raise ValueError(f"`randaugment_num_ops` must be >= 0 (0 = off), got {randaugment_num_ops}.")
        if not 0 <= randaugment_magnitude <= 10:
            raise ValueError(f"`randaugment_magnitude` must be in [0, 10], got {randaugment_magnitude}.")
        if not 0.0 < max_shift < 0.5:
            raise ValueError(f"`augment_max_shift` must be in (0, 0.5) (a fraction of the image size), got {max_shift}.")
        self.name = name
        self.max_shift = max_shift
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.randaugment_num_ops, self.randaugment_magnitude = randaugment_num_ops, randaugment_magnitude
        self.crop_scale = check_crop_range(crop_scale, "crop_scale", upper=1.0)
        self.crop_ratio = check_crop_range(crop_ratio, "crop_ratio", upper=None)
        self.reduced_jpeg_decoding = bool(reduced_jpeg_decoding)
        # The value black (pixel 0) has after the processor's normalisation: what pad-and-crop fills with.
        self.black = -float(self.image_mean[0]) / float(self.image_std[0])

    @property
    def crops_decoded_images(self) -> bool:
        """Whether part of this augmentation (the random resized crop and its flip) acts on the decoded image."""
        return self.name == "inception_crop_flip"

    def draw_crops(self, batch: int, generator=None) -> torch.Tensor:
        """(B, CROP_DRAWS) draws of the decoded-image stage; drawn first, before `augment_resized`'s."""
        return draw_crops(batch, generator)

    def crop_box(self, height: int, width: int, draws) -> tuple[int, int, int, int]:
        """(top, left, crop_height, crop_width) in a `height` x `width` image, from one row of `draw_crops`."""
        return sample_crop_box(height, width, draws, self.crop_scale, self.crop_ratio)

    def augment_resized(self, pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
        """The stage on the model-size batch (B, C, H, W): RandAugment, then the shift / flip of the other names."""
        if self.randaugment_num_ops:
            pixel_values = rand_augment(
                pixel_values, self.randaugment_num_ops, self.randaugment_magnitude, self.image_mean, self.image_std,
                generator=generator,
            )
        if self.name == "flip":
            return random_flip(pixel_values, generator=generator)
        if self.name == "translate":
            return random_translate(pixel_values, self.max_shift, generator=generator)
        if self.name in ("crop", "crop_flip"):
            pixel_values = random_translate(pixel_values, self.max_shift, generator=generator, fill=self.black)
            return random_flip(pixel_values, generator=generator) if self.name == "crop_flip" else pixel_values
        return pixel_values

    def __call__(self, pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
        if self.crops_decoded_images:
            pixel_values = random_resized_crop_flip(pixel_values, self.crop_scale, self.crop_ratio, generator)
        return self.augment_resized(pixel_values, generator)
