"""A picture of the masked autoencoder at work: each image, what the encoder sees, the decoder's reconstruction, and
the reconstruction with the visible patches pasted back (MAE's figure 2). Needs matplotlib."""

import torch

from ...modeling_hf_vit import mae_patch_pixels, mae_unpatch_pixels, unnormalize_pixels


@torch.no_grad()
def reconstruct(model, pixel_values: torch.Tensor, noise: torch.Tensor) -> dict:
    """
    Run a `ViTForMaskedAutoencoding` and turn its predictions into images: {"image", "visible", "reconstruction",
    "pasted"} (B, C, H, W) in [0, 1] and the "mask" (B, N). With `norm_pix_loss` the model predicts each patch's
    normalised pixels; they are shown with the true patch's mean and standard deviation put back, as MAE's own
    visualisation does (the model never predicts those two numbers).
    """
    inner = getattr(model, "module", model)
    config = inner.config
    was_training = inner.training
    inner.eval()
    out = inner(pixel_values=pixel_values, noise=noise)
    inner.train(was_training)
    grid = (pixel_values.shape[2] // config.patch_hw[0], pixel_values.shape[3] // config.patch_hw[1])
    predicted = out.logits.float()  # (B, N, P * P * C), in the model input's scale (per patch normalised or not)
    if config.norm_pix_loss:
        target = mae_patch_pixels(pixel_values.float(), config.patch_hw)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        predicted = predicted * (var + 1e-6) ** 0.5 + mean
    channels = config.num_channels
    reconstruction = unnormalize_pixels(mae_unpatch_pixels(predicted, grid, config.patch_hw, channels), config)
    image = unnormalize_pixels(pixel_values, config)
    hidden = mae_unpatch_pixels(
        out.mask[..., None].expand(-1, -1, predicted.shape[-1]), grid, config.patch_hw, channels
    )  # (B, C, H, W): 1 on hidden patches
    grey = torch.full_like(image, 0.5)
    return {
        "image": image.clamp(0, 1),
        "visible": torch.where(hidden.bool(), grey, image).clamp(0, 1),
        "reconstruction": reconstruction.clamp(0, 1),
        "pasted": torch.where(hidden.bool(), reconstruction, image).clamp(0, 1),
        "mask": out.mask,
        "loss": out.loss,
    }


@torch.no_grad()
def plot_reconstructions(model, collator, examples, max_images: int = 4):
    """
    A figure of MAE at work, one row per image: the image, the encoder's input (hidden patches grey), the decoder's
    reconstruction of every patch, and the reconstruction of the hidden patches with the visible ones pasted back.
    `collator` is the task's evaluation collator (`MaskedAutoencoderCollator`), which fixes each batch's masking.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = collator(list(examples)[:max_images])
    inner = getattr(model, "module", model)
    device = next(inner.parameters()).device
    pictures = reconstruct(inner, batch["pixel_values"].to(device), batch["noise"].to(device))
    rows = pictures["image"].shape[0]
    figure, axes = plt.subplots(rows, 4, figsize=(8, 2.1 * rows), squeeze=False)
    titles = ("image", f"encoder input ({pictures['mask'][0].mean():.0%} hidden)", "reconstruction",
              "reconstruction + visible")
    for title, axis in zip(titles, axes[0]):
        axis.set_title(title, fontsize=9)
    for b in range(rows):
        for axis, name in zip(axes[b], ("image", "visible", "reconstruction", "pasted")):
            picture = pictures[name][b].permute(1, 2, 0).cpu()
            axis.imshow(picture.squeeze(-1).numpy() if picture.shape[-1] == 1 else picture.numpy(),
                        cmap="gray" if picture.shape[-1] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(f"masked autoencoder: reconstruction loss {float(pictures['loss']):.3f} on these images", fontsize=10)
    figure.tight_layout()
    return figure


__all__ = ["plot_reconstructions", "reconstruct"]
