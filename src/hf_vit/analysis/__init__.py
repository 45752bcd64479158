"""The analysis of section 4.5 of the ViT paper for any hf_vit model (Fig. 6, 7, 11, 14).

Each analysis is a function returning numbers (tensors, dicts) and a plotting helper in `hf_vit.analysis.plotting`
returning a matplotlib figure:

- attention rollout and raw attention maps (`rollout_maps`, `attention_maps`; `plot_attention_rollout`,
  `plot_attention_maps`);
- mean attention distance per layer and head (`mean_attention_distance`; `plot_attention_distance`);
- position-embedding similarity (`model_position_embedding_similarity`; `plot_position_similarity`);
- principal components of the patch-embedding filters (`model_filter_components`; `plot_filter_components`).

Attention weights come from `output_attentions=True`, which hf_vit answers with the real weights under any
attention backend, so nothing is switched to eager and no hooks are installed. `analyze_images` runs everything
and writes the figures and a JSON (the `hf-vit analyze` command).
"""

from .attention import (
    attention_maps,
    attention_rollout,
    collect_attentions,
    model_attention,
    rollout_maps,
    token_grid,
    token_map,
)
from .distance import (
    attention_distance,
    mean_attention_distance,
    token_centers,
    token_distances,
    uniform_attention_distance,
)
from .filters import filter_principal_components, model_filter_components, patch_embedding_filters
from .position import (
    model_position_embedding_similarity,
    position_embedding_similarity,
    position_embedding_table,
    position_similarity_summary,
)
from .report import analyze_images, find_images


__all__ = [
    "analyze_images",
    "attention_distance",
    "attention_maps",
    "attention_rollout",
    "collect_attentions",
    "filter_principal_components",
    "find_images",
    "mean_attention_distance",
    "model_attention",
    "model_filter_components",
    "model_position_embedding_similarity",
    "patch_embedding_filters",
    "position_embedding_similarity",
    "position_embedding_table",
    "position_similarity_summary",
    "rollout_maps",
    "token_centers",
    "token_distances",
    "token_grid",
    "token_map",
    "uniform_attention_distance",
]
