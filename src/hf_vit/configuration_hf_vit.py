"""Configuration of the Vision Transformer (ViT paper, section 3.1 and Table 1)."""

import re

from transformers import PreTrainedConfig


# Table 1 of the paper, plus Ti and S from "How to train your ViT" / DeiT.
# name: (num_hidden_layers, hidden_size, intermediate_size, num_attention_heads)
VIT_VARIANTS = {
    "Ti": (12, 192, 768, 3),
    "S": (12, 384, 1536, 6),
    "B": (12, 768, 3072, 12),
    "L": (24, 1024, 4096, 16),
    "H": (32, 1280, 5120, 16),
}

POOLING_TYPES = ("cls", "gap")
POSITION_EMBEDDING_TYPES = ("learned_1d",)
INTERPOLATION_MODES = ("bilinear", "bicubic")
# The paper's names for the pooling ("classifier" in the reference code) map onto `pooling`.
_CLASSIFIER_ALIASES = {"token": "cls", "gap": "gap"}

_VARIANT_PATTERN = re.compile(r"^(?P<size>Ti|S|B|L|H)/(?P<patch>\d+)$")


def _pair(value):
    """An int or a 2-sequence as an (height, width) tuple."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value, value)


class ViTConfig(PreTrainedConfig):
    r"""
    Configuration of a hf_vit Vision Transformer. Every architecture choice of the paper lives here; training
    choices (learning rate, masking ratio, data) never do.

    Defaults follow the reference (JAX) code: ViT-B/16 at 224x224, the tanh approximation of GELU (Flax's
    default) and LayerNorm eps 1e-6.

    Args:
        image_size (`int` or `tuple[int, int]`, *optional*, defaults to 224):
            Input resolution the position embeddings are made for. Must be divisible by `patch_size`.
        patch_size (`int` or `tuple[int, int]`, *optional*, defaults to 16):
            Side of the square patches (P in the paper).
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input image.
        hidden_size (`int`, *optional*, defaults to 768):
            Width D of the token embeddings.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of encoder blocks L.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Heads per attention layer; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Hidden width of the MLP in each block.
        hidden_act (`str`, *optional*, defaults to `"gelu_pytorch_tanh"`):
            MLP activation, any key of `transformers.activations.ACT2FN`. `"gelu"` is the exact GELU of
            transformers' and timm's ViT; the reference code's is the tanh approximation.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after every dense layer except q/k/v, and after the position embeddings are added.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of every LayerNorm.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the position embeddings.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query/key/value projection has a bias.
        pooling (`str`, *optional*, defaults to `"cls"`):
            How the sequence becomes one vector: `"cls"` (class token) or `"gap"` (mean of the patch tokens after
            the final LayerNorm, as the reference code). The paper's `classifier="token"|"gap"` is accepted too.
        use_class_token (`bool`, *optional*):
            Whether a class token is prepended. Defaults to `pooling == "cls"`.
        representation_size (`int`, *optional*):
            Width of the tanh "pre-logits" layer of the pre-training head; `None` for the fine-tuning head (a single
            linear layer).
        head_zero_init (`bool`, *optional*, defaults to `True`):
            Whether the classifier starts at zero, as in the paper's fine-tuning.
        position_embedding_type (`str`, *optional*, defaults to `"learned_1d"`):
            `"learned_1d"`: one learned vector per position, the paper's default.
        position_embedding_interpolation (`str`, *optional*, defaults to `"bilinear"`):
            How position embeddings are resampled to another patch grid: `"bilinear"` or `"bicubic"`.
        position_embedding_align_corners (`bool`, *optional*, defaults to `True`):
            `True` is the reference code (`scipy.ndimage.zoom(order=1)`); `False` is timm's resampling.

    Example:

    ```python
    >>> from hf_vit import ViTConfig, ViTForImageClassification
    >>> config = ViTConfig.from_variant("S/16", image_size=32, num_labels=10)
    >>> model = ViTForImageClassification(config)
    >>> config.num_hidden_layers, config.hidden_size
    (12, 384)
    ```
    """

    model_type = "hf_vit"

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        num_channels=3,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu_pytorch_tanh",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,
        initializer_range=0.02,
        qkv_bias=True,
        pooling="cls",
        use_class_token=None,
        representation_size=None,
        head_zero_init=True,
        position_embedding_type="learned_1d",
        position_embedding_interpolation="bilinear",
        position_embedding_align_corners=True,
        **kwargs,
    ):
        classifier = kwargs.pop("classifier", None)
        if classifier is not None:
            if classifier not in _CLASSIFIER_ALIASES:
                raise ValueError(
                    f"`classifier` must be one of {sorted(_CLASSIFIER_ALIASES)} (the paper's names; `pooling` takes "
                    f"{list(POOLING_TYPES)}), got {classifier!r}."
                )
            pooling = _CLASSIFIER_ALIASES[classifier]
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.patch_size = list(patch_size) if isinstance(patch_size, (list, tuple)) else patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.qkv_bias = qkv_bias
        self.pooling = pooling
        self.use_class_token = (pooling == "cls") if use_class_token is None else use_class_token
        self.representation_size = representation_size
        self.head_zero_init = head_zero_init
        self.position_embedding_type = position_embedding_type
        self.position_embedding_interpolation = position_embedding_interpolation
        self.position_embedding_align_corners = position_embedding_align_corners
        super().__init__(**kwargs)
        self.validate_architecture()

    # ----------------------------------------------------------------------------------------------------------------
    # Derived quantities: the model reads these instead of recomputing them.

    @property
    def image_hw(self):
        """`image_size` as `(height, width)`."""
        return _pair(self.image_size)

    @property
    def patch_hw(self):
        """`patch_size` as `(height, width)`."""
        return _pair(self.patch_size)

    @property
    def grid_size(self):
        """Patch grid `(rows, cols)` at `image_size`."""
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        return (h // ph, w // pw)

    @property
    def token_pixel_size(self):
        """`(height, width)` in input pixels of the image area one patch token stands for (its stride on the image)."""
        return self.patch_hw

    @property
    def num_patches(self):
        rows, cols = self.grid_size
        return rows * cols

    @property
    def num_prefix_tokens(self):
        """Tokens before the patch tokens (the class token, when used)."""
        return int(self.use_class_token)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    # ----------------------------------------------------------------------------------------------------------------

    def validate_architecture(self):
        """Raise a `ValueError` naming the field when the architecture is not one hf_vit can build."""
        from transformers.activations import ACT2FN

        for name in ("num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            _check_positive_int(name, getattr(self, name))
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)) and len(value) != 2:
                raise ValueError(f"`{name}` must be an int or a pair [height, width], got {value!r}.")
            for v in _pair(value):
                _check_positive_int(name, v)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        for side, size, patch in zip(("height", "width"), self.image_hw, self.patch_hw):
            if size % patch != 0:
                raise ValueError(
                    f"`image_size` {side} ({size}) must be divisible by `patch_size` ({patch}); allowed are "
                    f"multiples of {patch}."
                )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1), got {value!r}.")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"`hidden_act` {self.hidden_act!r} is unknown; allowed are the keys of transformers' ACT2FN, e.g. "
                "'gelu_pytorch_tanh' (the reference code), 'gelu' (exact, transformers/timm), 'relu'."
            )
        _check_choice("pooling", self.pooling, POOLING_TYPES)
        _check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        _check_choice("position_embedding_interpolation", self.position_embedding_interpolation, INTERPOLATION_MODES)
        for name in ("qkv_bias", "use_class_token", "head_zero_init", "position_embedding_align_corners"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if self.pooling == "cls" and not self.use_class_token:
            raise ValueError("`pooling='cls'` needs `use_class_token=True`; use another `pooling` without it.")
        if self.representation_size is not None:
            _check_positive_int("representation_size", self.representation_size)

    @classmethod
    def from_variant(cls, name, **kwargs):
        r"""
        Build the config of a named variant in the paper's notation: `"{Ti,S,B,L,H}/{patch}"`, any patch size.

        Keyword arguments override the table (e.g. `image_size=384`, `num_labels=10`).

        Example:

        ```python
        >>> ViTConfig.from_variant("L/16", image_size=384).num_hidden_layers
        24
        ```
        """
        match = _VARIANT_PATTERN.match(name) if isinstance(name, str) else None
        if match is None:
            raise ValueError(
                f"Unknown variant {name!r}: expected '<size>/<patch>' with size in {list(VIT_VARIANTS)} and an "
                "integer patch size, e.g. 'B/16'."
            )
        layers, hidden, mlp, heads = VIT_VARIANTS[match["size"]]
        fields = dict(
            num_hidden_layers=layers,
            hidden_size=hidden,
            intermediate_size=mlp,
            num_attention_heads=heads,
            patch_size=int(match["patch"]),
        )
        fields.update(kwargs)
        return cls(**fields)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


__all__ = ["ViTConfig", "VIT_VARIANTS"]
