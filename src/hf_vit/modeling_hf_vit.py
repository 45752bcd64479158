"""The Vision Transformer of "An Image is Worth 16x16 Words" (ViT paper, section 3.1, appendix B.1), with the hybrid
(section 3.1: ResNet features as the tokens, `modeling_resnetv2.py`) and the appendix's position-embedding and pooling
options (D.3, D.4) in the same classes."""

import functools
import math
import os
import shutil
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
)
from transformers.utils import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_hf_vit import GRID_BOUND_POSITION_TYPES, MPP_TARGETS, ViTConfig, as_pair
from .modeling_resnetv2 import ResNetV2Backbone
from .transformers_vit_format import (
    MAE_FIXED_TABLES,
    SUPPORTED_MODEL_TYPES,
    check_supported_model_type,
    checkpoint_architectures,
    checkpoint_model_type,
    load_transformers_vit,
)


logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Position-embedding resampling: one function for the forward flag, the persistent resize and load-time resizing.


def resample_position_embeddings(
    position_embeddings: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    mode: str = "bilinear",
    align_corners: bool = True,
    antialias: bool = False,
) -> torch.Tensor:
    """
    Resample learned position embeddings `(1, prefix + old_rows * old_cols, D)` to another patch grid.

    The prefix rows (the class and distillation tokens') are kept as they are; the patch rows are interpolated on the
    2D grid. The default (bilinear, corners aligned) is the reference code's `scipy.ndimage.zoom(order=1)`; timm
    resamples with `align_corners=False` (bicubic with `antialias=True` by default); transformers' DeiT, ViT-MAE and
    DINOv2 with bicubic, `align_corners=False`, DINOv2 with registers with antialias on top. Computed in float32
    whatever the parameter's dtype.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return position_embeddings
    prefix, grid = position_embeddings[:, :num_prefix_tokens], position_embeddings[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(
            f"Position embeddings hold {grid.shape[1]} patch positions, which is not the grid "
            f"{old_grid[0]}x{old_grid[1]} they are said to come from."
        )
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, D, rows, cols)
    # align_corners has no meaning for a 1-pixel side; torch ignores it there, and so do we.
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=align_corners, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(position_embeddings.dtype)
    return torch.cat([prefix, grid], dim=1)


def _as_count(num_items_in_batch, device) -> torch.Tensor | int:
    """`Trainer`'s `num_items_in_batch` (an int or a 0-d tensor) on the loss's device, refused when not positive."""
    if torch.is_tensor(num_items_in_batch):
        return num_items_in_batch.to(device)
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, int) or num_items_in_batch <= 0:
        raise ValueError(f"`num_items_in_batch` must be a positive count, got {num_items_in_batch!r}.")
    return num_items_in_batch


def _check_num_labels(num_labels) -> None:
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels <= 0:
        raise ValueError(f"`num_labels` must be a positive integer, got {num_labels!r}.")


# --------------------------------------------------------------------------------------------------------------------
# Initialisation, declared by each layer: the reference (Flax) code's schemes.

INIT_SCHEMES = ("xavier_uniform", "xavier_uniform_fused_qkv", "mlp", "lecun_normal", "zeros")


def _declare_init(module: nn.Module, scheme: str) -> nn.Module:
    """Tag a layer with the scheme `_init_weights` gives it (see `ViTPreTrainedModel._init_weights`)."""
    module.init_scheme = scheme
    return module


def _lecun_normal_(tensor: torch.Tensor) -> torch.Tensor:
    # Flax's lecun_normal: truncated at two standard deviations, variance 1/fan_in after truncation.
    fan_in = tensor[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


# --------------------------------------------------------------------------------------------------------------------
# Embeddings


def random_patch_order(batch: int, num_patches: int, device=None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """
    (B, N) patch indices in a random order per image: its first k columns are a uniformly random subset of k patches.
    Drawn from `noise` (B, N) when given (the argsort of it, the convention of transformers' ViTMAE: equal noise gives
    an equal order, so a caller can fix the subset), else from torch's global generator.
    """
    if noise is None:
        noise = torch.rand(batch, num_patches, device=device)
    elif tuple(noise.shape) != (batch, num_patches):
        raise ValueError(f"`noise` must have shape (batch, patches) = ({batch}, {num_patches}), got {tuple(noise.shape)}.")
    return noise.argsort(dim=1)


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens at (B, k) indices -> (B, k, D)."""
    return tokens.gather(1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def drop_patch_tokens(tokens: torch.Tensor, num_prefix_tokens: int, rate: float) -> torch.Tensor:
    """
    Token dropping: (B, prefix + N, D) -> (B, prefix + K, D) with K = N - round(rate * N) (at least one) of each
    image's patch tokens kept at random and the prefix (class, distillation, register tokens) always kept.
    """
    prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
    batch, num_patches = patches.shape[:2]
    keep = max(1, num_patches - round(rate * num_patches))
    kept = gather_tokens(patches, random_patch_order(batch, num_patches, tokens.device)[:, :keep])
    return torch.cat([prefix, kept], dim=1)


def sincos_2d_position_embeddings(grid: tuple[int, int], dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """
    Fixed 2D sin-cos position embeddings, (1, rows * cols, dim), as big_vision's `posemb_sincos_2d` (MoCo v3): per
    patch, concat(sin(x * w), cos(x * w), sin(y * w), cos(y * w)) with x the column, y the row and dim/4 frequencies
    w_k = temperature ** (-k / (dim/4 - 1)).
    """
    rows, cols = grid
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / (quarter - 1))  # (dim/4,)
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )  # (rows, cols) each
    x = x.reshape(-1, 1) * omega  # (N, dim/4)
    y = y.reshape(-1, 1) * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (N, dim)
    return table.float().unsqueeze(0)


def mae_sincos_2d_position_embeddings(grid: tuple[int, int], dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """
    MAE's fixed 2D sin-cos position embeddings, (1, rows * cols, dim): MAE's `get_2d_sincos_pos_embed` (He et al.,
    "Masked Autoencoders Are Scalable Vision Learners"; transformers' ViT-MAE), per patch concat(sin(x * w),
    cos(x * w), sin(y * w), cos(y * w)) with x the column, y the row and dim/4 frequencies
    w_k = temperature ** (-k / (dim/4)). It differs from big_vision's table (`sincos_2d_position_embeddings`) only in
    that denominator. MAE gives the class token a zero row, i.e. no position embedding: the caller adds this table to
    the patch tokens only.
    """
    rows, cols = grid
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )  # (rows, cols) each
    x = x.reshape(-1, 1) * omega  # (N, dim/4)
    y = y.reshape(-1, 1) * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (N, dim)
    return table.float().unsqueeze(0)


class ViTPatchEmbeddings(nn.Module):
    """(B, C, H, W) -> (B, N, D) patch tokens: a P x P convolution with stride P (the paper's E), applied to the image,
    or, for a hybrid, to the feature map of the ResNet in `backbone` (section 3.1)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_size = config.patch_hw
        self.token_size = config.token_pixel_size  # patch size on the image: patch x the ResNet's stride
        if config.is_hybrid:
            self.backbone = ResNetV2Backbone(config)
            in_channels = config.backbone_out_channels
        else:
            self.backbone = None
            in_channels = config.num_channels
        self.projection = _declare_init(
            nn.Conv2d(in_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size),
            "lecun_normal",
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"`pixel_values` must have shape (batch, channels, height, width), got shape {tuple(pixel_values.shape)}."
            )
        channels, height, width = pixel_values.shape[1:]
        if channels != self.num_channels:
            raise ValueError(
                f"`pixel_values` has {channels} channels but the model's `num_channels` is {self.num_channels}."
            )
        th, tw = self.token_size
        if height % th or width % tw:
            detail = ""
            if self.backbone is not None:
                detail = (
                    f" (the hybrid's ResNet stride {th // self.patch_size[0]} x the patch size "
                    f"{self.patch_size[0]}x{self.patch_size[1]} on its feature map)"
                )
            raise ValueError(
                f"Input size {height}x{width} is not divisible by the patch size {th}x{tw}{detail}; resize or crop the "
                "image to a multiple of it."
            )
        x = pixel_values if self.backbone is None else self.backbone(pixel_values)  # (B, C', H/s, W/s)
        x = self.projection(x)  # (B, D, rows, cols)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D)


class ViTEmbeddings(nn.Module):
    """
    (B, C, H, W) -> (B, prefix + N, D): patch tokens, [class token], [distillation token] + position embeddings,
    [register tokens], dropout. The prefix is `config.num_prefix_tokens` long, in that order.

    `config.position_embedding_type` picks the absolute position information (appendix D.4): "learned_1d" (one table
    over the class and distillation tokens and the patches, the paper's and DeiT's), "learned_2d" (a column table
    and a row table of width D/2, concatenated per patch), "sincos_2d" (fixed), or none at all ("none", and
    "relative", which acts inside the attention). Except for "learned_1d", the class token gets no position
    embedding (a learned vector plus a learned constant is just another learned vector; big_vision prepends it after
    adding the position embeddings too). Register tokens never get one: they are inserted after the class (and
    distillation) token once the position embeddings are added, as in DINOv2 with registers and timm.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.position_embedding_type = config.position_embedding_type
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.grid_size = tuple(config.grid_size)
        self.num_prefix_tokens = config.num_prefix_tokens
        self.num_prefix_positions = config.num_prefix_positions  # rows of the "learned_1d" table before the patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_class_token else None
        self.distillation_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_distillation_token else None
        )
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
            if config.num_register_tokens
            else None
        )
        rows, cols = self.grid_size
        if self.position_embedding_type == "learned_1d":
            self.position_embeddings = nn.Parameter(
                torch.zeros(1, self.num_prefix_positions + config.num_patches, config.hidden_size)
            )
        elif self.position_embedding_type == "learned_2d":
            # The paper's X and Y embeddings: a patch at (row, col) gets concat(X[col], Y[row]).
            half = config.hidden_size // 2
            self.column_position_embeddings = nn.Parameter(torch.zeros(1, cols, half))
            self.row_position_embeddings = nn.Parameter(torch.zeros(1, rows, half))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def embed_patches(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> (B, N, D) patch embeddings before any position information, and the patch grid."""
        return self.patch_embeddings(pixel_values)

    def _resample(self, table: torch.Tensor, old_grid, new_grid, num_prefix_tokens: int) -> torch.Tensor:
        return resample_position_embeddings(
            table,
            old_grid,
            new_grid,
            num_prefix_tokens=num_prefix_tokens,
            mode=self.config.position_embedding_interpolation,
            align_corners=self.config.position_embedding_align_corners,
            antialias=self.config.position_embedding_antialias,
        )

    def check_grid(self, grid: tuple[int, int], interpolate_pos_encoding: bool) -> None:
        """Raise the resolution error when the position information is tied to another grid and the flag is off."""
        if tuple(grid) == tuple(self.grid_size) or interpolate_pos_encoding:
            return
        if self.position_embedding_type not in GRID_BOUND_POSITION_TYPES:
            return  # "none" and "sincos_2d" work on any grid
        th, tw = self.patch_embeddings.token_size
        raise ValueError(
            f"Input image size ({grid[0] * th}x{grid[1] * tw}) doesn't match the model's image_size "
            f"({self.grid_size[0] * th}x{self.grid_size[1] * tw}). Pass `interpolate_pos_encoding=True` to "
            "resample the position embeddings for this call, or call "
            f"`model.resize_position_embeddings(({grid[0] * th}, {grid[1] * tw}))` to change the model's "
            "resolution for good (it is then saved with the model)."
        )

    def position_embeddings_for(self, grid: tuple[int, int], interpolate_pos_encoding: bool) -> torch.Tensor | None:
        """
        The absolute position embeddings for a patch grid: (1, positions + rows * cols, D) for "learned_1d" (the
        class and distillation tokens' rows first), (1, rows * cols, D) for "learned_2d" and "sincos_2d", None for
        "none" and "relative".
        """
        grid = tuple(grid)
        self.check_grid(grid, interpolate_pos_encoding)
        kind = self.position_embedding_type
        if kind == "learned_1d":
            if grid == tuple(self.grid_size):
                return self.position_embeddings
            return self._resample(self.position_embeddings, self.grid_size, grid, self.num_prefix_positions)
        if kind == "learned_2d":
            rows, cols = grid
            columns = self._resample(self.column_position_embeddings, (1, self.grid_size[1]), (1, cols), 0)
            row_table = self._resample(self.row_position_embeddings, (1, self.grid_size[0]), (1, rows), 0)
            half = columns.shape[-1]
            columns = columns.view(1, 1, cols, half).expand(1, rows, cols, half)
            row_table = row_table.view(1, rows, 1, half).expand(1, rows, cols, half)
            return torch.cat([columns, row_table], dim=-1).reshape(1, rows * cols, 2 * half)  # (1, N, D)
        if kind == "sincos_2d":
            if self.config.position_embedding_sincos_style == "mae":
                table = mae_sincos_2d_position_embeddings(grid, self.config.hidden_size)
            else:
                table = sincos_2d_position_embeddings(grid, self.config.hidden_size)
            reference = self.patch_embeddings.projection.weight
            return table.to(device=reference.device, dtype=reference.dtype)
        return None

    def add_positions(
        self, patch_embeddings: torch.Tensor, grid: tuple[int, int], interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """(B, N, D) -> (B, prefix + N, D): prepend the class and distillation tokens, add position embeddings, insert
        the registers after them, dropout."""
        x = patch_embeddings
        batch = x.shape[0]
        table = self.position_embeddings_for(grid, interpolate_pos_encoding)
        if table is not None and self.position_embedding_type != "learned_1d":
            x = x + table  # patch rows only: the class token gets none (big_vision's order)
            table = None
        tokens = [t.expand(batch, -1, -1) for t in (self.cls_token, self.distillation_token) if t is not None]
        if tokens:
            x = torch.cat([*tokens, x], dim=1)  # (B, positions + N, D)
        if table is not None:
            x = x + table
        if self.register_tokens is not None:
            at = self.num_prefix_positions
            registers = self.register_tokens.expand(batch, -1, -1)
            x = torch.cat([x[:, :at], registers, x[:, at:]], dim=1)  # (B, prefix + N, D)
        return self.dropout(x)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        patches, grid = self.embed_patches(pixel_values)
        return self.add_positions(patches, grid, interpolate_pos_encoding)

    def grid_for(self, image_size) -> tuple[int, int]:
        """The token grid of an `image_size` (int or (height, width)), or a clear error when it does not divide."""
        th, tw = self.patch_embeddings.token_size
        height, width = as_pair(image_size)
        if height % th or width % tw:
            raise ValueError(
                f"`image_size` ({height}x{width}) must be divisible by the patch size ({th}x{tw} on the image)."
            )
        return (height // th, width // tw)

    @torch.no_grad()
    def resize(self, image_size) -> None:
        """Resample the position embeddings for good to `image_size` (int or (height, width))."""
        new_grid = self.grid_for(image_size)

        def replace(name, value):
            old = getattr(self, name)
            setattr(self, name, nn.Parameter(value, requires_grad=old.requires_grad))

        if self.position_embedding_type == "learned_1d":
            replace(
                "position_embeddings",
                self._resample(self.position_embeddings.data, self.grid_size, new_grid, self.num_prefix_positions),
            )
        elif self.position_embedding_type == "learned_2d":
            columns = self._resample(self.column_position_embeddings.data, (1, self.grid_size[1]), (1, new_grid[1]), 0)
            row_table = self._resample(self.row_position_embeddings.data, (1, self.grid_size[0]), (1, new_grid[0]), 0)
            replace("column_position_embeddings", columns)
            replace("row_position_embeddings", row_table)
        self.grid_size = new_grid

# --------------------------------------------------------------------------------------------------------------------
# Encoder


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax(q k^T * scaling + mask + bias) v with explicit weights. (B, H, n, d) -> (B, n, H, d), (B, H, n, N)."""
    batch, heads, num_queries, head_dim = query.shape
    length = key.shape[2]
    keys = key.reshape(batch * heads, length, head_dim).transpose(1, 2)  # (B*H, d, N)
    # The scaling never takes its own pass over the (B, H, n, N) scores: without autograd it rides on the copy that
    # lays the (strided) queries out as one batch of B*H matrices, with autograd it is the product's alpha.
    if (torch.is_grad_enabled() and query.requires_grad) or _is_tracing():
        scores = torch.baddbmm(
            query.new_zeros(()), query.reshape(batch * heads, num_queries, head_dim), keys, beta=0.0, alpha=scaling
        )
    else:
        queries = torch.empty((batch, heads, num_queries, head_dim), dtype=query.dtype, device=query.device)
        torch.mul(query, scaling, out=queries)
        scores = torch.bmm(queries.view(batch * heads, num_queries, head_dim), keys)
    scores = scores.view(batch, heads, num_queries, length)
    if attention_mask is not None:
        scores = scores + attention_mask
    if position_bias is not None:
        scores = scores + position_bias
    if scores.device.type == "cpu":
        # NOTE: torch's CPU softmax computes in float32 for bf16 / fp16 input and rounds once at the end, so an explicit
        # float32 upcast (transformers' eager) gives the same weights up to that rounding, at the cost of two more
        # passes over the (B, H, n, N) scores: the slowest part of bf16 attention on a CPU.
        weights = F.softmax(scores, dim=-1)
    else:
        weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    dropped = F.dropout(weights, p=dropout, training=module.training)
    output = torch.bmm(dropped.reshape(batch * heads, num_queries, length), value.reshape(batch * heads, length, head_dim))
    return output.view(batch, heads, num_queries, head_dim).transpose(1, 2).contiguous(), weights


def uses_matmul_attention(query: torch.Tensor, implementation: str) -> bool:
    """
    Whether the "sdpa" backend runs as explicit matmuls (`eager_attention_forward`) for this query: bf16 on a CPU.

    NOTE: torch's fused CPU attention kernel is slower in bf16 than two bf16 batched matmuls around a softmax (the
    matmuls reach the CPU's bf16 matrix throughput, the fused kernel does not); the results agree up to bf16 rounding
    (the scores are rounded to bf16 before the softmax). float32 keeps the fused kernel, which is the faster there.
    """
    return implementation == "sdpa" and query.dtype == torch.bfloat16 and query.device.type == "cpu"


# hidden_act -> oneDNN's GELU algorithm for a GELU fused into the linear layer ("none": exact, erf; "tanh": the tanh
# approximation, which "gelu_new" computes too).
ONEDNN_GELU = {"gelu": "none", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}


@functools.cache
def _onednn_bf16_linear_available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()) and hasattr(
            torch.ops.mkldnn, "_linear_pointwise"
        )
    except (AttributeError, RuntimeError):
        return False


def _is_tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    for check in ("is_compiling", "is_exporting"):
        if compiler is not None and getattr(compiler, check, None) is not None and getattr(compiler, check)():
            return True
    return torch.jit.is_tracing()


def is_plain_linear(layer: nn.Module) -> bool:
    """
    An `nn.Linear` itself, called as written: its `weight` is a tensor that may be sliced and used in place of a call.
    Not a replacement module (torch's dynamically quantized Linear, whose `weight` is a method; LoRA or 8-bit layers),
    and no hook or wrapped `forward` (Accelerate's offloading) that a direct use of the weight would skip.
    """
    return type(layer) is nn.Linear and not (
        layer._forward_hooks or layer._forward_pre_hooks or "forward" in layer.__dict__
    )


def fuses_linear(layer: nn.Module, x: torch.Tensor) -> bool:
    """
    Whether `linear(layer, x, ...)` calls oneDNN directly: bf16 inference on a CPU with oneDNN's bf16 support, on a
    plain `nn.Linear` (`is_plain_linear`), outside torch.compile / torch.export / tracing, and with no gradient to
    record.
    """
    return (
        x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and is_plain_linear(layer)
        and layer.weight.dtype == torch.bfloat16
        and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
        and _onednn_bf16_linear_available()
        and not _is_tracing()
    )


# id(weight) -> ((data_ptr, version, shape), the weight in oneDNN's blocked layout): laid out once, not at every call.
# An entry lives as long as its weight tensor (a finalizer removes it): one bf16 copy of each linear layer's weight.
# Not on the tensor itself, so that deepcopy and pickling of the model never meet the opaque oneDNN tensor.
_PACKED_WEIGHTS: dict[int, tuple] = {}


def _packed_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The weight in oneDNN's blocked layout for bf16 GEMMs of about `rows` rows (cached; see `_onednn_linear`)."""
    try:
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
    except RuntimeError:  # an inference-mode tensor has no version counter to tell a stale layout from a fresh one
        return weight
    entry = _PACKED_WEIGHTS.get(id(weight))
    if entry is not None and entry[0] == key:
        return entry[1]
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
    if entry is None:
        weakref.finalize(weight, _PACKED_WEIGHTS.pop, id(weight), None)
    _PACKED_WEIGHTS[id(weight)] = (key, packed)
    return packed


def forget_packed_weight(weight: torch.Tensor) -> None:
    """Drop the cached oneDNN layout of `weight` (the next packed call lays it out again)."""
    _PACKED_WEIGHTS.pop(id(weight), None)


def _onednn_linear(x, weight, bias, gelu: str | None = None, pack: bool = False) -> torch.Tensor:
    """
    oneDNN's linear layer: x @ weight^T + bias, then the GELU when `gelu` names its algorithm, rounded once to bf16.
    With `pack`, the weight is used in oneDNN's blocked layout, made once and cached (`_packed_weight`); with the
    plain layout oneDNN reorders the weight at every call, a full pass over it. The sums are the same.
    """
    if pack:
        weight = _packed_weight(weight, x.numel() // x.shape[-1])
    # oneDNN reads the bias as a dense vector: a strided one gives wrong sums, so make it dense (a no-op normally).
    bias = None if bias is None else bias.contiguous()
    if gelu is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], gelu)


def linear(
    layer: nn.Module, x: torch.Tensor, activation: Callable | None = None, onednn_gelu: str | None = None
) -> torch.Tensor:
    """
    `activation(layer(x))` (or `layer(x)`), (..., in) -> (..., out).

    For bf16 inference on a CPU (`fuses_linear`) it is one oneDNN call with the bias, and the GELU when
    `onednn_gelu` names its algorithm (`ONEDNN_GELU`), computed on the float32 accumulator before the single rounding
    to bf16. NOTE: `nn.Linear` on a CPU adds the bias in separate passes over the output (a broadcast copy, then a
    GEMM that accumulates into it) and the GELU in another; at bf16 matrix speed those memory-bound passes are a
    large part of the layer's time (bench/README.md). The results agree up to bf16 rounding. Every other case calls
    the module as written.

    A layer with `pack_onednn_weight = True` (set by `hf_vit.export.pack_linear_weights`) keeps its weight in
    oneDNN's blocked layout between calls. NOTE: opt-in, because the cached layout follows the weight through its
    version counter, which writes through `weight.data` do not move.
    """
    if fuses_linear(layer, x):
        fused = onednn_gelu is not None and activation is not None
        pack = getattr(layer, "pack_onednn_weight", False)
        out = _onednn_linear(x, layer.weight, layer.bias, onednn_gelu if fused else None, pack=pack)
        return out if fused or activation is None else activation(out)
    out = layer(x)
    return out if activation is None else activation(out)


def linear_rows(layer: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """`layer(x)[..., start:stop]`, computing only those output features when the layer is a plain `nn.Linear`."""
    if not is_plain_linear(layer):
        return layer(x)[..., start:stop]
    weight = layer.weight[start:stop]
    bias = None if layer.bias is None else layer.bias[start:stop]
    if fuses_linear(layer, x):
        return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def _relative_index(num_queries: int, num_patches: int, num_prefix_tokens: int, device) -> torch.Tensor:
    """
    (n, prefix + N) indices into the relative table [offsets -(N-1)..N-1 | prefix->patch | patch->prefix |
    prefix->prefix] for the first n query tokens against every key token.
    """
    tokens = num_prefix_tokens + num_patches
    q = torch.arange(num_queries, device=device).view(-1, 1)
    k = torch.arange(tokens, device=device).view(1, -1)
    index = q - k + (num_patches - 1)  # patch -> patch: the 1-D offset in raster order
    if num_prefix_tokens:
        q_prefix, k_prefix = q < num_prefix_tokens, k < num_prefix_tokens
        offsets = 2 * num_patches - 1
        index = torch.where(q_prefix & ~k_prefix, offsets, index)
        index = torch.where(~q_prefix & k_prefix, offsets + 1, index)
        index = torch.where(q_prefix & k_prefix, offsets + 2, index)
    return index


class ViTSelfAttention(nn.Module):
    """
    (B, N, D) -> (B, N, D) multi-head self-attention with a fused qkv projection, through any attention backend.

    With `position_embedding_type="relative"` (appendix D.4, "1-dimensional relative attention"): every offset
    i - j between two patch positions in the sequence has a learned D-wide embedding, split into heads like a key;
    the query against these keys gives a second set of logits that is added to the content logits before the softmax.
    The class token's pairs (class->patch, patch->class, class->class) have one learned embedding each.
    """

    def __init__(self, config: ViTConfig, layer_idx: int = 0, use_relative_positions: bool | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv = _declare_init(
            nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias), "xavier_uniform_fused_qkv"
        )
        self.o_proj = _declare_init(nn.Linear(config.hidden_size, config.hidden_size), "xavier_uniform")
        if use_relative_positions is None:
            use_relative_positions = config.position_embedding_type == "relative"
        self.num_prefix_tokens = config.num_prefix_tokens
        self.num_patches = config.num_patches
        if use_relative_positions:
            offsets = 2 * config.num_patches - 1
            self.relative_position_embeddings = nn.Parameter(torch.zeros(offsets, config.hidden_size))
            self.prefix_relative_embeddings = (
                nn.Parameter(torch.zeros(3, config.hidden_size)) if self.num_prefix_tokens else None
            )
        else:
            self.relative_position_embeddings = None
            self.prefix_relative_embeddings = None

    # ---- relative positions ----------------------------------------------------------------------------------------

    def _relative_table(self, num_patches: int) -> torch.Tensor:
        """(2N - 1 [+ 3], D): the offset table for N patches (resampled when N differs from the model's)."""
        table = self.relative_position_embeddings
        if num_patches != self.num_patches:
            table = resample_1d_table(table, 2 * num_patches - 1, self.config)
        if self.prefix_relative_embeddings is not None:
            table = torch.cat([table, self.prefix_relative_embeddings], dim=0)
        return table

    def relative_position_bias(self, query: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """(B, H, n, d) queries -> (B, H, n, T) logits of the query against the relative embeddings of each offset."""
        batch, heads, num_queries, head_dim = query.shape
        num_patches = num_tokens - self.num_prefix_tokens
        table = self._relative_table(num_patches).to(query.dtype)
        table = table.view(-1, heads, head_dim)  # (L, H, d): each offset's embedding split into heads, like a key
        logits = torch.einsum("bhnd,lhd->bhnl", query, table) * self.scaling  # (B, H, n, L)
        index = _relative_index(num_queries, num_patches, self.num_prefix_tokens, query.device)  # (n, T)
        return logits.gather(-1, index.expand(batch, heads, num_queries, num_tokens))  # (B, H, n, T)

    @torch.no_grad()
    def resize_relative_positions(self, num_patches: int) -> None:
        """Resample the offset table for good to N patches (the persistent resize)."""
        if self.relative_position_embeddings is None or num_patches == self.num_patches:
            self.num_patches = num_patches
            return
        old = self.relative_position_embeddings
        table = resample_1d_table(old.data, 2 * num_patches - 1, self.config)
        self.relative_position_embeddings = nn.Parameter(table, requires_grad=old.requires_grad)
        self.num_patches = num_patches

    # ---- forward ---------------------------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        num_queries: int | None = None,
        query_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        `num_queries`: attend from the first n tokens only (keys and values stay all N); output (B, n, D).
        `query_states` (B, n, D): attend from these instead (cross-attention, the MAP head's probe); output (B, n, D).
        """
        batch, length, _ = hidden_states.shape
        if num_queries is None and query_states is None:
            qkv = linear(self.qkv, hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
            # Unbound along the q/k/v axis of the projection's own layout, then transposed: in training, autograd
            # stacks the three gradients straight into that layout (unbinding a permuted view stacks them in the
            # permuted layout first, then copies them once more into the projection's).
            query, key, value = (t.transpose(1, 2) for t in qkv.unbind(2))  # each (B, H, N, d)
            num_queries = length
        else:
            # Output features [0, D) of the fused projection are q, [D, 3D) are k and v: q for the queries only.
            width = self.config.hidden_size
            source = hidden_states[:, :num_queries] if query_states is None else query_states
            num_queries = source.shape[1]
            query = linear_rows(self.qkv, source, 0, width)
            query = query.reshape(source.shape[0], num_queries, self.num_heads, self.head_dim).transpose(1, 2)  # (B,H,n,d)
            kv = linear_rows(self.qkv, hidden_states, width, 3 * width)
            key, value = kv.reshape(batch, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            if query.shape[0] != batch:
                query = query.expand(batch, -1, -1, -1)

        position_bias = None
        if self.relative_position_embeddings is not None:
            position_bias = self.relative_position_bias(query, length)

        implementation = self.config._attn_implementation or "sdpa"
        if position_bias is not None and "flash" in implementation:
            raise ValueError(
                f"`position_embedding_type='relative'` adds a bias to the attention logits, which "
                f"attn_implementation={implementation!r} cannot take (flash attention has no additive bias). Use "
                "'sdpa' (the default), 'eager' or 'flex_attention', or another `position_embedding_type`."
            )
        if output_attentions or implementation == "eager" or uses_matmul_attention(query, implementation):
            # Whatever the backend, asking for the weights computes them (transformers' own ViT returns nothing
            # under sdpa); the output is the same attention, computed explicitly.
            attention_interface: Callable = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        extra = {} if position_bias is None else {"position_bias": position_bias}
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
            **extra,
        )
        output = linear(self.o_proj, output.reshape(batch, num_queries, -1))  # (B, n, H, d) -> (B, n, D)
        return output, (weights if output_attentions else None)


def resample_1d_table(table: torch.Tensor, length: int, config: ViTConfig) -> torch.Tensor:
    """(L, D) -> (length, D): a table indexed by a 1-D position resampled like the position embeddings (a 1 x L
    grid through `resample_position_embeddings`), e.g. the relative attention's offsets for a longer sequence."""
    old = table.shape[0]
    resampled = resample_position_embeddings(
        table.unsqueeze(0),
        (1, old),
        (1, length),
        num_prefix_tokens=0,
        mode=config.position_embedding_interpolation,
        align_corners=config.position_embedding_align_corners,
        antialias=config.position_embedding_antialias,
    )
    return resampled.squeeze(0)


class ViTMLP(nn.Module):
    """
    (B, N, D) -> (B, N, D): dense, activation, dropout, dense (the block's trailing dropout is the layer's).

    With `config.mlp_type="gated"`, `fc1` holds two projections of width I = intermediate_size, the gate (rows
    [0, I)) and the value (rows [I, 2I)), and the hidden units are activation(gate) * value: SwiGLU with
    `hidden_act="silu"` (DINOv2-g; the packed layout of DINOv2's `w12` and timm's `SwiGLUPacked`).
    """

    def __init__(self, config: ViTConfig, dropout: float | None = None):
        super().__init__()
        self.gated = config.mlp_type == "gated"
        width = 2 * config.intermediate_size if self.gated else config.intermediate_size
        self.fc1 = _declare_init(nn.Linear(config.hidden_size, width), "mlp")
        self.activation = ACT2FN[config.hidden_act]
        self.onednn_gelu = ONEDNN_GELU.get(config.hidden_act)  # the GELU fused into fc1 in bf16 on a CPU (`linear`)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.fc2 = _declare_init(nn.Linear(config.intermediate_size, config.hidden_size), "mlp")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.gated:
            hidden = linear(self.fc1, hidden_states)
            gate, value = hidden.chunk(2, dim=-1)  # (B, N, I) each
            hidden = self.activation(gate) * value
        else:
            hidden = linear(self.fc1, hidden_states, self.activation, self.onednn_gelu)
        return linear(self.fc2, self.dropout(hidden))


class ViTLayerScale(nn.Module):
    """LayerScale (CaiT, DINOv2): (B, N, D) -> (B, N, D), x * gamma with one learned factor per channel."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.init_value = config.layer_scale_init_value
        self.gamma = nn.Parameter(torch.full((config.hidden_size,), float(config.layer_scale_init_value)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of samples and rescale the rest."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class ViTLayer(GradientCheckpointingLayer):
    """One pre-LN block: x + Dropout(MSA(LN(x))), then x + Dropout(MLP(LN(x))). (B, N, D) -> (B, N, D).
    With stochastic depth, each residual branch is also dropped per sample (`drop_path`); with
    `config.layer_scale_init_value`, each branch's output is scaled per channel first (LayerScale)."""

    def __init__(self, config: ViTConfig, layer_idx: int = 0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTSelfAttention(config, layer_idx)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        use_scale = config.layer_scale_init_value is not None
        self.layer_scale_attention = ViTLayerScale(config) if use_scale else nn.Identity()
        self.layer_scale_mlp = ViTLayerScale(config) if use_scale else nn.Identity()
        # Linear in depth, 0 at the first block (timm's and DeiT's schedule).
        last = max(config.num_hidden_layers - 1, 1)
        self.drop_path = DropPath(config.drop_path_rate * layer_idx / last)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, num_queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`num_queries`: compute the block's output for the first n tokens only, (B, N, D) -> (B, n, D)."""
        attention_output, weights = self.attention(self.layernorm_before(hidden_states), output_attentions, num_queries)
        if num_queries is not None:
            hidden_states = hidden_states[:, :num_queries]
        attention_output = self.layer_scale_attention(self.dropout(attention_output))
        hidden_states = hidden_states + self.drop_path(attention_output)
        mlp_output = self.layer_scale_mlp(self.dropout(self.mlp(self.layernorm_after(hidden_states))))
        hidden_states = hidden_states + self.drop_path(mlp_output)
        return hidden_states, weights


class ViTEncoder(nn.Module):
    """L blocks; collects the hidden states (input + every block) and attention weights on request."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList([ViTLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        last_layer_queries: int | None = None,
    ) -> BaseModelOutput:
        """`last_layer_queries`: the last block computes outputs for the first n tokens only (see `ViTModel`)."""
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            num_queries = last_layer_queries if index == last else None
            hidden_states, weights = layer(hidden_states, output_attentions=output_attentions, num_queries=num_queries)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


# --------------------------------------------------------------------------------------------------------------------
# Pooling and heads


class ViTMAPHead(nn.Module):
    """
    big_vision's MAPHead, (B, N, D) -> (B, D): a learned probe attends over the tokens (multi-head, its own fused
    q/kv and output projections), then x + MLP(LN(x)). No dropout, as in big_vision.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = ViTSelfAttention(config, use_relative_positions=False)
        self.attention.attention_dropout = 0.0
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config, dropout=0.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        x, _ = self.attention(tokens, query_states=probe)  # (B, 1, D)
        x = x + self.mlp(self.layernorm(x))
        return x[:, 0]


class ViTPooler(nn.Module):
    """(B, prefix + N, D) after the final LayerNorm -> (B, D') pooled representation.

    `pooling` chooses the vector: "cls" (the class token), or, over the patch tokens only (never the class,
    distillation or register tokens), "gap" (mean), "max" (channel-wise max), "gem" / "ggem" (generalized mean
    (mean(clamp(x, eps)^p))^(1/p) with one learnable p, or one per group of D / heads channels as in GGeM), "map"
    (big_vision's MAPHead); "cls_and_gap" concatenates the class token and the patch mean (DINOv2's classifier input,
    2D wide). With `layer_norm_after_pooling` the tokens arrive un-normalised and the pooled vector gets this module's
    own LayerNorm (timm's `fc_norm`, MAE's fine-tuning). With `representation_size` set, a tanh "pre-logits" layer
    follows, as in the paper's pre-training head.
    """

    # NOTE: GeM assumes non-negative features (after a ReLU in CNNs); tokens after the final LayerNorm are not, so
    # they are clamped at this eps first, as GeM and GGeM do.
    gem_eps = 1e-6

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.pooling = config.pooling
        self.num_prefix_tokens = config.num_prefix_tokens
        self.gem_p_init = config.gem_p_init
        if self.pooling in ("gem", "ggem"):
            groups = 1 if self.pooling == "gem" else config.num_attention_heads
            self.gem_p = nn.Parameter(torch.full((groups,), float(config.gem_p_init)))
        self.map_head = ViTMAPHead(config) if self.pooling == "map" else None
        self.layernorm = (
            nn.LayerNorm(config.pooled_size, eps=config.layer_norm_eps) if config.layer_norm_after_pooling else None
        )
        if config.representation_size is not None:
            self.dense = _declare_init(nn.Linear(config.pooled_size, config.representation_size), "lecun_normal")
            self.activation = nn.Tanh()
        else:
            self.dense = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden_states[:, 0]
        else:
            patches = hidden_states[:, self.num_prefix_tokens :]  # (B, N, D)
            if self.pooling == "cls_and_gap":
                pooled = torch.cat([hidden_states[:, 0], patches.mean(dim=1)], dim=-1)  # (B, 2D)
            elif self.pooling == "gap":
                pooled = patches.mean(dim=1)  # after the final LayerNorm, as the reference (timm: before its norm)
            elif self.pooling == "max":
                pooled = patches.amax(dim=1)
            elif self.pooling in ("gem", "ggem"):
                channels = patches.shape[-1]
                p = self.gem_p.repeat_interleave(channels // self.gem_p.numel()).to(patches.dtype)  # (D,)
                pooled = patches.clamp(min=self.gem_eps).pow(p).mean(dim=1).pow(1.0 / p)
            else:  # "map"
                pooled = self.map_head(patches)
        if self.layernorm is not None:
            pooled = self.layernorm(pooled)
        if self.dense is not None:
            pooled = self.activation(self.dense(pooled))
        return pooled


# Why a keyword that transformers' image models take is refused by an hf_vit class (`_refuse_unused_keywords`).
_MASKED_IMAGE_MODELING = (
    "masked image modelling is ViTForMaskedPatchPrediction (the paper's objective, AutoModelForMaskedImageModeling: "
    "`bool_masked_pos` or a corruption plan) or ViTForMaskedAutoencoding (MAE, AutoModelForPreTraining: "
    "`bool_masked_pos` or `noise`)"
)
_KEYWORD_HINTS = {
    "head_mask": (
        "hf_vit does not mask attention heads (transformers 5 removed `head_mask` from its ViT too); to switch a head "
        "off, zero its columns of the layer's `attention.o_proj.weight`"
    ),
    "attention_mask": "every token of an image attends to every other (an image has no padding), so there is no mask",
    "bool_masked_pos": "{name} has no [mask] embedding; " + _MASKED_IMAGE_MODELING,
    "noise": "{name} draws no random masking; " + _MASKED_IMAGE_MODELING,
    "corrupted_positions": "{name} applies no corruption plan; " + _MASKED_IMAGE_MODELING,
    "corruption_kind": "{name} applies no corruption plan; " + _MASKED_IMAGE_MODELING,
    "replacement_index": "{name} applies no corruption plan; " + _MASKED_IMAGE_MODELING,
    "labels": (
        "{name} computes no loss from labels (ViTForImageClassification takes class labels, "
        "ViTForMaskedPatchPrediction masked-patch targets; ViTForMaskedAutoencoding computes its pixel targets from "
        "`pixel_values`)"
    ),
    "mask_ratio": "the share of masked patches is `config.mask_ratio` (ViTForMaskedAutoencoding)",
}


def _final_layer_norm(config: ViTConfig) -> nn.Module:
    """The LayerNorm over every token after the last block; none when it sits after the pooling instead."""
    if config.layer_norm_after_pooling:
        return nn.Identity()
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class ViTPreTrainedModel(PreTrainedModel):
    """Weights initialisation, loading of other formats, resolution changes and remote-code saving for hf_vit."""

    config_class = ViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTEmbeddings", "ViTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The reference (JAX) initialisation; the `init` helpers skip weights that were loaded."""
        scheme = getattr(module, "init_scheme", None)
        if scheme is not None:
            weight, bias = module.weight, module.bias
            if scheme == "xavier_uniform":
                init.xavier_uniform_(weight)
            elif scheme == "xavier_uniform_fused_qkv":
                # Each of q, k, v is its own D x D kernel in the reference code: xavier over (D, D), not (3D, D).
                fan_in, fan_out = weight.shape[1], weight.shape[0] // 3
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                init.uniform_(weight, -bound, bound)
            elif scheme == "mlp":
                init.xavier_uniform_(weight)
                if bias is not None:
                    init.normal_(bias, std=1e-6)
                    bias = None
            elif scheme == "lecun_normal":
                _lecun_normal_(weight)
            elif scheme == "zeros":
                init.zeros_(weight)
            else:
                raise ValueError(f"Unknown init_scheme {scheme!r}; allowed are {list(INIT_SCHEMES)}.")
            if bias is not None:
                init.zeros_(bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ViTEmbeddings):
            for name in ("position_embeddings", "column_position_embeddings", "row_position_embeddings"):
                if hasattr(module, name):
                    init.normal_(getattr(module, name), std=self.config.initializer_range)
            if module.cls_token is not None:
                init.zeros_(module.cls_token)
            if module.distillation_token is not None:
                # NOTE: DeiT's (and timm's) initialisation; the paper has no distillation token.
                init.trunc_normal_(module.distillation_token, std=0.02, a=-2.0, b=2.0)
            if module.register_tokens is not None:
                # NOTE: DINOv2's (and timm's) initialisation of the registers; the paper has none.
                init.normal_(module.register_tokens, std=1e-6)
        elif isinstance(module, ViTLayerScale):
            init.constant_(module.gamma, module.init_value)
        elif isinstance(module, ViTSelfAttention) and module.relative_position_embeddings is not None:
            # NOTE: the paper gives no initialisation for the relative embeddings; the position embeddings' N(0, 0.02).
            init.normal_(module.relative_position_embeddings, std=self.config.initializer_range)
            if module.prefix_relative_embeddings is not None:
                init.normal_(module.prefix_relative_embeddings, std=self.config.initializer_range)
        elif isinstance(module, ViTPooler) and hasattr(module, "gem_p"):
            init.constant_(module.gem_p, module.gem_p_init)
        elif isinstance(module, ViTForMaskedPatchPrediction):
            # NOTE: the paper gives no initialisation for the [mask] embedding; BERT's N(0, 0.02), as the positions.
            init.normal_(module.mask_token, std=self.config.initializer_range)
        elif isinstance(module, ViTMaskedAutoencoderDecoder):
            init.normal_(module.mask_token, std=0.02)  # MAE's
        elif isinstance(module, ViTMAPHead):
            # big_vision: xavier_uniform over the (1, 1, D) probe, i.e. fan_in 1, fan_out D.
            bound = math.sqrt(6.0 / (1 + module.probe.shape[-1]))
            init.uniform_(module.probe, -bound, bound)

    def _forward_settings(self, pixel_values, output_attentions, output_hidden_states, return_dict):
        """The prelude every forward shares: check the input, cast it to the weights' dtype, resolve the flags.
        -> (pixel_values, output_attentions, output_hidden_states, return_dict)"""
        if pixel_values is None:
            raise ValueError("`pixel_values` is required (a (batch, channels, height, width) float tensor).")
        if not torch.is_tensor(pixel_values) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(f"`pixel_values` must be a (batch, channels, height, width) tensor, got {shape}.")
        if not pixel_values.is_floating_point():
            # NOTE: refused rather than converted: raw 0-255 pixels need the processor's resize and normalisation
            # too, and a guess here (x / 255?) would silently differ from what the model was trained on.
            raise ValueError(
                f"`pixel_values` are {pixel_values.dtype} (raw pixels?); the model takes the normalised float tensors "
                "of its image processor: `ViTImageProcessor.from_pretrained(folder)(images, return_tensors='pt')`."
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("`pixel_values` holds no images (a batch of 0); pass at least one.")
        config = self.config
        base = getattr(self, self.base_model_prefix, self)
        weight = base.embeddings.patch_embeddings.projection.weight
        if pixel_values.dtype != weight.dtype:
            pixel_values = pixel_values.to(weight.dtype)
        return (
            pixel_values,
            config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.return_dict if return_dict is None else return_dict,
        )

    def _refuse_unused_keywords(self, kwargs: dict) -> None:
        """
        The forward's `**kwargs` accept what generic callers pass: `num_items_in_batch` (transformers' `Trainer`, read
        by the heads' losses; nothing to do where there is no loss) and keywords set to None (nothing asked). Any
        other keyword would be dropped silently, so it is refused with a `TypeError` that says what to use instead
        (transformers' image models take several that hf_vit's classes do not: `head_mask`, `attention_mask`,
        `bool_masked_pos` on the bare model, `noise`, ...).
        """
        name = type(self).__name__
        for key, value in kwargs.items():
            if key == "num_items_in_batch" or value is None:
                continue
            hint = _KEYWORD_HINTS.get(key, "it is not an argument of this model")
            raise TypeError(f"{name}.forward() got an unexpected keyword argument {key!r}: {hint.format(name=name)}.")

    # ----------------------------------------------------------------------------------------------------------------
    # Declarative training hints (the optimiser lives in hf_vit.training, never here).

    # Parameters that are position information or learned tokens: no weight decay (as biases and norms).
    _NO_DECAY_LEAVES = (
        "position_embeddings",
        "column_position_embeddings",
        "row_position_embeddings",
        "relative_position_embeddings",
        "prefix_relative_embeddings",
        "cls_token",
        "distillation_token",
        "register_tokens",
        "gamma",
        "probe",
        "gem_p",
    )

    def no_weight_decay_parameter_names(self) -> set[str]:
        """Parameters the paper's recipes exclude from weight decay: biases, norms, position embeddings, class token
        (and the other options' learned positions and tokens, LayerScale factors, the MAP probe and the GeM
        exponents)."""
        names = set()
        for name, param in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if param.ndim <= 1 or leaf in self._NO_DECAY_LEAVES or "layernorm" in name:
                names.add(name)
        return names

    def parameter_layer_ids(self) -> dict[str, int]:
        """Depth of every parameter for layer-wise lr decay: 0 embeddings, 1..L blocks, L+1 final norm and heads."""
        num_layers = self.config.num_hidden_layers
        ids = {}
        for name, _ in self.named_parameters():
            if ".embeddings." in f".{name}":
                ids[name] = 0
            elif ".encoder.layers." in f".{name}":  # the encoder's blocks (not MAE's decoder's)
                ids[name] = int(name.split("encoder.layers.")[1].split(".")[0]) + 1
            else:
                ids[name] = num_layers + 1
        return ids

    # ----------------------------------------------------------------------------------------------------------------
    # Resolution

    def resize_position_embeddings(self, image_size) -> None:
        """
        Change the model's resolution for good: resample the position embeddings on the patch grid (the paper's
        fine-tuning at higher resolution, section 3.2) and write the new `image_size` into the config, so the model
        saves and loads at that size.
        """
        base = getattr(self, self.base_model_prefix, self)
        base.embeddings.resize(image_size)
        num_patches = base.embeddings.grid_size[0] * base.embeddings.grid_size[1]
        for layer in base.encoder.layers:
            layer.attention.resize_relative_positions(num_patches)
        self.config.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.config.validate_architecture()

    # ----------------------------------------------------------------------------------------------------------------
    # Loading transformers' own ViT and saving with remote code

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        r"""
        Load an hf_vit model, or a checkpoint of transformers' ViT family: model_type "vit", "vit_mae" (the encoder;
        the decoder is dropped), "deit" (with the distillation token and, from `...WithTeacher`, its head), "dinov2"
        and "dinov2_with_registers". Their config and weights (the 5.x and the legacy 4.x key names) are translated
        so that the hf_vit model computes what transformers' computes; the model is then hf_vit's and saves in
        hf_vit's format. `ViTModel` reproduces the family's bare model, `ViTForImageClassification` its classifier
        (for ViT-MAE, which has none in transformers: MAE's fine-tuning head, see `transformers_vit_format`).
        A folder of any other model_type is refused with a `ValueError` naming it.

        Transfer, as in the paper (section 3.2): a classifier loaded with `ignore_mismatched_sizes=True` whose head
        does not come from the checkpoint (another `num_labels` / `id2label`, or a checkpoint without a head) gets the
        fine-tuning head: the tanh pre-logits layer is dropped and the new linear head starts at zero (see
        `ViTForImageClassification.prepare_for_fine_tuning`). Pass `keep_pre_logits=True` to keep the pre-logits.

        Everything else is `PreTrainedModel.from_pretrained`.
        """
        keep_pre_logits = kwargs.pop("keep_pre_logits", False)
        transfer = bool(kwargs.get("ignore_mismatched_sizes")) and hasattr(cls, "prepare_for_fine_tuning")
        wants_info = kwargs.get("output_loading_info", False)
        if transfer:
            kwargs["output_loading_info"] = True
        model_type = None
        if kwargs.get("config") is None and pretrained_model_name_or_path is not None:
            folder = os.fspath(pretrained_model_name_or_path)
            if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, kwargs.get("subfolder", ""), "config.json")):
                raise OSError(
                    f"{folder} has no config.json, so the architecture of its weights is unknown (a default model "
                    "would be built around them); save models with save_pretrained, which writes config.json next "
                    "to model.safetensors, or pass `config=`."
                )
            model_type = checkpoint_model_type(pretrained_model_name_or_path, kwargs)
            check_supported_model_type(model_type, pretrained_model_name_or_path)
            if model_type == "hf_vit" and hasattr(cls, "prepare_for_fine_tuning"):
                kwargs = _mae_fine_tuning_head(pretrained_model_name_or_path, kwargs)
        try:
            if model_type in SUPPORTED_MODEL_TYPES:
                task = getattr(cls, "_transformers_task", None) or (
                    "classification" if hasattr(cls, "prepare_for_fine_tuning") else "features"
                )
                config, state_dict, kwargs = load_transformers_vit(
                    cls.config_class, pretrained_model_name_or_path, kwargs, task=task
                )
                if task == "pretraining":
                    _check_mae_fixed_tables(config, state_dict, pretrained_model_name_or_path)
                result = super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **kwargs)
            else:
                result = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            if type(error).__name__ != "SafetensorError":  # safetensors' own error names no file
                raise
            where = os.fspath(pretrained_model_name_or_path)
            if os.path.isfile(os.path.join(where, "model.safetensors")):
                where = os.path.join(where, "model.safetensors")
            raise OSError(
                f"{where}: not readable as safetensors ({error}); the file is truncated or corrupt (an interrupted "
                "download or copy?): save or download the model again."
            ) from None
        if not transfer:
            return result
        model, info = result
        fresh = set(info.get("missing_keys", ())) | {
            entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info.get("mismatched_keys", ())
        }
        if any(key.startswith(("classifier.", "distillation_classifier.")) for key in fresh):
            model.prepare_for_fine_tuning(keep_pre_logits=keep_pre_logits)
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with every Auto class in `auto_map` so the folder loads without hf_vit."""
        if self._auto_class is not None:
            self.config.auto_map = dict(AUTO_MAP)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self._auto_class is not None and os.path.isdir(save_directory):
            # AutoImageProcessor reads config.json's auto_map too: ship the processor's code with the model.
            processor_file = os.path.join(os.path.dirname(__file__), "image_processing_hf_vit.py")
            shutil.copyfile(processor_file, os.path.join(save_directory, "image_processing_hf_vit.py"))
        return result


def _mae_fine_tuning_head(path, kwargs: dict) -> dict:
    """A classifier loaded from an hf_vit MAE folder gets MAE's fine-tuning head, as one loaded from transformers'
    ViT-MAE does: the mean of the patch tokens, then a LayerNorm of its own in place of the encoder's final one
    (MAE's main_finetune.py, timm's fc_norm), unless the caller chooses the pooling."""
    if kwargs.get("config") is not None or "ViTForMaskedAutoencoding" not in checkpoint_architectures(path, kwargs):
        return kwargs
    if "pooling" in kwargs or "layer_norm_after_pooling" in kwargs:
        return kwargs
    logger.warning(
        f"{path} is a masked autoencoder (MAE): built MAE's fine-tuning head (mean of the patch tokens, a new "
        "LayerNorm in place of the encoder's final one, a new linear head); pass pooling= and "
        "layer_norm_after_pooling= to choose another."
    )
    return {**kwargs, "pooling": "gap", "layer_norm_after_pooling": True}


def _check_mae_fixed_tables(config: ViTConfig, state_dict: dict, where) -> None:
    """ViT-MAE stores its fixed sin-cos position tables as parameters; hf_vit computes them. Drop them from the state
    dict after checking they are MAE's tables (a checkpoint whose tables were trained cannot be reproduced)."""
    widths = {MAE_FIXED_TABLES[0]: config.hidden_size, MAE_FIXED_TABLES[1]: config.decoder_hidden_size}
    for key, width in widths.items():
        stored = state_dict.pop(key, None)
        if stored is None:
            continue
        table = mae_sincos_2d_position_embeddings(config.grid_size, width)  # (1, N, width)
        expected = torch.cat([torch.zeros(1, 1, width), table], dim=1)  # MAE's zero class-token row first
        if stored.shape != expected.shape or not torch.allclose(stored.float(), expected, atol=1e-5, rtol=0):
            raise ValueError(
                f"{where}: {key} is not MAE's fixed 2-D sin-cos table of shape {tuple(expected.shape)} (shape "
                f"{tuple(stored.shape)}); ViTForMaskedAutoencoding computes that table and cannot hold another. "
                "Load the encoder with ViTModel or ViTForImageClassification instead (they keep the stored table)."
            )


# What `save_pretrained` writes into `auto_map`: every Auto class hf_vit registers.
AUTO_MAP = {
    "AutoConfig": "configuration_hf_vit.ViTConfig",
    "AutoModel": "modeling_hf_vit.ViTModel",
    "AutoModelForImageClassification": "modeling_hf_vit.ViTForImageClassification",
    "AutoBackbone": "modeling_hf_vit.ViTBackbone",
    "AutoModelForMaskedImageModeling": "modeling_hf_vit.ViTForMaskedPatchPrediction",
    "AutoModelForPreTraining": "modeling_hf_vit.ViTForMaskedAutoencoding",
    "AutoImageProcessor": "image_processing_hf_vit.ViTImageProcessor",
}


class ViTModel(ViTPreTrainedModel):
    r"""
    The bare Vision Transformer: embeddings, L pre-LN blocks, final LayerNorm, and pooling (plus the tanh pre-logits
    layer when `config.representation_size` is set).

    Returns a `BaseModelOutputWithPooling`: `last_hidden_state` (B, prefix + N, D) after the final LayerNorm,
    `pooler_output` (B, D or representation_size), and on request `hidden_states` (embeddings + every block, before
    the final LayerNorm) and `attentions` (one (B, H, T, T) tensor per block, whatever the attention backend).

    Example:

    ```python
    >>> import torch
    >>> from hf_vit import ViTConfig, ViTModel
    >>> model = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
    ...                            num_attention_heads=4, intermediate_size=128))
    >>> model(torch.randn(1, 3, 32, 32)).last_hidden_state.shape
    torch.Size([1, 17, 64])
    ```
    """

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        config.validate_architecture()
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = _final_layer_norm(config)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            Images as produced by `ViTImageProcessor`.
        interpolate_pos_encoding (`bool`, *optional*):
            Resample the position embeddings for an input whose size differs from `config.image_size` (any size
            divisible by the patch size, square or not). For a lasting change use `resize_position_embeddings`.
        pooled_only (`bool`, *optional*, defaults to `False`):
            Compute only what `pooler_output` (and a distillation head) needs. With class-token pooling the last
            block then runs its queries, projection and MLP on the class (and distillation) token alone (its keys and
            values still cover every token): the same numbers for about 1/L less work, and `last_hidden_state` holds those
            tokens only. Ignored when hidden states or attentions are requested, or for the other poolings (they read
            every token).

        Other keywords (`head_mask`, `attention_mask`, `bool_masked_pos`, `labels`, ...) are refused with a
        `TypeError` saying why, unless they are None; `num_items_in_batch` (from `Trainer`) is accepted.
        """
        self._refuse_unused_keywords(kwargs)
        pixel_values, output_attentions, output_hidden_states, return_dict = self._forward_settings(
            pixel_values, output_attentions, output_hidden_states, return_dict
        )
        embeddings = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        if self.training and self.config.patch_drop_rate > 0:  # positions are in already; the prefix is kept
            embeddings = drop_patch_tokens(embeddings, self.config.num_prefix_tokens, self.config.patch_drop_rate)
        class_token_only = (
            pooled_only and self.config.pooling == "cls" and not output_attentions and not output_hidden_states
        )
        encoded = self.encoder(
            embeddings,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            last_layer_queries=self.config.num_prefix_positions if class_token_only else None,
        )
        sequence_output = self.layernorm(encoded.last_hidden_state)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None

        output = BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


@dataclass
class DistilledImageClassifierOutput(ImageClassifierOutput):
    """
    `ImageClassifierOutput` of a classifier with a distillation head (DeiT): `logits` is the mean of the two heads'.

    cls_logits: the class-token head's logits, (B, num_labels).
    distillation_logits: the distillation-token head's logits, (B, num_labels).
    """

    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None


class ViTForImageClassification(ViTPreTrainedModel):
    r"""
    ViT with the paper's classification head: pooling, the tanh pre-logits layer when `config.representation_size` is
    set (pre-training), then a linear classifier, zero-initialised when `config.head_zero_init` (fine-tuning).

    With `labels`, the loss follows `config.problem_type` (single-label cross-entropy, multi-label BCE, regression MSE),
    through transformers' `loss_function`.

    With `config.use_distillation_head` (DeiT), a second linear head reads the distillation token: `logits` is the mean
    of both heads' logits (DeiT's inference), returned separately as `cls_logits` and `distillation_logits` in a
    `DistilledImageClassifierOutput`, and the loss with `labels` is that of the averaged logits.

    Example:

    ```python
    >>> import torch
    >>> from hf_vit import ViTConfig, ViTForImageClassification
    >>> config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                    intermediate_size=128, num_labels=10)
    >>> model = ViTForImageClassification(config)
    >>> out = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([1, 2]))
    >>> out.logits.shape
    torch.Size([2, 10])
    ```
    """

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTModel(config, add_pooling_layer=True)
        width = config.representation_size or config.pooled_size
        self.classifier = self._new_head(config, width)
        # DeiT's second head, on the distillation token (transformers' DeiTForImageClassificationWithTeacher).
        self.distillation_classifier = self._new_head(config, config.hidden_size) if config.use_distillation_head else None
        self.post_init()

    @staticmethod
    def _new_head(config: ViTConfig, width: int) -> nn.Module:
        if config.num_labels > 0:
            return _declare_init(nn.Linear(width, config.num_labels), "zeros" if config.head_zero_init else "lecun_normal")
        return nn.Identity()

    def prepare_for_fine_tuning(
        self, num_labels: int | None = None, id2label: dict | None = None, keep_pre_logits: bool = False
    ) -> "ViTForImageClassification":
        """
        Turn a (pre-trained) classifier into the paper's fine-tuning model (section 3.2, appendix B.1.1): drop the tanh
        pre-logits layer (`representation_size` becomes None) and put a new zero-initialised linear head for the new
        label set on top; every other weight is kept. Labels from `id2label` (which sets `num_labels`), else
        `num_labels`, else the config's. Returns the model.

        `from_pretrained(..., num_labels=K, ignore_mismatched_sizes=True)` calls it when the head is new.
        """
        config = self.config
        if id2label is not None:
            id2label = {int(k): v for k, v in id2label.items()}
            config.id2label = id2label
            config.label2id = {v: k for k, v in id2label.items()}
        elif num_labels is not None:
            _check_num_labels(num_labels)
            config.num_labels = num_labels
        if not keep_pre_logits:
            config.representation_size = None
            self.vit.pooler.dense = None
        config.head_zero_init = True
        reference = self.vit.embeddings.patch_embeddings.projection.weight

        def zero_head(width):
            head = nn.Linear(width, config.num_labels, device=reference.device, dtype=reference.dtype)
            with torch.no_grad():
                head.weight.zero_()
                head.bias.zero_()
            return _declare_init(head, "zeros")

        self.classifier = zero_head(config.representation_size or config.pooled_size)
        if self.distillation_classifier is not None:
            self.distillation_classifier = zero_head(config.hidden_size)
        self.num_labels = config.num_labels
        return self

    def _check_labels(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The label shapes the loss takes (a wrong one would be broadcast or fail deep inside torch)."""
        if not torch.is_tensor(labels):
            labels = torch.as_tensor(labels)
        batch, num_labels = logits.shape
        problem = self.config.problem_type
        shape = tuple(labels.shape)
        if labels.ndim == 0 or shape[0] != batch:
            raise ValueError(
                f"`labels` must have one entry per image ({batch}): class indices of shape ({batch},), multi-label "
                f"targets of shape ({batch}, {num_labels}) or regression values; got shape {shape}."
            )
        per_image = labels.numel() == batch  # (B,) or (B, 1)
        if num_labels == 1 or problem == "regression":
            if not per_image and shape != (batch, num_labels):
                raise ValueError(f"Regression `labels` must have shape ({batch},) or ({batch}, {num_labels}), got {shape}.")
        elif not labels.is_floating_point() or problem == "single_label_classification":
            if labels.is_floating_point() or not per_image:
                raise ValueError(
                    f"Single-label `labels` must be integer class indices of shape ({batch},), got {labels.dtype} of "
                    f"shape {shape} (multi-label targets are floats of shape ({batch}, {num_labels}) with "
                    "`problem_type='multi_label_classification'`)."
                )
        elif shape != (batch, num_labels):
            raise ValueError(
                f"Multi-label `labels` must be float targets of shape ({batch}, {num_labels}), got shape {shape} "
                f"(class indices are integers of shape ({batch},))."
            )
        return labels.to(logits.device)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Class indices (single-label, -100 to leave an image out), multi-hot targets (multi-label) or values
            (regression, `num_labels == 1`).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            What transformers' `Trainer` passes with gradient accumulation: the number of label entries in all the
            micro-batches of one optimiser step. The loss is then the sum over this batch's entries divided by it
            (so the accumulated gradient is the mean over the step), instead of this batch's mean.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        self._refuse_unused_keywords(kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            pooled_only=True,  # the head reads the pooled vector only
        )
        logits = self.classifier(outputs.pooler_output)
        extra = {}
        if self.distillation_classifier is not None:
            # DeiT at inference: the mean of the class-token head and the distillation-token head.
            distillation_token = outputs.last_hidden_state[:, int(self.config.use_class_token)]  # (B, D)
            extra = {"cls_logits": logits, "distillation_logits": self.distillation_classifier(distillation_token)}
            logits = (extra["cls_logits"] + extra["distillation_logits"]) / 2
        loss = None
        if labels is not None:
            labels = self._check_labels(labels, logits)
            loss = self.loss_function(labels, logits, self.config)  # the mean over this batch's label entries
            if num_items_in_batch is not None:
                count = labels.ne(-100).sum() if not labels.is_floating_point() else labels.numel()
                loss = loss * (count / _as_count(num_items_in_batch, loss.device))
        output_class = DistilledImageClassifierOutput if extra else ImageClassifierOutput
        output = output_class(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions, **extra
        )
        return output if return_dict else output.to_tuple()


class ViTBackbone(BackboneMixin, ViTPreTrainedModel):
    r"""
    ViT as a backbone for dense tasks (`AutoBackbone`): feature maps (B, D, rows, cols) from the chosen stages,
    `config.out_features` / `out_indices` among `config.stage_names` ("stem" = the embeddings, "stage{i}" = the
    output of block i; default: the last block).

    Each chosen stage goes through the final LayerNorm, loses its prefix (class) token and is laid out on the token
    grid. NOTE: one shared LayerNorm for every stage, as transformers' Dinov2Backbone does; the paper has no dense
    head to follow.

    Example:

    ```python
    >>> import torch
    >>> from hf_vit import ViTBackbone, ViTConfig
    >>> config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                    intermediate_size=128, out_features=["stage1", "stage2"])
    >>> [tuple(f.shape) for f in ViTBackbone(config)(torch.randn(1, 3, 32, 32)).feature_maps]
    [(1, 64, 4, 4), (1, 64, 4, 4)]
    ```
    """

    def __init__(self, config: ViTConfig):
        if config.out_features is None and config.out_indices is None:
            config.set_output_features_output_indices(out_features=None, out_indices=None)  # the last block
        super().__init__(config)
        config.validate_architecture()
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = _final_layer_norm(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            Images as produced by `ViTImageProcessor`; another size than `config.image_size` needs
            `interpolate_pos_encoding=True`, as for `ViTModel`.
        """
        self._refuse_unused_keywords(kwargs)
        pixel_values, output_attentions, output_hidden_states, return_dict = self._forward_settings(
            pixel_values, output_attentions, output_hidden_states, return_dict
        )
        patches, grid = self.embeddings.embed_patches(pixel_values)
        embeddings = self.embeddings.add_positions(patches, grid, bool(interpolate_pos_encoding))
        encoded = self.encoder(embeddings, output_attentions=output_attentions, output_hidden_states=True)
        prefix = self.config.num_prefix_tokens
        feature_maps = ()
        for stage, hidden_state in zip(self.stage_names, encoded.hidden_states):
            if stage in self.out_features:
                tokens = self.layernorm(hidden_state)[:, prefix:]  # (B, N, D)
                feature_maps += (tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid[0], grid[1]),)
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=encoded.hidden_states if output_hidden_states else None,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------------------------------
# Masked patch prediction (section 4.6, appendix B.1.2)

# Corruption kinds of a plan (the codes hf_vit.training.mpp.masking draws plans with).
MASK, REPLACE, KEEP = 0, 1, 2
MPP_COLOR_BITS = 3  # the paper's 3-bit colours: 8 levels per channel
MPP_SUB_PATCH_SIDE = 4  # "downsampled": a 4x4 grid of sub-patches
MPP_SUB_PATCHES = MPP_SUB_PATCH_SIDE**2


def patchify(pixels: torch.Tensor, patch_size) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C, P_h, P_w) patches in the model's row-major token order."""
    ph, pw = as_pair(patch_size)
    batch, channels, height, width = pixels.shape
    if height % ph or width % pw:
        raise ValueError(f"Image size {height}x{width} is not divisible by the patch size {ph}x{pw}.")
    x = pixels.reshape(batch, channels, height // ph, ph, width // pw, pw)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // ph) * (width // pw), channels, ph, pw)


def quantize_colors(values: torch.Tensor, bits: int = MPP_COLOR_BITS) -> torch.Tensor:
    """(..., C) colours in [0, 1] -> (...,) class ids: each channel to `bits` bits, channel 0 most significant."""
    levels = 2**bits
    q = (values.clamp(0.0, 1.0) * levels).floor().clamp(max=levels - 1).long()  # (..., C) in [0, levels)
    channels = q.shape[-1]
    weights = levels ** torch.arange(channels - 1, -1, -1, device=q.device)  # R * 64 + G * 8 + B for 3 channels
    return (q * weights).sum(-1)


def mpp_targets(pixels: torch.Tensor, patch_size, target: str = "mean_color") -> torch.Tensor:
    """Masked patch prediction's targets for every patch, from unnormalised pixels (B, C, H, W) in [0, 1]
    (appendix B.1.2).

    mean_color:  (B, N) long, the 3-bit quantised mean colour (512 classes for RGB);
    downsampled: (B, N, 16) long, the patch average-pooled to 4x4 sub-patches, each a 3-bit colour (adaptive pooling
                 when the patch side is not a multiple of 4);
    pixels:      (B, N, C * P_h * P_w) float, the patch itself (the L2-regression target).
    """
    if target not in MPP_TARGETS:
        raise ValueError(f"`mpp_target` must be one of {list(MPP_TARGETS)}, got {target!r}.")
    patches = patchify(pixels.float(), patch_size)  # (B, N, C, P, P)
    batch, n, channels, ph, pw = patches.shape
    if target == "mean_color":
        return quantize_colors(patches.mean(dim=(-1, -2)))  # (B, N)
    if target == "downsampled":
        small = F.adaptive_avg_pool2d(patches.reshape(batch * n, channels, ph, pw), MPP_SUB_PATCH_SIDE)
        small = small.reshape(batch, n, channels, MPP_SUB_PATCH_SIDE * MPP_SUB_PATCH_SIDE).transpose(-1, -2)
        return quantize_colors(small)  # (B, N, 16)
    return patches.reshape(batch, n, channels * ph * pw)


def unnormalize_pixels(pixel_values: torch.Tensor, config: ViTConfig) -> torch.Tensor:
    """Normalised (B, C, H, W) -> the image in [0, 1], inverting the processor's normalisation recorded in the config
    (`image_mean`, `image_std`)."""
    channels = pixel_values.shape[1]
    shape = (1, -1, 1, 1)
    mean = torch.tensor(config.image_mean, dtype=torch.float32, device=pixel_values.device).expand(channels)
    std = torch.tensor(config.image_std, dtype=torch.float32, device=pixel_values.device).expand(channels)
    return pixel_values.float() * std.view(shape) + mean.view(shape)


@dataclass
class MaskedPatchPredictionOutput(ModelOutput):
    """
    loss: the objective on the corrupted positions (cross-entropy, or mean squared error for "pixels").
    logits: the predictions at the corrupted positions: (B, M, 512) for "mean_color", (B, M, 16, 512) for
        "downsampled", (B, M, C * P * P) for "pixels" (every patch instead of M when no plan is given).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class ViTForMaskedPatchPrediction(ViTPreTrainedModel):
    r"""
    ViT with the paper's self-supervised objective, masked patch prediction (section 4.6, appendix B.1.2): a
    corruption plan is applied to the patch embeddings *before* the position embeddings are added (at each planned
    position a learned `[mask]` embedding, another patch's embedding, or no change), and a linear head predicts each
    corrupted patch's target from the encoder's output at that position; the loss covers those positions only.

    Two ways to say what is corrupted:
    - the paper's plan (`corrupted_positions`, `corruption_kind`, `replacement_index`), drawn outside the model by
      `hf_vit.training.mpp.masking.MaskedPatchCollator` (50% of the patches, 80/10/10 split) with its targets as
      `labels`, as the recipes do;
    - transformers' masked-image-modelling convention, `model(pixel_values, bool_masked_pos=mask)` (its `run_mim.py`):
      the masked patches get the `[mask]` embedding and, without `labels`, the targets are computed here from
      `pixel_values`, whose normalisation the config records (`image_mean`, `image_std`; ViTImageProcessor's 0.5 /
      0.5 by default, the recipes write their processor's).

    `config.mpp_target` fixes the head: "mean_color" (512 classes), "downsampled" (16 x 512) or "pixels" (C * P * P
    values, L2).

    After pre-training, `ViTForImageClassification.from_pretrained(folder, num_labels=K, ignore_mismatched_sizes=True)`
    keeps the encoder and puts the paper's zero-initialised fine-tuning head on it.

    NOTE: not defined for hybrids: their tokens are ResNet features with overlapping receptive fields, so replacing
    one token's embedding does not hide its patch from the model and the objective loses its meaning.

    Example:

    ```python
    >>> import torch
    >>> from hf_vit import ViTConfig, ViTForMaskedPatchPrediction
    >>> config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                    intermediate_size=128)
    >>> model = ViTForMaskedPatchPrediction(config)
    >>> positions = torch.tensor([[0, 5, 6, 9, 12, 13, 14, 15]])  # 8 of the 16 patches
    >>> out = model(torch.randn(1, 3, 32, 32), corrupted_positions=positions, labels=torch.randint(0, 512, (1, 8)))
    >>> out.logits.shape
    torch.Size([1, 8, 512])
    ```
    """

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        if config.is_hybrid:
            raise ValueError(
                "ViTForMaskedPatchPrediction needs a plain ViT (`backbone_depths=None`): a hybrid's tokens are ResNet "
                "features with overlapping receptive fields, so masking a token's embedding does not hide its patch."
            )
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mpp_head = _declare_init(nn.Linear(config.hidden_size, self.head_width(config)), "lecun_normal")
        self.post_init()

    @staticmethod
    def head_width(config: ViTConfig) -> int:
        colors = (2**MPP_COLOR_BITS) ** config.num_channels
        if config.mpp_target == "mean_color":
            return colors
        if config.mpp_target == "downsampled":
            return MPP_SUB_PATCHES * colors
        ph, pw = config.patch_hw
        return config.num_channels * ph * pw

    def corrupt(
        self,
        patches: torch.Tensor,
        corrupted_positions: torch.Tensor,
        corruption_kind: torch.Tensor | None = None,
        replacement_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply a plan to (B, N, D) patch embeddings: [mask] / another patch's embedding / unchanged. -> (B, N, D)."""
        batch, num_patches, width = patches.shape
        positions = self._check_plan_tensor("corrupted_positions", corrupted_positions, (batch, None), num_patches)
        shape = tuple(positions.shape)
        if corruption_kind is None:
            kinds = torch.full(shape, MASK, dtype=torch.long, device=patches.device)
        else:
            kinds = self._check_plan_tensor("corruption_kind", corruption_kind, shape, 3)
        flat = patches.reshape(batch * num_patches, width)
        target = (torch.arange(batch, device=patches.device)[:, None] * num_patches + positions).flatten()  # (B*M,)
        new = torch.where(
            (kinds == MASK).flatten()[:, None], self.mask_token.reshape(1, width).to(patches.dtype), flat[target]
        )
        if bool((kinds == REPLACE).any()):
            if replacement_index is None:
                raise ValueError("The plan replaces patches (corruption_kind == 1) but gives no `replacement_index`.")
            sources = self._check_plan_tensor("replacement_index", replacement_index, shape, batch * num_patches)
            new = torch.where((kinds == REPLACE).flatten()[:, None], flat[sources.flatten()], new)
        return flat.index_copy(0, target, new).view(batch, num_patches, width)

    @staticmethod
    def _check_plan_tensor(name, value, shape, upper) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"`{name}` must be an integer tensor, got {type(value).__name__} {getattr(value, 'dtype', '')}.")
        if value.ndim != 2 or value.shape[0] != shape[0] or (shape[1] is not None and value.shape[1] != shape[1]):
            expected = f"({shape[0]}, M)" if shape[1] is None else str(shape)
            raise ValueError(f"`{name}` must have shape {expected} (batch, corrupted positions), got {tuple(value.shape)}.")
        if value.numel() and (int(value.min()) < 0 or int(value.max()) >= upper):
            raise ValueError(f"`{name}` values must lie in [0, {upper}), got [{int(value.min())}, {int(value.max())}].")
        return value.long()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        corrupted_positions: torch.Tensor | None = None,
        corruption_kind: torch.Tensor | None = None,
        replacement_index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedPatchPredictionOutput | tuple:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            transformers' masked-image-modelling convention (its `run_mim.py`, SimMIM): True (or 1) where a patch is
            masked. Every masked patch embedding is replaced by the `[mask]` embedding (no 80/10/10 split: that needs
            a plan), any number per image; the head predicts every patch, `logits` is `(batch_size, num_patches, ...)`
            and the loss covers the masked patches.
        corrupted_positions (`torch.LongTensor` of shape `(batch_size, M)`):
            The paper's corruption plan (`hf_vit.training.mpp.masking`): patch indices (row-major on the patch grid) to
            corrupt and predict. Without a plan or `bool_masked_pos` nothing is corrupted and the head predicts every
            patch (for inspection; a loss only with `labels` for every patch).
        corruption_kind (`torch.LongTensor` of shape `(batch_size, M)`, *optional*):
            0: the `[mask]` embedding; 1: the embedding at `replacement_index`; 2: unchanged. Default: all 0.
        replacement_index (`torch.LongTensor` of shape `(batch_size, M)`, *optional*):
            Flat index `b * N + n` of the patch embedding (of this batch, before corruption) used where the kind is 1.
        labels (`torch.Tensor`, *optional*):
            Targets at the predicted positions: with a plan `(batch_size, M)` class ids for "mean_color",
            `(batch_size, M, 16)` for "downsampled", `(batch_size, M, C * P * P)` values for "pixels"; with
            `bool_masked_pos` the same for every patch, `(batch_size, num_patches, ...)` (class ids -100 are left
            out). Without labels, the targets are computed from `pixel_values` (`mpp_targets` of the image recovered
            with `config.image_mean` / `config.image_std`), so a loop that passes only `pixel_values` and a mask
            trains the model.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            From `Trainer` with gradient accumulation: the number of target entries in the step's micro-batches; the
            loss is then this batch's sum divided by it rather than this batch's mean.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        self._refuse_unused_keywords(kwargs)
        if bool_masked_pos is not None and corrupted_positions is not None:
            raise ValueError(
                "Pass either `bool_masked_pos` (transformers' convention: [mask] where True) or a corruption plan "
                "(`corrupted_positions`, ...), not both."
            )
        pixel_values, output_attentions, output_hidden_states, return_dict = self._forward_settings(
            pixel_values, output_attentions, output_hidden_states, return_dict
        )
        config, vit = self.config, self.vit

        patches, grid = vit.embeddings.embed_patches(pixel_values)  # (B, N, D), before any position information
        masked = None
        if bool_masked_pos is not None:
            masked = _check_bool_masked_pos(bool_masked_pos, patches.shape[:2], patches.device)  # (B, N) bool
            patches = torch.where(masked[..., None], self.mask_token.to(patches.dtype), patches)
        elif corrupted_positions is not None:
            patches = self.corrupt(patches, corrupted_positions, corruption_kind, replacement_index)
        embeddings = vit.embeddings.add_positions(patches, grid, bool(interpolate_pos_encoding))
        encoded = vit.encoder(embeddings, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        tokens = vit.layernorm(encoded.last_hidden_state)[:, config.num_prefix_tokens :]  # (B, N, D)
        if corrupted_positions is not None:
            index = corrupted_positions.long().to(tokens.device)[..., None].expand(-1, -1, tokens.shape[-1])
            tokens = tokens.gather(1, index)  # (B, M, D)
        logits = self.mpp_head(tokens)
        if config.mpp_target == "downsampled":
            logits = logits.view(*logits.shape[:2], MPP_SUB_PATCHES, -1)  # (B, M or N, 16, 512)

        loss = None
        if masked is not None or corrupted_positions is not None:
            if labels is None:
                labels = mpp_targets(unnormalize_pixels(pixel_values, config), config.patch_hw, config.mpp_target)
                if corrupted_positions is not None:
                    labels = gather_positions(labels, corrupted_positions.long().to(labels.device))
            else:
                labels = self._check_mpp_labels(labels.to(logits.device), logits)
            if masked is not None:
                logits_at, labels_at = logits[masked], labels[masked]  # (masked patches, ...)
            else:
                logits_at, labels_at = logits, labels
            loss = self._mpp_loss(logits_at, labels_at, num_items_in_batch)
        elif labels is not None:  # nothing corrupted: the loss over every patch's prediction
            labels = self._check_mpp_labels(labels.to(logits.device), logits)
            loss = self._mpp_loss(logits, labels, num_items_in_batch)
        output = MaskedPatchPredictionOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        return output if return_dict else output.to_tuple()

    def _check_mpp_labels(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        target = self.config.mpp_target
        if target == "pixels":
            if labels.shape != logits.shape:
                raise ValueError(f"`labels` must have shape {tuple(logits.shape)} for 'pixels', got {tuple(labels.shape)}.")
            return labels
        if labels.shape != logits.shape[:-1] or labels.is_floating_point():
            raise ValueError(
                f"`labels` must be class ids of shape {tuple(logits.shape[:-1])} for {target!r}, got "
                f"{labels.dtype} of shape {tuple(labels.shape)}."
            )
        return labels

    def _mpp_loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """Cross-entropy (mean squared error for "pixels") over the predicted entries: their mean, or their sum over
        `num_items_in_batch`."""
        if self.config.mpp_target == "pixels":
            total = F.mse_loss(logits.float(), labels.float(), reduction="sum")
            count = labels.numel()
        else:
            flat = labels.reshape(-1).long()
            total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=-100, reduction="sum")
            count = flat.ne(-100).sum()
        if num_items_in_batch is not None:
            return total / _as_count(num_items_in_batch, total.device)
        if not torch.is_tensor(count):
            count = torch.tensor(count, device=total.device)
        if int(count) == 0:
            raise ValueError("The mask leaves no patch to predict (no masked patch with a target): mask at least one.")
        return total / count


def _check_bool_masked_pos(bool_masked_pos, shape: tuple[int, int], device) -> torch.Tensor:
    """transformers' `bool_masked_pos` (B, N), bool or 0/1 integers (`run_mim.py` collates integer masks) -> bool."""
    batch, num_patches = shape
    if not torch.is_tensor(bool_masked_pos):
        raise ValueError(f"`bool_masked_pos` must be a (batch, patches) tensor, got {type(bool_masked_pos).__name__}.")
    if tuple(bool_masked_pos.shape) != (batch, num_patches):
        raise ValueError(
            f"`bool_masked_pos` must have shape (batch, patches) = ({batch}, {num_patches}), one entry per patch in "
            f"row-major order; got {tuple(bool_masked_pos.shape)}."
        )
    if bool_masked_pos.dtype != torch.bool:
        if bool_masked_pos.is_floating_point() or bool_masked_pos.is_complex():
            raise ValueError(f"`bool_masked_pos` must be a bool or 0/1 integer tensor, got {bool_masked_pos.dtype}.")
        if bool_masked_pos.numel() and not bool(((bool_masked_pos == 0) | (bool_masked_pos == 1)).all()):
            raise ValueError("`bool_masked_pos` must hold only 0 and 1 (or False and True).")
        bool_masked_pos = bool_masked_pos.bool()
    return bool_masked_pos.to(device)


def gather_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) per-patch values at (B, M) positions -> (B, M, ...)."""
    index = positions.view(*positions.shape, *([1] * (values.ndim - 2))).expand(-1, -1, *values.shape[2:])
    return values.gather(1, index)


# --------------------------------------------------------------------------------------------------------------------
# Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021): beyond the paper, its
# successor in masked image modelling.


def mae_patch_pixels(pixels: torch.Tensor, patch_size) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P_h * P_w * C): each patch's pixels in MAE's order (row, column, channel), the layout of
    MAE's and transformers' `patchify` and of the decoder's predictions."""
    ph, pw = as_pair(patch_size)
    batch, channels, height, width = pixels.shape
    if height % ph or width % pw:
        raise ValueError(f"Image size {height}x{width} is not divisible by the patch size {ph}x{pw}.")
    rows, cols = height // ph, width // pw
    # One permutation straight to (B, rows, cols, P_h, P_w, C): a single copy of the image.
    x = pixels.reshape(batch, channels, rows, ph, cols, pw).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(batch, rows * cols, ph * pw * channels)


def mae_unpatch_pixels(patches: torch.Tensor, grid: tuple[int, int], patch_size, num_channels: int) -> torch.Tensor:
    """The inverse of `mae_patch_pixels`: (B, N, P_h * P_w * C) on a (rows, cols) grid -> (B, C, H, W)."""
    (ph, pw), (rows, cols) = as_pair(patch_size), grid
    x = patches.reshape(patches.shape[0], rows, cols, ph, pw, num_channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], num_channels, rows * ph, cols * pw)


def mae_pixel_targets(pixel_values: torch.Tensor, patch_size, norm_pix_loss: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """MAE's reconstruction targets (B, N, P_h * P_w * C) from the model's input: each patch's pixels, with
    `norm_pix_loss` normalised by the patch's own mean and (unbiased, as MAE's `var`) variance + eps."""
    target = mae_patch_pixels(pixel_values, patch_size).float()
    if norm_pix_loss:
        var, mean = torch.var_mean(target, dim=-1, keepdim=True)  # one pass for both (B, N, 1)
        target = (target - mean) / (var + eps).sqrt()
    return target


@dataclass
class MaskedAutoencoderOutput(ModelOutput):
    """
    The fields of transformers' `ViTMAEForPreTrainingOutput`, in its order.

    loss: the mean squared error of the masked patches' reconstruction (per-patch normalised pixels with
        `config.norm_pix_loss`), averaged over the pixels of a patch, then over the masked patches; None when nothing
        is masked.
    logits: (B, N, P * P * C) the decoder's prediction for every patch, pixels in (row, column, channel) order
        (`mae_unpatch_pixels` lays them out as an image).
    mask: (B, N) 1.0 where the patch was hidden from the encoder, 0.0 where it was kept.
    ids_restore: (B, N) where each patch sits in the shuffled order (kept first): `argsort` of the shuffle.
    hidden_states, attentions: the encoder's, on the prefix tokens and the kept patches only.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class _DecoderConfig:
    """
    The model's config as the MAE decoder's blocks see it: the decoder's width, depth, heads and MLP width, and no
    stochastic depth, LayerScale or relative positions; every other field (activation, eps, qkv bias, dropout, and
    the attention implementation, which `set_attn_implementation` may change after building) is read live from the
    model's config.
    """

    def __init__(self, config: ViTConfig):
        self._config = config

    def __getattr__(self, name):
        if name.startswith("__") or name == "_config":  # copy / pickle probing an instance without `_config`
            raise AttributeError(name)
        return getattr(self._config, name)

    hidden_size = property(lambda self: self._config.decoder_hidden_size)
    num_attention_heads = property(lambda self: self._config.decoder_num_attention_heads)
    intermediate_size = property(lambda self: self._config.decoder_intermediate_size)
    num_hidden_layers = property(lambda self: self._config.decoder_num_hidden_layers)
    head_dim = property(lambda self: self._config.decoder_hidden_size // self._config.decoder_num_attention_heads)
    drop_path_rate = 0.0
    layer_scale_init_value = None
    position_embedding_type = "none"  # the decoder's positions are added once, before its first block


class ViTMaskedAutoencoderDecoder(nn.Module):
    """
    MAE's decoder: (B, prefix + K, D) encoded prefix and kept tokens -> (B, N, P * P * C) pixel predictions.

    A linear map to the decoder width, a learned `[mask]` token at every hidden patch, the tokens put back in grid
    order (`ids_restore`), MAE's fixed 2-D sin-cos position embeddings added to the patch tokens (the prefix tokens
    get none: MAE's zero row), `decoder_num_hidden_layers` pre-LN blocks, a LayerNorm and a linear map to each patch's
    pixels.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        view = _DecoderConfig(config)
        width = config.decoder_hidden_size
        self.num_prefix_tokens = config.num_prefix_tokens
        self.embed = _declare_init(nn.Linear(config.hidden_size, width), "xavier_uniform")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.layers = nn.ModuleList([ViTLayer(view, i) for i in range(config.decoder_num_hidden_layers)])
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        ph, pw = config.patch_hw
        self.pred = _declare_init(nn.Linear(width, ph * pw * config.num_channels), "xavier_uniform")

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(latent)  # (B, prefix + K, Dd)
        prefix, kept = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        batch, num_patches = ids_restore.shape
        masks = self.mask_token.to(x.dtype).expand(batch, num_patches - kept.shape[1], -1)
        patches = gather_tokens(torch.cat([kept, masks], dim=1), ids_restore)  # (B, N, Dd) in grid order
        table = mae_sincos_2d_position_embeddings(grid, x.shape[-1]).to(device=x.device, dtype=x.dtype)
        x = torch.cat([prefix, patches + table], dim=1)  # (B, prefix + N, Dd)
        for layer in self.layers:
            x, _ = layer(x)
        return self.pred(self.layernorm(x[:, self.num_prefix_tokens :]))  # (B, N, P * P * C)


class ViTForMaskedAutoencoding(ViTPreTrainedModel):
    r"""
    The masked autoencoder (MAE; He et al., 2021) on hf_vit's encoder: a random `config.mask_ratio` (75%) of each
    image's patches is hidden, the encoder runs on the prefix tokens and the kept patches only (after their position
    embeddings are added), and a light decoder (`config.decoder_*`) reconstructs the pixels of every patch; the loss is
    the mean squared error on the hidden patches, of their pixels normalised per patch (`config.norm_pix_loss`, MAE's
    default) or of the raw `pixel_values`. transformers' `ViTMAEForPreTraining` computes the same from the same
    weights and `noise` (`from_pretrained` loads its checkpoints, decoder included).

    The masking: drawn by the model (torch's global generator) when none is given, as transformers does; from the
    caller's `noise` (B, N) (the patches with the smallest noise are kept, transformers' convention), or from
    `bool_masked_pos` (B, N) (True: hidden; the same count for every image).

    MAE's own setting is `position_embedding_type="sincos_2d"` with `position_embedding_sincos_style="mae"` (fixed
    positions), a class token and exact GELU with LayerNorm eps 1e-6 (`recipes/configs/fashion_mnist_mae.yaml`); any
    plain ViT config works. `ViTForImageClassification.from_pretrained(folder, num_labels=K,
    ignore_mismatched_sizes=True)` fine-tunes the encoder with MAE's fine-tuning head (mean of the patch tokens, then
    a LayerNorm of its own, `pooling="gap", layer_norm_after_pooling=True`); the decoder is dropped.

    NOTE: the encoder and the decoder blocks keep hf_vit's (the ViT reference's) initialisation; MAE's differs in
    detail (xavier over the fused qkv kernel, N(0, 0.02) class token). The decoder's own layers follow MAE: xavier
    linear maps, N(0, 0.02) `[mask]` token. Hybrids are refused (their tokens see their neighbours' pixels), and so is
    `position_embedding_type="relative"` (its attention bias is laid out on the whole grid); `patch_drop_rate` is not
    applied (MAE's masking already drops 75% of the tokens).

    Example:

    ```python
    >>> import torch
    >>> from hf_vit import ViTConfig, ViTForMaskedAutoencoding
    >>> config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                    intermediate_size=128, decoder_hidden_size=32, decoder_num_hidden_layers=1,
    ...                    decoder_num_attention_heads=4, decoder_intermediate_size=64)
    >>> out = ViTForMaskedAutoencoding(config)(torch.randn(2, 3, 32, 32))
    >>> out.logits.shape, int(out.mask.sum(1)[0])  # 16 patches, 12 hidden
    (torch.Size([2, 16, 192]), 12)
    ```
    """

    _transformers_task = "pretraining"  # what `from_pretrained` builds from transformers' ViT-MAE: encoder and decoder

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        if config.is_hybrid:
            raise ValueError(
                "ViTForMaskedAutoencoding needs a plain ViT (`backbone_depths=None`): a hybrid's tokens are ResNet "
                "features with overlapping receptive fields, so hiding a token does not hide its patch."
            )
        if config.position_embedding_type == "relative":
            raise ValueError(
                "ViTForMaskedAutoencoding runs the encoder on the kept patches only, which `position_embedding_type="
                "'relative'` cannot follow (its attention bias is laid out on the whole grid); use 'sincos_2d' "
                "(MAE's), 'learned_1d', 'learned_2d' or 'none'."
            )
        if config.layer_norm_after_pooling:
            raise ValueError(
                "ViTForMaskedAutoencoding's decoder reads the encoder's tokens after its final LayerNorm: set "
                "`layer_norm_after_pooling=False` (MAE's fine-tuning pooling is chosen when the classifier is loaded)."
            )
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.decoder = ViTMaskedAutoencoderDecoder(config)
        self.post_init()

    def num_kept(self, num_patches: int) -> int:
        """Patches the encoder sees when the model draws the masking: `int(N * (1 - mask_ratio))`, at least 1."""
        return max(1, int(num_patches * (1 - self.config.mask_ratio)))

    def masking_order(self, batch: int, num_patches: int, device, noise=None, bool_masked_pos=None):
        """(B, N) patch order, kept patches first (each group in grid order for `bool_masked_pos`), and the number kept."""
        if bool_masked_pos is not None:
            masked = _check_bool_masked_pos(bool_masked_pos, (batch, num_patches), device)
            hidden = masked.sum(dim=1)
            if bool((hidden != hidden[0]).any()):
                raise ValueError(
                    "`bool_masked_pos` must hide the same number of patches in every image (MAE's encoder takes the "
                    f"same number of kept tokens from each), got {sorted(set(hidden.tolist()))} per image."
                )
            if int(hidden[0]) == num_patches:
                raise ValueError("`bool_masked_pos` hides every patch; the encoder needs at least one.")
            order = torch.argsort(masked.to(torch.int8), dim=1, stable=True)  # kept (0) first, grid order kept
            return order, num_patches - int(hidden[0])
        if noise is not None:
            if not torch.is_tensor(noise) or not noise.is_floating_point():
                raise ValueError(f"`noise` must be a float tensor of shape ({batch}, {num_patches}), got {noise!r:.80}.")
            noise = noise.to(device)
        return random_patch_order(batch, num_patches, device, noise), self.num_kept(num_patches)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedAutoencoderOutput | tuple:
        r"""
        noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            Fixes the masking (transformers' ViT-MAE convention): per image the `int(N * (1 - mask_ratio))` patches
            with the smallest noise are kept. Drawn uniformly when neither this nor `bool_masked_pos` is given.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            True (or 1) for the patches to hide, the same number in every image.
        interpolate_pos_encoding (`bool`, *optional*):
            Another input size than `config.image_size` with learned position embeddings (sin-cos ones, MAE's and
            the decoder's, are computed for any grid).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            With gradient accumulation: the number of masked patches in the step's micro-batches; the loss is then
            this batch's sum over its masked patches divided by it.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        self._refuse_unused_keywords(kwargs)
        if noise is not None and bool_masked_pos is not None:
            raise ValueError("Pass either `noise` (the model keeps the patches with the least) or `bool_masked_pos`, not both.")
        pixel_values, output_attentions, output_hidden_states, return_dict = self._forward_settings(
            pixel_values, output_attentions, output_hidden_states, return_dict
        )
        config, vit = self.config, self.vit
        prefix = config.num_prefix_tokens

        patches, grid = vit.embeddings.embed_patches(pixel_values)  # (B, N, D)
        batch, num_patches = patches.shape[:2]
        order, keep = self.masking_order(batch, num_patches, patches.device, noise, bool_masked_pos)  # (B, N)
        ids_restore = order.argsort(dim=1)  # (B, N)
        embeddings = vit.embeddings.add_positions(patches, grid, bool(interpolate_pos_encoding))  # (B, prefix + N, D)
        kept = gather_tokens(embeddings[:, prefix:], order[:, :keep])  # (B, K, D), positions already added
        encoded = vit.encoder(
            torch.cat([embeddings[:, :prefix], kept], dim=1),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        latent = vit.layernorm(encoded.last_hidden_state)  # (B, prefix + K, D)
        logits = self.decoder(latent, ids_restore, grid)  # (B, N, P * P * C)

        # 1.0 where hidden, in grid order (float, as transformers' mask).
        mask = (ids_restore >= keep).to(torch.float32)
        loss = None
        if keep < num_patches:
            target = mae_pixel_targets(pixel_values, config.patch_hw, config.norm_pix_loss)
            per_patch = F.mse_loss(logits.float(), target, reduction="none").mean(dim=-1)  # (B, N)
            total = (per_patch * mask).sum()
            if num_items_in_batch is not None:
                loss = total / _as_count(num_items_in_batch, total.device)
            else:
                loss = total / mask.sum()
        output = MaskedAutoencoderOutput(
            loss=loss, logits=logits, mask=mask, ids_restore=ids_restore, hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "DistilledImageClassifierOutput",
    "MaskedAutoencoderOutput",
    "MaskedPatchPredictionOutput",
    "ViTBackbone",
    "ViTForImageClassification",
    "ViTForMaskedAutoencoding",
    "ViTForMaskedPatchPrediction",
    "ViTModel",
    "ViTPreTrainedModel",
    "resample_position_embeddings",
]
