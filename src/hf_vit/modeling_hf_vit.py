"""The Vision Transformer of "An Image is Worth 16x16 Words" (ViT paper, section 3.1, appendix B.1)."""

import math
import os
import shutil
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_hf_vit import ViTConfig, _pair
from .transformers_vit_format import is_transformers_vit_config, load_transformers_vit


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
) -> torch.Tensor:
    """
    Resample learned position embeddings `(1, prefix + old_rows * old_cols, D)` to another patch grid.

    The prefix rows (the class token's) are kept as they are; the patch rows are interpolated on the 2D grid.
    The default (bilinear, corners aligned) is the reference code's `scipy.ndimage.zoom(order=1)`; timm resamples
    with `align_corners=False`. Computed in float32 whatever the parameter's dtype.
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
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=align_corners)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(position_embeddings.dtype)
    return torch.cat([prefix, grid], dim=1)


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


class ViTPatchEmbeddings(nn.Module):
    """(B, C, H, W) -> (B, N, D) patch tokens: a P x P convolution with stride P (the paper's E)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_size = config.patch_hw
        self.projection = _declare_init(
            nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size),
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
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(
                f"Input size {height}x{width} is not divisible by the patch size "
                f"{self.patch_size[0]}x{self.patch_size[1]}; resize or crop the image to a multiple of it."
            )
        x = self.projection(pixel_values)  # (B, D, rows, cols)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D)


class ViTEmbeddings(nn.Module):
    """(B, C, H, W) -> (B, prefix + N, D): patch tokens, [class token], + position embeddings, dropout."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.grid_size = config.grid_size
        self.num_prefix_tokens = config.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_class_token else None
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + config.num_patches, config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def embed_patches(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> (B, N, D) patch embeddings before any position information, and the patch grid."""
        return self.patch_embeddings(pixel_values)

    def position_embeddings_for(self, grid: tuple[int, int], interpolate_pos_encoding: bool) -> torch.Tensor:
        """(1, prefix + rows * cols, D) position embeddings for a patch grid."""
        if grid == tuple(self.grid_size):
            return self.position_embeddings
        if not interpolate_pos_encoding:
            ph, pw = self.patch_embeddings.patch_size
            raise ValueError(
                f"Input image size ({grid[0] * ph}x{grid[1] * pw}) doesn't match the model's image_size "
                f"({self.grid_size[0] * ph}x{self.grid_size[1] * pw}). Pass `interpolate_pos_encoding=True` to "
                "resample the position embeddings for this call, or call "
                f"`model.resize_position_embeddings(({grid[0] * ph}, {grid[1] * pw}))` to change the model's "
                "resolution for good (it is then saved with the model)."
            )
        return resample_position_embeddings(
            self.position_embeddings,
            self.grid_size,
            grid,
            num_prefix_tokens=self.num_prefix_tokens,
            mode=self.config.position_embedding_interpolation,
            align_corners=self.config.position_embedding_align_corners,
        )

    def add_positions(
        self, patch_embeddings: torch.Tensor, grid: tuple[int, int], interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """(B, N, D) -> (B, prefix + N, D): prepend the class token, add position embeddings, dropout."""
        x = patch_embeddings
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        x = x + self.position_embeddings_for(grid, interpolate_pos_encoding)
        return self.dropout(x)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        patches, grid = self.embed_patches(pixel_values)
        return self.add_positions(patches, grid, interpolate_pos_encoding)

    @torch.no_grad()
    def resize(self, image_size) -> None:
        """Resample the position embeddings for good to `image_size` (int or (height, width))."""
        ph, pw = self.patch_embeddings.patch_size
        height, width = _pair(image_size)
        if height % ph or width % pw:
            raise ValueError(
                f"`image_size` ({height}x{width}) must be divisible by the patch size ({ph}x{pw})."
            )
        new_grid = (height // ph, width // pw)
        resampled = resample_position_embeddings(
            self.position_embeddings.data,
            self.grid_size,
            new_grid,
            num_prefix_tokens=self.num_prefix_tokens,
            mode=self.config.position_embedding_interpolation,
            align_corners=self.config.position_embedding_align_corners,
        )
        self.position_embeddings = nn.Parameter(resampled, requires_grad=self.position_embeddings.requires_grad)
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
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax(q k^T * scaling + mask) v with explicit weights. (B, H, N, d) -> (B, N, H, d), (B, H, N, N)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    dropped = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(dropped, value).transpose(1, 2).contiguous()
    return output, weights


class ViTSelfAttention(nn.Module):
    """(B, N, D) -> (B, N, D) multi-head self-attention with a fused qkv projection, through any attention backend."""

    def __init__(self, config: ViTConfig, layer_idx: int = 0):
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

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, num_queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`num_queries`: attend from the first n tokens only (keys and values stay all N); output (B, n, D)."""
        batch, length, _ = hidden_states.shape
        if num_queries is None:
            qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        else:
            # Rows [0, D) of the fused kernel are q, [D, 3D) are k and v: project q for the first n tokens only.
            width = self.config.hidden_size
            weight, bias = self.qkv.weight, self.qkv.bias
            query = F.linear(hidden_states[:, :num_queries], weight[:width], None if bias is None else bias[:width])
            query = query.view(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, d)
            kv = F.linear(hidden_states, weight[width:], None if bias is None else bias[width:])
            key, value = kv.view(batch, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            length = num_queries

        implementation = self.config._attn_implementation or "sdpa"
        if output_attentions or implementation == "eager":
            # Whatever the backend, asking for the weights computes them (transformers' own ViT returns nothing
            # under sdpa); the output is the same attention, computed explicitly.
            attention_interface: Callable = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        output = self.o_proj(output.reshape(batch, length, -1))  # (B, N, H, d) -> (B, N, D)
        return output, (weights if output_attentions else None)


class ViTMLP(nn.Module):
    """(B, N, D) -> (B, N, D): dense, activation, dropout, dense (the block's trailing dropout is the layer's)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = _declare_init(nn.Linear(config.hidden_size, config.intermediate_size), "mlp")
        self.activation = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.fc2 = _declare_init(nn.Linear(config.intermediate_size, config.hidden_size), "mlp")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))


class ViTLayer(GradientCheckpointingLayer):
    """One pre-LN block: x + Dropout(MSA(LN(x))), then x + Dropout(MLP(LN(x))). (B, N, D) -> (B, N, D)."""

    def __init__(self, config: ViTConfig, layer_idx: int = 0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTSelfAttention(config, layer_idx)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, num_queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`num_queries`: compute the block's output for the first n tokens only, (B, N, D) -> (B, n, D)."""
        attention_output, weights = self.attention(self.layernorm_before(hidden_states), output_attentions, num_queries)
        if num_queries is not None:
            hidden_states = hidden_states[:, :num_queries]
        hidden_states = hidden_states + self.dropout(attention_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))
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


class ViTPooler(nn.Module):
    """(B, prefix + N, D) after the final LayerNorm -> (B, D') pooled representation.

    `pooling` chooses the vector ("cls": the class token; "gap": the mean of the patch tokens); with
    `representation_size` set, a tanh "pre-logits" layer follows, as in the paper's pre-training head.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.pooling = config.pooling
        self.num_prefix_tokens = config.num_prefix_tokens
        if config.representation_size is not None:
            self.dense = _declare_init(nn.Linear(config.hidden_size, config.representation_size), "lecun_normal")
            self.activation = nn.Tanh()
        else:
            self.dense = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden_states[:, 0]
        else:  # "gap": after the final LayerNorm, as the reference code (timm averages before its norm)
            pooled = hidden_states[:, self.num_prefix_tokens :].mean(dim=1)
        if self.dense is not None:
            pooled = self.activation(self.dense(pooled))
        return pooled


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
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ViTEmbeddings):
            init.normal_(module.position_embeddings, std=self.config.initializer_range)
            if module.cls_token is not None:
                init.zeros_(module.cls_token)

    # ----------------------------------------------------------------------------------------------------------------
    # Declarative training hints (the optimiser lives in hf_vit.training, never here).

    def no_weight_decay_parameter_names(self) -> set[str]:
        """Parameters the paper's recipes exclude from weight decay: biases, norms, position embeddings, class token."""
        names = set()
        for name, param in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if param.ndim <= 1 or leaf in ("position_embeddings", "cls_token") or "layernorm" in name:
                names.add(name)
        return names

    def parameter_layer_ids(self) -> dict[str, int]:
        """Depth of every parameter for layer-wise lr decay: 0 embeddings, 1..L blocks, L+1 final norm and heads."""
        num_layers = self.config.num_hidden_layers
        ids = {}
        for name, _ in self.named_parameters():
            if ".embeddings." in f".{name}":
                ids[name] = 0
            elif ".layers." in name:
                ids[name] = int(name.split(".layers.")[1].split(".")[0]) + 1
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
        self.config.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.config.validate_architecture()

    # ----------------------------------------------------------------------------------------------------------------
    # Loading transformers' own ViT and saving with remote code

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        r"""
        Load an hf_vit model, or a transformers "vit" checkpoint (its config and weights, both the 5.x and the legacy
        4.x key names, are translated; the model is then hf_vit's and saves in hf_vit's format).

        Everything else is `PreTrainedModel.from_pretrained`.
        """
        if kwargs.get("config") is None and pretrained_model_name_or_path is not None:
            if is_transformers_vit_config(pretrained_model_name_or_path, kwargs):
                config, state_dict, kwargs = load_transformers_vit(cls.config_class, pretrained_model_name_or_path, kwargs)
                return super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

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


# What `save_pretrained` writes into `auto_map`: every Auto class hf_vit registers.
AUTO_MAP = {
    "AutoConfig": "configuration_hf_vit.ViTConfig",
    "AutoModel": "modeling_hf_vit.ViTModel",
    "AutoModelForImageClassification": "modeling_hf_vit.ViTForImageClassification",
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
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
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
            Compute only what `pooler_output` needs. With class-token pooling the last block then runs its queries,
            projection and MLP on the class token alone (its keys and values still cover every token): the same
            numbers for ~1/L less work (~7% at B/16), and `last_hidden_state` holds the class token only. Ignored
            when hidden states or attentions are requested, or for the other poolings (they read every token).
        """
        if pixel_values is None:
            raise ValueError("`pixel_values` is required (a (batch, channels, height, width) float tensor).")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict

        weight = self.embeddings.patch_embeddings.projection.weight
        if pixel_values.dtype != weight.dtype:
            pixel_values = pixel_values.to(weight.dtype)
        embeddings = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        class_token_only = (
            pooled_only and self.config.pooling == "cls" and not output_attentions and not output_hidden_states
        )
        encoded = self.encoder(
            embeddings,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            last_layer_queries=1 if class_token_only else None,
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


class ViTForImageClassification(ViTPreTrainedModel):
    r"""
    ViT with the paper's classification head: pooling, the tanh pre-logits layer when `config.representation_size` is
    set (pre-training), then a linear classifier, zero-initialised when `config.head_zero_init` (fine-tuning).

    With `labels`, the loss follows `config.problem_type` (single-label cross-entropy, multi-label BCE, regression MSE),
    through transformers' `loss_function`.

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
        width = config.representation_size or config.hidden_size
        if config.num_labels > 0:
            self.classifier = _declare_init(
                nn.Linear(width, config.num_labels), "zeros" if config.head_zero_init else "lecun_normal"
            )
        else:
            self.classifier = nn.Identity()
        self.post_init()

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
            Class indices (single-label), multi-hot targets (multi-label) or values (regression, `num_labels == 1`).
        """
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
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "ViTForImageClassification",
    "ViTModel",
    "ViTPreTrainedModel",
    "resample_position_embeddings",
]
