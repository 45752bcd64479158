"""Figures for the analysis of section 4.5 of the ViT paper (Fig. 6, 7, 11, 14), one helper per analysis.

Every helper takes the numbers the analysis functions return and gives back a `matplotlib.figure.Figure`, built
without pyplot (no global figure state, no GUI backend: `fig.savefig("x.png")` renders with Agg). Needs matplotlib.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _figure(width: float, height: float, dpi: int = 100):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The analysis figures need matplotlib: `pip install matplotlib` (or the hf-vit extra that ships it)."
        ) from error
    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def images_for_display(
    pixel_values: torch.Tensor, image_mean: Sequence[float], image_std: Sequence[float]
) -> np.ndarray:
    """Undo the processor's normalisation: (B, C, H, W) model input -> (B, H, W, C) array in [0, 1]."""
    mean = torch.as_tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1)
    images = (pixel_values.detach().float().cpu() * std + mean).clamp(0, 1)
    return images.permute(0, 2, 3, 1).numpy()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) in [0, 1] -> (H, W, 3)."""
    image = _numpy(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"An image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}.")
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _upsample(token_map, size: Sequence[int]) -> np.ndarray:
    """(rows, cols) map -> (H, W), bilinear, scaled to [0, 1] (a constant map becomes all ones)."""
    values = torch.as_tensor(_numpy(token_map))[None, None]
    values = F.interpolate(values, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    low, high = float(values.min()), float(values.max())
    values = (values - low) / (high - low) if high > low else torch.ones_like(values)
    return values.numpy()


def overlay(image: np.ndarray, token_map, style: str = "heatmap", alpha: float = 0.5) -> np.ndarray:
    """
    An attention map drawn over an image: (H, W[, C]) image in [0, 1] and (rows, cols) map -> (H, W, 3) in [0, 1].

    `style="heatmap"`: the map in the "inferno" colour map blended over the image with `alpha`; `style="mask"`:
    the image multiplied by the map, the way the paper's Fig. 6 shows it.
    """
    if style not in ("heatmap", "mask"):
        raise ValueError(f"`style` must be one of ['heatmap', 'mask'], got {style!r}.")
    from matplotlib import colormaps

    image = _as_rgb(image)
    mask = _upsample(token_map, image.shape[:2])
    if style == "mask":
        return image * mask[..., None]
    heat = colormaps["inferno"](mask)[..., :3]
    return (1 - alpha) * image + alpha * heat


def plot_attention_rollout(
    images: Sequence[np.ndarray], maps, titles: Sequence[str] | None = None, style: str = "heatmap"
):
    """Fig. 6 / 14: each image (top row) and its attention-rollout map over it (bottom row). `maps`: (K, rows, cols)."""
    maps = _numpy(maps)
    count = len(images)
    if maps.shape[0] != count:
        raise ValueError(f"Got {count} images but {maps.shape[0]} maps.")
    fig = _figure(1.8 * count + 0.4, 3.9)
    axes = fig.subplots(2, count, squeeze=False)
    for k in range(count):
        axes[0, k].imshow(_as_rgb(images[k]))
        axes[1, k].imshow(overlay(images[k], maps[k], style=style))
        if titles is not None:
            axes[0, k].set_title(titles[k], fontsize=8)
        for ax in axes[:, k]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("rollout")
    fig.suptitle("Attention rollout", fontsize=10)
    return fig


def plot_attention_maps(image: np.ndarray, maps, style: str = "heatmap", title: str | None = None):
    """Raw attention of every layer (rows) and head (columns) over one image. `maps`: (L, heads, rows, cols)."""
    maps = _numpy(maps)
    if maps.ndim != 4:
        raise ValueError(f"`maps` must be (layers, heads, rows, cols), got shape {maps.shape}.")
    layers, heads = maps.shape[:2]
    fig = _figure(1.3 * heads + 0.6, 1.3 * layers + 0.4)
    axes = fig.subplots(layers, heads, squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            ax.imshow(overlay(image, maps[layer, head], style=style))
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
    fig.suptitle(title or "Attention per layer and head", fontsize=10)
    return fig


def plot_attention_distance(distances, uniform_distance: float | None = None, image_size: Sequence[int] | None = None):
    """
    Fig. 7 right / Fig. 11: mean attention distance (pixels) per layer, one dot per head. `distances`: (L, heads).

    `uniform_distance` draws the level of a head that attends to all patches alike; `image_size` the image height
    as the upper end of the axis.
    """
    from matplotlib import colormaps

    distances = _numpy(distances)
    if distances.ndim != 2:
        raise ValueError(f"`distances` must be (layers, heads), got shape {distances.shape}.")
    layers, heads = distances.shape
    fig = _figure(5.0, 3.6)
    ax = fig.subplots()
    colours = colormaps["tab20"](np.linspace(0, 1, max(heads, 2)))
    for head in range(heads):
        ax.scatter(np.arange(1, layers + 1), distances[:, head], s=18, color=colours[head], label=f"head {head + 1}")
    if uniform_distance is not None:
        ax.axhline(uniform_distance, color="grey", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.set_xticks(np.arange(1, layers + 1))
    top = max(float(np.nanmax(distances)), uniform_distance or 0.0)
    if image_size is not None:
        top = max(top, float(max(image_size)) * 0.75)
    ax.set_ylim(0, top * 1.05 + 1e-6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if heads > 8 else 1, loc="lower right")
    ax.set_title("Mean attention distance", fontsize=10)
    return fig


def plot_position_similarity(similarity):
    """
    Fig. 7 centre: the cosine similarity of each patch's position embedding with all others, a grid of grids.
    `similarity`: (rows, cols, rows, cols); tile (r, c) is patch (r, c) compared with every position.
    """
    similarity = _numpy(similarity)
    if similarity.ndim != 4:
        raise ValueError(f"`similarity` must be (rows, cols, rows, cols), got shape {similarity.shape}.")
    rows, cols = similarity.shape[:2]
    gap = 1
    mosaic = np.full((rows * (rows + gap) - gap, cols * (cols + gap) - gap), np.nan, dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            top, left = r * (rows + gap), c * (cols + gap)
            mosaic[top : top + rows, left : left + cols] = similarity[r, c]
    side = 5.0
    fig = _figure(side + 1.0, side * rows / cols + 0.4)
    ax = fig.subplots()
    image = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([c * (cols + gap) + (cols - 1) / 2 for c in range(cols)], [str(c + 1) for c in range(cols)])
    ax.set_yticks([r * (rows + gap) + (rows - 1) / 2 for r in range(rows)], [str(r + 1) for r in range(rows)])
    ax.tick_params(labelsize=6, length=0)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.set_title("Position embedding similarity", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="Cosine similarity")
    return fig


def plot_filter_components(components, explained_variance=None, columns: int = 7):
    """
    Fig. 7 left: principal components of the patch-embedding filters as pixel patches. `components`: (k, C, P, P)
    with C = 3 (RGB) or 1 (grey); each is scaled to [0, 1] on its own (their sign is arbitrary).
    """
    components = _numpy(components)
    if components.ndim != 4 or components.shape[1] not in (1, 3):
        raise ValueError(f"`components` must be (k, C, P, P) with C in {{1, 3}}, got shape {components.shape}.")
    count = components.shape[0]
    columns = max(1, min(columns, count))
    grid_rows = -(-count // columns)
    fig = _figure(1.0 * columns + 0.3, 1.0 * grid_rows + 0.5)
    axes = fig.subplots(grid_rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= count:
            ax.axis("off")
            continue
        patch = components[index].transpose(1, 2, 0)
        low, high = patch.min(), patch.max()
        patch = (patch - low) / (high - low) if high > low else np.full_like(patch, 0.5)
        ax.imshow(_as_rgb(patch), interpolation="nearest")
        label = f"PC{index + 1}"
        if explained_variance is not None:
            label += f" {100 * float(explained_variance[index]):.0f}%"
        ax.set_title(label, fontsize=7)
    fig.suptitle("Patch-embedding filters: principal components", fontsize=10)
    return fig


__all__ = [
    "images_for_display",
    "overlay",
    "plot_attention_distance",
    "plot_attention_maps",
    "plot_attention_rollout",
    "plot_filter_components",
    "plot_position_similarity",
]
