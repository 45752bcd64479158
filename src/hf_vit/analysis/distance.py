"""Mean attention distance per head and layer (ViT paper, section 4.5, Fig. 7 right and Fig. 11).

For each query patch, the distance in input pixels to every key patch, weighted by the attention weight; averaged
over the query patches and over images. Class-token rows and columns are left out: the class token has no place on
the image. Distances are between token centres, in input pixels through `config.token_pixel_size`, so a hybrid
(where one token covers a larger stretch of the image) is measured on the same scale as a plain ViT.
"""

from collections.abc import Iterable, Sequence

import torch

from .attention import _check_attentions, model_attention


def token_centers(grid: Sequence[int], token_pixel_size: Sequence[int]) -> torch.Tensor:
    """(rows * cols, 2) centre of every patch token in input pixels, as (y, x), in row-major token order."""
    rows, cols = grid
    token_h, token_w = token_pixel_size
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) * token_h
    xs = (torch.arange(cols, dtype=torch.float64) + 0.5) * token_w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)


def token_distances(grid: Sequence[int], token_pixel_size: Sequence[int]) -> torch.Tensor:
    """(N, N) Euclidean distance in input pixels between the centres of every pair of patch tokens."""
    centers = token_centers(grid, token_pixel_size)
    return torch.cdist(centers, centers)


def attention_distance(
    attentions: torch.Tensor,
    grid: Sequence[int],
    token_pixel_size: Sequence[int],
    num_prefix_tokens: int,
    renormalize: bool = True,
) -> torch.Tensor:
    """
    Mean attention distance of each image, layer and head: (B, L, heads, T, T) -> (B, L, heads), in input pixels.

    `renormalize`: the attention of each patch query over the patch keys is rescaled to sum to 1 once the class
    token's column is dropped, so the number is the distance of the patch-to-patch mixing alone.
    NOTE: the paper does not say how it treats the class token's share; without renormalising (`False`), a head
    that attends mostly to the class token would look local although it integrates nothing nearby.
    """
    attentions = _check_attentions(attentions)
    rows, cols = grid
    tokens = attentions.shape[-1]
    if tokens != num_prefix_tokens + rows * cols:
        raise ValueError(
            f"A {tokens}-token attention matrix does not fit {num_prefix_tokens} prefix token(s) plus a "
            f"{rows}x{cols} patch grid."
        )
    patch_attention = attentions[..., num_prefix_tokens:, num_prefix_tokens:].double()  # (B, L, heads, N, N)
    if renormalize:
        patch_attention = patch_attention / patch_attention.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    distances = token_distances(grid, token_pixel_size)  # (N, N)
    per_query = (patch_attention * distances).sum(dim=-1)  # (B, L, heads, N)
    return per_query.mean(dim=-1).float()


def uniform_attention_distance(grid: Sequence[int], token_pixel_size: Sequence[int]) -> float:
    """The mean attention distance of a head that attends to all patches alike: the mean pairwise token distance."""
    return float(token_distances(grid, token_pixel_size).mean())


@torch.no_grad()
def mean_attention_distance(
    model, pixel_batches: Iterable[torch.Tensor], renormalize: bool = True, interpolate_pos_encoding: bool = False
) -> torch.Tensor:
    """
    Mean attention distance of a model over a set of images: (L, heads) in input pixels (Fig. 7 right).

    `pixel_batches`: an iterable of (B, C, H, W) batches (e.g. a list, or a generator over a data set); every
    image counts once, whatever the batching.
    """
    total, count = None, 0
    for pixel_values in pixel_batches:
        attentions, grid, num_prefix_tokens, _ = model_attention(model, pixel_values, interpolate_pos_encoding)
        distances = attention_distance(
            attentions, grid, model.config.token_pixel_size, num_prefix_tokens, renormalize=renormalize
        )
        batch_sum = distances.double().sum(dim=0)
        total = batch_sum if total is None else total + batch_sum
        count += distances.shape[0]
    if count == 0:
        raise ValueError("`pixel_batches` held no images; the mean attention distance needs at least one.")
    return (total / count).float()


__all__ = [
    "attention_distance",
    "mean_attention_distance",
    "token_centers",
    "token_distances",
    "uniform_attention_distance",
]
