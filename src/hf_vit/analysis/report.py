"""The whole section-4.5 analysis of one model over a set of images: numbers to JSON, figures to PNG.

Used by `hf-vit analyze`; callable from Python as `analyze_images(model, processor, paths, out_dir)`.
"""

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .attention import attention_maps, model_attention, rollout_maps
from .distance import attention_distance, uniform_attention_distance
from .filters import model_filter_components
from .position import model_position_embedding_similarity, position_similarity_summary


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

FIGURE_NAMES = {
    "rollout": "attention_rollout.png",
    "layers": "attention_layers.png",
    "distance": "attention_distance.png",
    "position": "position_embedding_similarity.png",
    "filters": "embedding_filters.png",
}


class ImageInputError(ValueError):
    """Bad image input: nothing found, or a file that cannot be read (the message names it)."""


def find_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (folders are searched recursively for the usual image suffixes), sorted."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise ImageInputError(f"{path}: no such file or folder (--images takes image files and folders).")
    if not found:
        raise ImageInputError(
            f"No images found in {', '.join(str(i) for i in inputs)} (folders are searched for files ending in "
            f"{', '.join(IMAGE_SUFFIXES)})."
        )
    return found


def open_image(path: Path, num_channels: int):
    """Decode one image file fully, as RGB (or greyscale for a 1-channel model); the error names the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("L" if num_channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageInputError(f"{path}: cannot read this image ({error}).") from error


def check_images(paths: Sequence[Path], num_channels: int) -> None:
    """Decode every file once before any work, so a bad file fails the run at the start, not at image 100."""
    for path in paths:
        open_image(path, num_channels)


def _rounded(x, digits: int = 6):
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, digits)
    return x


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a convenience; the analysis runs without it
        return None
    return tqdm(total=total, unit="image", desc="analyze")


@torch.no_grad()
def analyze_images(
    model,
    image_processor,
    image_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    num_overlays: int = 6,
    head_fusion: str = "mean",
    renormalize: bool = True,
    overlay_style: str = "heatmap",
    num_components: int = 28,
    sum_filter_channels: bool = False,
    progress: bool = True,
) -> dict:
    """
    Run every analysis of section 4.5 and write `analysis.json` and the figures into `out_dir`.

    Attention rollout and raw attention maps (overlays for the first `num_overlays` images; the per-layer,
    per-head maps for the first image), the mean attention distance per layer and head over all images, the
    position-embedding similarity and the principal components of the patch-embedding filters. An analysis that
    is not defined for the model (e.g. filters of a hybrid) is skipped with its reason in the JSON.
    `sum_filter_channels`: show the filters summed over the colour channels (for a model trained on greyscale images
    replicated to RGB, see `patch_embedding_filters`).
    Returns the dict written to `analysis.json`.
    """
    from .plotting import (
        images_for_display,
        plot_attention_distance,
        plot_attention_maps,
        plot_attention_rollout,
        plot_filter_components,
        plot_position_similarity,
    )

    for name, value in (("batch_size", batch_size), ("num_overlays", num_overlays)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    config = model.config
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ImageInputError("No images given; the analysis needs at least one.")
    check_images(paths, config.num_channels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    mean, std = image_processor.image_mean, image_processor.image_std

    distance_sum, rollouts, shown_images, shown_maps, first_layer_maps, grid = None, {}, [], [], None, None
    bar = _progress(len(paths), progress)
    try:
        for start in range(0, len(paths), batch_size):
            batch_paths = paths[start : start + batch_size]
            images = [open_image(p, config.num_channels) for p in batch_paths]
            pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
            attentions, grid, num_prefix_tokens, use_class_token = model_attention(model, pixel_values)
            distances = attention_distance(
                attentions, grid, config.token_pixel_size, num_prefix_tokens, renormalize=renormalize
            ).double()  # (B, L, heads)
            distance_sum = distances.sum(0) if distance_sum is None else distance_sum + distances.sum(0)
            maps = rollout_maps(attentions, grid, num_prefix_tokens, use_class_token, head_fusion)  # (B, rows, cols)
            for path, token_map in zip(batch_paths, maps):
                rollouts[str(path)] = token_map
            wanted = num_overlays - len(shown_images)
            if wanted > 0:
                display = images_for_display(pixel_values[:wanted], mean, std)
                shown_images.extend(display)
                shown_maps.extend(maps[:wanted])
            if first_layer_maps is None:
                first_layer_maps = attention_maps(attentions[:1], grid, num_prefix_tokens, use_class_token)[0]
                first_image = shown_images[0] if shown_images else images_for_display(pixel_values[:1], mean, std)[0]
            if bar is not None:
                bar.update(len(batch_paths))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)

    mean_distance = (distance_sum / len(paths)).float()  # (L, heads)
    uniform = uniform_attention_distance(grid, config.token_pixel_size)
    height, width = config.image_hw
    result = {
        "model": {
            "model_type": config.model_type,
            "image_size": [height, width],
            "patch_size": list(config.patch_hw),
            "token_pixel_size": list(config.token_pixel_size),
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "pooling": config.pooling,
            "use_class_token": bool(config.use_class_token),
            "position_embedding_type": getattr(config, "position_embedding_type", "learned_1d"),
            "attn_implementation": config._attn_implementation,
        },
        "num_images": len(paths),
        "grid": list(grid),
        "mean_attention_distance": {
            "pixels": _rounded(mean_distance),
            "per_layer_mean": _rounded(mean_distance.mean(dim=1)),
            "per_layer_min": _rounded(mean_distance.min(dim=1).values),
            "per_layer_max": _rounded(mean_distance.max(dim=1).values),
            "uniform_attention": round(uniform, 6),
            "renormalized_over_patches": renormalize,
            "description": "(layers, heads) in input pixels, averaged over query patches and images",
        },
        "attention_rollout": {
            "head_fusion": head_fusion,
            "maps": {path: _rounded(m) for path, m in rollouts.items()},
            "description": "per image, (rows, cols): the class-token row of the rollout, or the mean over patch "
            "query rows without a class token",
        },
        "figures": {},
        "skipped": {},
    }

    def save(key, figure):
        figure.savefig(out_dir / FIGURE_NAMES[key])
        result["figures"][key] = FIGURE_NAMES[key]

    titles = [Path(p).name for p in list(rollouts)[: len(shown_images)]]
    save("rollout", plot_attention_rollout(shown_images, torch.stack(shown_maps), titles=titles, style=overlay_style))
    layers_title = f"Attention per layer and head: {Path(paths[0]).name}"
    save("layers", plot_attention_maps(first_image, first_layer_maps, style=overlay_style, title=layers_title))
    save("distance", plot_attention_distance(mean_distance, uniform_distance=uniform, image_size=(height, width)))

    try:
        similarity = model_position_embedding_similarity(model)
    except ValueError as error:
        result["skipped"]["position_embedding_similarity"] = str(error)
    else:
        result["position_embedding_similarity"] = {
            "summary": _rounded(position_similarity_summary(similarity)),
            "cosine": _rounded(similarity, 4),
            "description": "(rows, cols, rows, cols): patch (r, c) against patch (i, j)",
        }
        save("position", plot_position_similarity(similarity))

    try:
        components, explained = model_filter_components(model, num_components, sum_filter_channels)
    except ValueError as error:
        result["skipped"]["embedding_filters"] = str(error)
    else:
        result["embedding_filters"] = {
            "explained_variance_ratio": _rounded(explained),
            "channels_summed": sum_filter_channels,
        }
        save("filters", plot_filter_components(components, explained))

    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1))
    return result


__all__ = ["FIGURE_NAMES", "IMAGE_SUFFIXES", "ImageInputError", "analyze_images", "check_images", "find_images"]
