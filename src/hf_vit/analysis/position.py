"""Similarity of the position embeddings (ViT paper, section 4.5, Fig. 7 centre).

The cosine similarity between the position embedding of each patch and those of all other patches, arranged as a
grid of grids: tile (r, c) shows how similar patch (r, c)'s embedding is to every position. Learned 1D embeddings
that have picked up the image's 2D layout show row/column structure and similarity falling off with distance.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .attention import _base_model


# Position-embedding types with no absolute table to compare.
_NO_TABLE_TYPES = ("none", "relative")


@torch.no_grad()
def position_embedding_table(model) -> torch.Tensor:
    """
    The position embeddings a model adds at its own resolution, materialised: (1, [prefix +] N, D), float32.

    Taken through the embedding layer's own method (`position_embeddings_for(grid, False)`, which every
    position-embedding type answers, learned or computed such as sincos), else from its `position_embeddings`
    parameter. A model with no absolute position embedding (`"none"`, `"relative"`) raises a `ValueError`.
    """
    config = model.config
    kind = getattr(config, "position_embedding_type", "learned_1d")
    if kind in _NO_TABLE_TYPES:
        raise ValueError(
            f"The model has `position_embedding_type={kind!r}`: there is no absolute position embedding to compare; "
            "the similarity figure needs a learned or sincos table."
        )
    embeddings = _base_model(model).embeddings
    table = None
    if callable(getattr(embeddings, "position_embeddings_for", None)):
        table = embeddings.position_embeddings_for(tuple(embeddings.grid_size), False)
    if table is None:
        table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, torch.Tensor):
        raise ValueError(f"Found no position-embedding table on {type(model).__name__} (type {kind!r}).")
    return table.detach().float().cpu().reshape(1, -1, table.shape[-1])


def position_embedding_similarity(
    table: torch.Tensor, grid: Sequence[int], num_prefix_tokens: int | None = None
) -> torch.Tensor:
    """
    Cosine similarity between every pair of patch position embeddings: (1, [prefix +] N, D) -> (rows, cols, rows, cols).

    `table` may be any position-embedding table, `(T, D)` or `(1, T, D)`, learned 1D or a 2D variant's materialised
    table. The prefix rows (e.g. the class token's) are dropped: `num_prefix_tokens` of them, or, when not given,
    however many rows the table holds beyond `rows * cols`. Entry `[r, c, i, j]` compares patch (r, c) with (i, j).
    """
    rows, cols = grid
    table = torch.as_tensor(table).detach().float()
    if table.ndim == 3:
        if table.shape[0] != 1:
            raise ValueError(
                f"A position-embedding table has a leading dimension of 1, got shape {tuple(table.shape)}."
            )
        table = table[0]
    if table.ndim != 2:
        raise ValueError(f"The position-embedding table must be (T, D) or (1, T, D), got shape {tuple(table.shape)}.")
    if num_prefix_tokens is None:
        num_prefix_tokens = table.shape[0] - rows * cols
    if num_prefix_tokens < 0 or table.shape[0] != num_prefix_tokens + rows * cols:
        prefix = "" if num_prefix_tokens < 0 else f" with {num_prefix_tokens} prefix token(s)"
        raise ValueError(
            f"A table of {table.shape[0]} positions does not fit a {rows}x{cols} patch grid ({rows * cols} "
            f"positions){prefix}."
        )
    patches = F.normalize(table[num_prefix_tokens:], dim=-1)  # (N, D)
    return (patches @ patches.T).reshape(rows, cols, rows, cols)


def model_position_embedding_similarity(model) -> torch.Tensor:
    """`position_embedding_similarity` of a model's own table at its own grid: (rows, cols, rows, cols)."""
    embeddings = _base_model(model).embeddings
    grid = tuple(getattr(embeddings, "grid_size", model.config.grid_size))
    return position_embedding_similarity(position_embedding_table(model), grid)


def position_similarity_summary(similarity: torch.Tensor) -> dict[str, float]:
    """
    Numbers behind the grid of grids: the mean similarity of each patch to the other patches in its row, in its
    column, and elsewhere, and the Pearson correlation between similarity and the distance on the grid (negative
    when nearby patches have similar embeddings).
    """
    rows, cols = similarity.shape[:2]
    r = torch.arange(rows).view(rows, 1, 1, 1)
    c = torch.arange(cols).view(1, cols, 1, 1)
    i = torch.arange(rows).view(1, 1, rows, 1)
    j = torch.arange(cols).view(1, 1, 1, cols)
    same_row, same_col = (r == i), (c == j)
    shape = similarity.shape
    same_row, same_col = same_row.expand(shape), same_col.expand(shape)
    self_pair = same_row & same_col
    distance = torch.sqrt(((r - i) ** 2 + (c - j) ** 2).double()).expand(shape)
    other = ~self_pair
    sims, dists = similarity.double()[other], distance[other]

    def mean_of(mask):
        return float(similarity[mask].mean()) if mask.any() else float("nan")

    if sims.numel() > 1 and sims.std() > 0 and dists.std() > 0:
        correlation = float(torch.corrcoef(torch.stack([sims, dists]))[0, 1])
    else:
        correlation = float("nan")
    return {
        "same_row": mean_of(same_row & ~self_pair),
        "same_column": mean_of(same_col & ~self_pair),
        "elsewhere": mean_of(~same_row & ~same_col),
        "correlation_with_grid_distance": correlation,
    }


__all__ = [
    "model_position_embedding_similarity",
    "position_embedding_similarity",
    "position_embedding_table",
    "position_similarity_summary",
]
