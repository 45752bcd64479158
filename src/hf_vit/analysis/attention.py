"""Attention maps and attention rollout (ViT paper, section 4.5 and Fig. 6 / 14; Abnar & Zuidema, 2020).

Everything here works on the weights a model returns for `output_attentions=True`: hf_vit computes them explicitly
for that call whatever `attn_implementation` the model was loaded with, so no backend is switched and no hook is
installed.
"""

import math
from collections.abc import Sequence

import torch


HEAD_FUSIONS = ("mean", "max", "min")


def _base_model(model):
    """The bare encoder (`ViTModel`) of any hf_vit model (a head model returns its `.vit`)."""
    return getattr(model, "base_model", model)


def token_grid(config, pixel_size: Sequence[int], num_patch_tokens: int | None = None) -> tuple[int, int]:
    """
    Patch grid `(rows, cols)` of an input of `pixel_size` `(height, width)`.

    One token stands for `config.token_pixel_size` input pixels (the patch for a plain ViT, the patch on the CNN
    feature map for a hybrid). When `num_patch_tokens` is given, the grid is checked against it.
    """
    token_h, token_w = config.token_pixel_size
    height, width = pixel_size
    grid = (math.ceil(height / token_h), math.ceil(width / token_w))
    if num_patch_tokens is not None and grid[0] * grid[1] != num_patch_tokens:
        config_grid = tuple(config.grid_size)
        if config_grid[0] * config_grid[1] == num_patch_tokens:
            return config_grid
        raise ValueError(
            f"Cannot place {num_patch_tokens} patch tokens on a grid: an input of {height}x{width} pixels with "
            f"tokens of {token_h}x{token_w} pixels gives {grid[0]}x{grid[1]}."
        )
    return grid


@torch.no_grad()
def collect_attentions(model, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
    """
    Attention weights of every block for a batch: (B, C, H, W) -> (B, L, heads, T, T), float32 on the CPU.

    Uses `output_attentions=True`, which returns the real weights under any attention backend (sdpa, flash, flex):
    hf_vit computes them explicitly for that call only. `model` is any hf_vit model; its bare encoder is run.
    """
    encoder = _base_model(model)
    parameter = next(encoder.parameters())
    pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
    outputs = encoder(
        pixel_values, output_attentions=True, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True
    )
    attentions = outputs.attentions
    if not attentions or any(a is None or a.numel() == 0 for a in attentions):
        raise ValueError(
            f"{type(model).__name__} returned no attention weights for `output_attentions=True`; the analysis needs "
            "a model that returns them under its attention backend (every hf_vit model does)."
        )
    return torch.stack([a.float().cpu() for a in attentions], dim=1)  # (B, L, heads, T, T)


def _check_attentions(attentions: torch.Tensor) -> torch.Tensor:
    if not isinstance(attentions, torch.Tensor):
        attentions = torch.as_tensor(attentions)
    if attentions.ndim != 5 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(
            "`attentions` must have shape (batch, layers, heads, tokens, tokens), got "
            f"{tuple(attentions.shape)}."
        )
    return attentions


def attention_rollout(attentions: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """
    Attention rollout: (B, L, heads, T, T) -> (B, T, T), how much each output token draws on each input token.

    Per layer the heads are fused (averaged, as in the paper), the identity is added for the residual connection,
    the rows are renormalised to sum to 1, and the layers are multiplied from the first to the last:
    `R = Â_L ... Â_2 Â_1`. Row i of R is the mix of input tokens that reaches output token i.

    `head_fusion`: `"mean"` (Abnar & Zuidema, the paper); `"max"` and `"min"` are common alternatives.
    """
    attentions = _check_attentions(attentions).double()
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"`head_fusion` must be one of {list(HEAD_FUSIONS)}, got {head_fusion!r}.")
    if head_fusion == "mean":
        fused = attentions.mean(dim=2)  # (B, L, T, T)
    elif head_fusion == "max":
        fused = attentions.amax(dim=2)
    else:
        fused = attentions.amin(dim=2)
    tokens = fused.shape[-1]
    fused = fused + torch.eye(tokens, dtype=fused.dtype)  # the residual stream carries each token on
    fused = fused / fused.sum(dim=-1, keepdim=True)
    rollout = torch.eye(tokens, dtype=fused.dtype).expand(fused.shape[0], tokens, tokens)
    for layer in range(fused.shape[1]):
        rollout = fused[:, layer] @ rollout  # (B, T, T): later layers act on what earlier ones produced
    return rollout.float()


def token_map(
    matrix: torch.Tensor, grid: Sequence[int], num_prefix_tokens: int, use_class_token: bool | None = None
) -> torch.Tensor:
    """
    What the model looks at, on the patch grid: (..., T, T) -> (..., rows, cols).

    With a class token, its row (query 0) over the patch columns; without one, the mean over the patch query rows.
    Works for a rollout `(B, T, T)` and for raw attention `(B, L, heads, T, T)` alike. The prefix columns (the
    class token's) are dropped, so a row no longer sums to 1 when the class token drew attention.
    """
    rows, cols = grid
    tokens = matrix.shape[-1]
    if tokens != num_prefix_tokens + rows * cols:
        raise ValueError(
            f"A {tokens}-token attention matrix does not fit {num_prefix_tokens} prefix token(s) plus a "
            f"{rows}x{cols} patch grid."
        )
    if use_class_token is None:
        use_class_token = num_prefix_tokens > 0
    if use_class_token:
        if num_prefix_tokens < 1:
            raise ValueError("`use_class_token=True` needs `num_prefix_tokens >= 1` (the class token is token 0).")
        values = matrix[..., 0, num_prefix_tokens:]
    else:
        values = matrix[..., num_prefix_tokens:, num_prefix_tokens:].mean(dim=-2)
    return values.reshape(*values.shape[:-1], rows, cols)


def attention_maps(
    attentions: torch.Tensor, grid: Sequence[int], num_prefix_tokens: int, use_class_token: bool | None = None
) -> torch.Tensor:
    """Raw per-layer, per-head maps: (B, L, heads, T, T) -> (B, L, heads, rows, cols) (see `token_map`)."""
    return token_map(_check_attentions(attentions), grid, num_prefix_tokens, use_class_token)


def rollout_maps(
    attentions: torch.Tensor,
    grid: Sequence[int],
    num_prefix_tokens: int,
    use_class_token: bool | None = None,
    head_fusion: str = "mean",
) -> torch.Tensor:
    """Attention rollout on the patch grid: (B, L, heads, T, T) -> (B, rows, cols) (see `attention_rollout`)."""
    return token_map(attention_rollout(attentions, head_fusion), grid, num_prefix_tokens, use_class_token)


def model_attention(model, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
    """
    Attention of a model on a batch together with what is needed to read it:
    `(attentions (B, L, heads, T, T), grid (rows, cols), num_prefix_tokens, use_class_token)`.
    """
    config = model.config
    attentions = collect_attentions(model, pixel_values, interpolate_pos_encoding)
    num_prefix_tokens = config.num_prefix_tokens
    grid = token_grid(config, pixel_values.shape[-2:], attentions.shape[-1] - num_prefix_tokens)
    return attentions, grid, num_prefix_tokens, bool(config.use_class_token)


__all__ = [
    "HEAD_FUSIONS",
    "attention_maps",
    "attention_rollout",
    "collect_attentions",
    "model_attention",
    "rollout_maps",
    "token_grid",
    "token_map",
]
