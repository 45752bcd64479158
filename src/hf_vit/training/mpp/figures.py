"""A picture of masked patch prediction at work: each image, what the model sees, the true and the predicted 3-bit
mean colours of its corrupted patches. Needs matplotlib."""

import torch

from ...modeling_hf_vit import KEEP, MASK, MPP_COLOR_BITS, REPLACE
from .masking import patchify


def class_to_color(classes: torch.Tensor, num_channels: int = 3) -> torch.Tensor:
    """(...,) 3-bit colour classes -> (..., C) colours in [0, 1] at the centre of each quantisation bin."""
    levels = 2**MPP_COLOR_BITS
    digits = [(classes // levels**power) % levels for power in range(num_channels - 1, -1, -1)]
    return (torch.stack(digits, dim=-1).float() + 0.5) / levels


@torch.no_grad()
def plot_predictions(model, collator, examples, max_images: int = 4):
    """
    A figure of masked patch prediction at work, one row per image: the image, what the model sees (light blue:
    [mask]; another patch pasted in: replaced; outlined in red: corrupted but unchanged), the true 3-bit mean colour
    of each corrupted patch, and the model's predicted colour (pale blue-grey: not corrupted, nothing to predict).
    Needs matplotlib; "mean_color" models only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    inner = getattr(model, "module", model)
    if inner.config.mpp_target != "mean_color":
        raise ValueError(f"plot_predictions draws mean colours: the model's `mpp_target` is {inner.config.mpp_target!r}.")
    batch = collator(list(examples)[:max_images])
    was_training = inner.training
    inner.eval()
    inputs = {k: batch[k] for k in ("pixel_values", "corrupted_positions", "corruption_kind", "replacement_index")}
    predicted = inner(**inputs).logits.argmax(-1)  # (B, M)
    inner.train(was_training)
    images = collator.unnormalize(batch["pixel_values"]).clamp(0, 1)  # (B, C, H, W) in [0, 1]
    (ph, pw), width = inner.config.patch_hw, images.shape[-1]
    cols = width // pw
    patches = patchify(images, (ph, pw))  # (B, N, C, ph, pw)
    rows = images.shape[0]
    figure, axes = plt.subplots(rows, 4, figsize=(8, 2.1 * rows), squeeze=False)
    for title, axis in zip(("image", "model input", "true mean colour", "predicted"), axes[0]):
        axis.set_title(title, fontsize=9)
    for b in range(rows):
        seen = images[b].clone()
        background = torch.tensor([0.86, 0.9, 0.96])[:, None, None].expand_as(images[b])
        truth, guess = background.clone(), background.clone()
        outlines = []
        for slot, position in enumerate(batch["corrupted_positions"][b].tolist()):
            r, c = divmod(position, cols)
            area = (slice(None), slice(r * ph, (r + 1) * ph), slice(c * pw, (c + 1) * pw))
            kind = int(batch["corruption_kind"][b, slot])
            if kind == MASK:
                seen[area] = torch.tensor([0.45, 0.7, 1.0])[:, None, None]
            elif kind == REPLACE:
                source = int(batch["replacement_index"][b, slot])
                seen[area] = patches[source // patches.shape[1], source % patches.shape[1]]
            elif kind == KEEP:
                outlines.append((r, c))
            truth[area] = class_to_color(batch["labels"][b, slot])[:, None, None]
            guess[area] = class_to_color(predicted[b, slot])[:, None, None]
        for axis, picture in zip(axes[b], (images[b], seen, truth, guess)):
            axis.imshow(picture.permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        for r, c in outlines:
            axes[b][1].add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, edgecolor="red", lw=1))
    accuracy = float((predicted == batch["labels"]).float().mean())
    figure.suptitle(f"masked patch prediction: {accuracy:.0%} of these corrupted patches' colours right", fontsize=10)
    figure.tight_layout()
    return figure


__all__ = ["class_to_color", "plot_predictions"]
