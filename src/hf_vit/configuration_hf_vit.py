"""Configuration of the Vision Transformer (ViT paper, section 3.1 and Table 1; hybrids, section 3.1 and 4.1;
the appendix's position-embedding and pooling options, appendix D.3 and D.4)."""

import math
import re

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin


# Table 1 of the paper, plus Ti and S from "How to train your ViT" / DeiT.
# name: (num_hidden_layers, hidden_size, intermediate_size, num_attention_heads)
VIT_VARIANTS = {
    "Ti": (12, 192, 768, 3),
    "S": (12, 384, 1536, 6),
    "B": (12, 768, 3072, 12),
    "L": (24, 1024, 4096, 16),
    "H": (32, 1280, 5120, 16),
}

# Hybrids of the reference code (vit_jax/configs/models.py): name -> (ViT size, ResNet stage depths, patch size on
# the feature map, dropout). The "/16" or "/32" of a hybrid's name is its nominal token stride, not a patch size.
# NOTE: "R-Ti/16" is the reference's "R+ViT-Ti_16": the stem alone (stride 4) and 8x8 patches, an effective stride of
# 32, although the reference's comment says 16; hf_vit builds what the reference code builds.
HYBRID_VARIANTS = {
    "R50+B/16": ("B", [3, 4, 9], 1, 0.1),
    "R50+L/32": ("L", [3, 4, 6, 3], 1, 0.1),
    "R26+S/32": ("S", [2, 2, 2, 2], 1, 0.0),
    "R26+B/32": ("B", [2, 2, 2, 2], 1, 0.0),
    "R-Ti/16": ("Ti", [], 8, 0.0),
}

POOLING_TYPES = ("cls", "gap", "max", "gem", "ggem", "map", "cls_and_gap")
# Poolings that read the class token (so `use_class_token` defaults to True for them).
CLASS_TOKEN_POOLINGS = ("cls", "cls_and_gap")
POSITION_EMBEDDING_TYPES = ("learned_1d", "none", "learned_2d", "relative", "sincos_2d")
# Position-embedding types with learned tables tied to the patch grid: a new grid needs resampling (and the flag).
GRID_BOUND_POSITION_TYPES = ("learned_1d", "learned_2d", "relative")
INTERPOLATION_MODES = ("bilinear", "bicubic")
WEIGHT_STANDARDIZATION_STYLES = ("std_plus_eps", "sqrt_var_plus_eps")
# Masked patch prediction targets (appendix B.1.2): 3-bit mean colour (the paper's), 4x4 sub-patch 3-bit colours,
# or L2 regression of the patch's pixels.
MPP_TARGETS = ("mean_color", "downsampled", "pixels")
# The 2-D sin-cos position table's frequencies: big_vision's w_k = T^(-k / (D/4 - 1)) or MAE's w_k = T^(-k / (D/4)).
SINCOS_STYLES = ("big_vision", "mae")
# The block's MLP: "dense" (fc1, activation, fc2: the paper's) or "gated" (activation(x W_gate) * (x W_up), then fc2:
# with hidden_act="silu" the SwiGLU MLP of DINOv2-g).
MLP_TYPES = ("dense", "gated")
# The paper's names for the pooling ("classifier" in the reference code) map onto `pooling`.
_CLASSIFIER_ALIASES = {"token": "cls", "gap": "gap"}

# ViTImageProcessor's normalisation (the paper's [-1, 1] input): what `ViTConfig.image_mean` / `image_std` default to.
DEFAULT_IMAGE_MEAN = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_STD = (0.5, 0.5, 0.5)

# The ResNet stem downsamples 4x (7x7/2 conv, 3x3/2 max-pool); every stage after the first halves again.
STEM_STRIDE = 4

_VARIANT_PATTERN = re.compile(r"^(?:ViT-)?(?P<size>Ti|S|B|L|H)/(?P<patch>\d+)$")
# Any stage list: "R[3,4,9]+B/1" (the number after "/" is the patch size on the feature map), "R[]+Ti/8".
_HYBRID_PATTERN = re.compile(r"^R\[(?P<depths>[\d,\s]*)\]\+(?:ViT-)?(?P<size>Ti|S|B|L|H)/(?P<patch>\d+)$")


def _as_list(value):
    """A number or a sequence of numbers as a list (how the processor's `image_mean` / `image_std` are stored)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _per_channel(value, num_channels):
    """
    `_as_list(value)`, kept once for a greyscale model when every value is the same: processors store three values
    (e.g. [0.5, 0.5, 0.5]) also for one-channel images, and equal values mean one normalisation.
    """
    values = _as_list(value)
    if num_channels == 1 and len(values) > 1 and len(set(values)) == 1:
        return values[:1]
    return values


def as_pair(value):
    """An int or a 2-sequence as an (height, width) tuple."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value, value)


class ViTConfig(BackboneConfigMixin, PreTrainedConfig):
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
            How the sequence becomes one vector, always from the tokens after the final LayerNorm:
            `"cls"` (the class token, the paper's default); `"gap"` (mean of the patch tokens, as the reference code;
            appendix D.3); `"max"` (channel-wise max over the patch tokens); `"gem"` (generalized mean with one
            learnable exponent); `"ggem"` (generalized mean with one learnable exponent per group of channels,
            groups = attention heads, as in the GGeM paper); `"map"` (big_vision's MAPHead: a learned probe attends
            over the patch tokens, then x + MLP(LN(x))); `"cls_and_gap"` (the class token concatenated with the mean of
            the patch tokens, a 2 * hidden_size vector: DINOv2's linear classification head). The patch-token poolings
            never read the prefix tokens (class, distillation, registers). The paper's `classifier="token"|"gap"` is
            accepted too.
        use_class_token (`bool`, *optional*):
            Whether a class token is prepended. Defaults to True for the poolings that read it (`"cls"`,
            `"cls_and_gap"`); the other poolings ignore it.
        use_distillation_token (`bool`, *optional*, defaults to `False`):
            DeiT's distillation token: a second learned token right after the class token, with its own row in the
            `"learned_1d"` position table. Needs `use_class_token=True`.
        use_distillation_head (`bool`, *optional*):
            For `ViTForImageClassification`: a second linear head on the distillation token's output (after the final
            LayerNorm). The logits are the mean of the two heads' (DeiT's inference), each head's logits are returned
            too (`cls_logits`, `distillation_logits`), and the loss with `labels` is that of the averaged logits
            (training against a teacher is not part of the model). Defaults to `use_distillation_token`; `False`
            keeps the token without a head of its own (transformers' `DeiTForImageClassification`).
        num_register_tokens (`int`, *optional*, defaults to 0):
            Learned "register" tokens (Darcet et al., "Vision Transformers Need Registers"; DINOv2 with registers)
            inserted after the class (and distillation) token, after the position embeddings were added: they have
            no position embedding, take no part in pooling and are not laid out on the patch grid.
        layer_scale_init_value (`float`, *optional*):
            LayerScale (CaiT; DINOv2, DeiT III): a learned per-channel scale on each residual branch's output (attention
            and MLP), initialised to this value. `None` (the paper) for no scale.
        mlp_type (`str`, *optional*, defaults to `"dense"`):
            The block's MLP: `"dense"` (fc1, `hidden_act`, fc2; the paper's) or `"gated"` (`hidden_act(x W_gate) *
            (x W_up)`, then fc2, with W_gate and W_up packed in `fc1` as its first and second halves: with
            `hidden_act="silu"` the SwiGLU MLP of DINOv2-g). `intermediate_size` is the width of each half.
        layer_norm_after_pooling (`bool`, *optional*, defaults to `False`):
            Where the final LayerNorm sits: `False` (the paper) normalises every token after the last block;
            `True` pools the un-normalised tokens and normalises the pooled vector with a LayerNorm of its own (timm's
            `fc_norm`; MAE's fine-tuning with `pooling="gap"`). `last_hidden_state` then holds the tokens as the
            last block outputs them.
        gem_p_init (`float`, *optional*, defaults to 3.0):
            Initial exponent of `"gem"` and `"ggem"` pooling (3, as in the GeM paper).
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth: the rate at which a block's residual branches are dropped per sample, growing linearly
            from 0 at the first block to this value at the last (as timm and DeiT). 0 is the paper.
        patch_drop_rate (`float`, *optional*, defaults to 0.0):
            Token dropping in training: the share of the patch tokens removed at random from each image (after the
            position information is added, so the kept tokens keep their positions; the class, distillation and
            register tokens are always kept), which both regularises and makes every training step cheaper. 0 (the
            paper) keeps them all; evaluation always uses every token. Not with `position_embedding_type="relative"`
            (its attention bias is laid out on the whole grid). `ViTBackbone` (its feature maps need the whole grid)
            and `ViTForMaskedPatchPrediction` (it predicts at grid positions) ignore it.
        representation_size (`int`, *optional*):
            Width of the tanh "pre-logits" layer of the pre-training head; `None` for the fine-tuning head (a single
            linear layer).
        head_zero_init (`bool`, *optional*, defaults to `True`):
            Whether the classifier starts at zero, as in the paper's fine-tuning.
        position_embedding_type (`str`, *optional*, defaults to `"learned_1d"`):
            The paper's appendix D.4 options: `"learned_1d"` (one learned vector per position, the default);
            `"none"`; `"learned_2d"` (two learned tables of width D/2, one per column and one per row, concatenated
            per patch); `"relative"` (1-D relative attention: a learned embedding per offset between two tokens,
            used as keys against the query, whose logits are added to the attention logits); `"sincos_2d"` (fixed,
            as big_vision's `posemb_sincos_2d`). Only `"learned_1d"` gives the class token a position embedding
            (for the others it is a learned vector on its own, as in big_vision).
        position_embedding_interpolation (`str`, *optional*, defaults to `"bilinear"`):
            How position embeddings are resampled to another patch grid: `"bilinear"` or `"bicubic"`.
        position_embedding_align_corners (`bool`, *optional*, defaults to `True`):
            `True` is the reference code (`scipy.ndimage.zoom(order=1)`); `False` is timm's resampling.
        position_embedding_antialias (`bool`, *optional*, defaults to `False`):
            Resample with torch's anti-aliased kernels (`F.interpolate(..., antialias=True)`: for bicubic, the
            Keys kernel with a = -0.5 in both directions; without it a = -0.75). transformers' DeiT, ViT-MAE and
            DINOv2 resample with bicubic, `align_corners=False`, no antialias; DINOv2 with registers and timm with
            antialias.
        position_embedding_sincos_style (`str`, *optional*, defaults to `"big_vision"`):
            The frequencies of `"sincos_2d"`: `"big_vision"` (big_vision's `posemb_sincos_2d`, MoCo v3:
            w_k = 10000^(-k / (D/4 - 1)), k = 0..D/4-1) or `"mae"` (MAE's `get_2d_sincos_pos_embed`:
            w_k = 10000^(-k / (D/4))). Both lay each patch out as [sin(x w), cos(x w), sin(y w), cos(y w)] with x the
            column and y the row.
        backbone_depths (`list[int]`, *optional*):
            The hybrid (section 3.1): `None` for the plain ViT; otherwise the number of bottleneck units of each
            ResNet stage after the stem (`[]` = the stem alone, `[3, 4, 9]` = R50+B/16's, `[3, 4, 6, 3]` = ResNet-50).
            The ResNet's feature map is then cut into `patch_size` patches (1x1 in the paper).
        backbone_width_factor (`float`, *optional*, defaults to 1):
            Width multiplier of the ResNet: the stem has `64 * backbone_width_factor` channels, stage i outputs
            `256 * backbone_width_factor * 2**i`. Must make the stem width an integer divisible by
            `backbone_num_groups`.
        backbone_num_groups (`int`, *optional*, defaults to 32):
            Groups of every GroupNorm of the ResNet.
        backbone_group_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the ResNet's GroupNorms: 1e-6 is Flax's, the reference code's; timm and transformers' BiT
            use 1e-5.
        backbone_weight_standardization (`str`, *optional*, defaults to `"std_plus_eps"`):
            How the ResNet's convolution kernels are standardised: `"std_plus_eps"` is the reference code,
            `(w - mean) / (std + eps)`; `"sqrt_var_plus_eps"` is BiT's, timm's and transformers',
            `(w - mean) / sqrt(var + eps)`.
        backbone_weight_standardization_eps (`float`, *optional*, defaults to 1e-5):
            The eps of the weight standardisation: 1e-5 in the reference code, 1e-8 in timm and transformers.
        mpp_target (`str`, *optional*, defaults to `"mean_color"`):
            For `ViTForMaskedPatchPrediction` (appendix B.1.2): what each corrupted patch predicts, which fixes the
            head's shape: `"mean_color"` (its mean colour, each channel quantised to 3 bits: 512 classes for RGB, the
            paper's), `"downsampled"` (the patch pooled to 4x4 sub-patches, 16 predictions of 512 colours) or
            `"pixels"` (L2 regression of the patch's values). The other model classes ignore it.
        image_mean (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`), image_std (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            The normalisation of the image processor the model is used with (1 or `num_channels` values each; for a
            greyscale model equal values are kept once, e.g. `[0.5]`), which
            `ViTForMaskedPatchPrediction` inverts to compute its colour targets from `pixel_values` (`pixel_values *
            image_std + image_mean` is the image in [0, 1]). The defaults are `ViTImageProcessor`'s; the recipes
            record their processor's values here (`record_image_normalization`) before the model is trained and saved.
        decoder_hidden_size (`int`, *optional*, defaults to 512):
            For `ViTForMaskedAutoencoding` (MAE): width of the decoder (MAE's and transformers' ViT-MAE default).
        decoder_num_hidden_layers (`int`, *optional*, defaults to 8):
            For `ViTForMaskedAutoencoding`: number of decoder blocks.
        decoder_num_attention_heads (`int`, *optional*, defaults to 16):
            For `ViTForMaskedAutoencoding`: heads per decoder attention layer; must divide `decoder_hidden_size`.
        decoder_intermediate_size (`int`, *optional*, defaults to 2048):
            For `ViTForMaskedAutoencoding`: hidden width of the decoder blocks' MLP.
        mask_ratio (`float`, *optional*, defaults to 0.75):
            For `ViTForMaskedAutoencoding`: the share of each image's patches hidden from the encoder when the model
            draws the masking itself (MAE's 75%; transformers' ViT-MAE `mask_ratio`). `int(N * (1 - mask_ratio))`
            patches are kept. Masked patch prediction's rate is its collator's (`MaskedPatchArguments.mask_ratio`).
        norm_pix_loss (`bool`, *optional*, defaults to `True`):
            For `ViTForMaskedAutoencoding`: reconstruct each masked patch's pixels normalised by the patch's own mean
            and standard deviation (MAE's default, its better representation) rather than the raw `pixel_values`.
        out_features (`list[str]`, *optional*), out_indices (`list[int]`, *optional*):
            For `ViTBackbone`: which stages give feature maps, by name (`"stem"` = the embeddings, `"stage{i}"` =
            the output of block i) or index. Defaults to the last block.

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
        gem_p_init=3.0,
        drop_path_rate=0.0,
        patch_drop_rate=0.0,
        backbone_depths=None,
        backbone_width_factor=1,
        backbone_num_groups=32,
        backbone_group_norm_eps=1e-6,
        backbone_weight_standardization="std_plus_eps",
        backbone_weight_standardization_eps=1e-5,
        mpp_target="mean_color",
        use_distillation_token=False,
        use_distillation_head=None,
        num_register_tokens=0,
        layer_scale_init_value=None,
        mlp_type="dense",
        layer_norm_after_pooling=False,
        position_embedding_antialias=False,
        position_embedding_sincos_style="big_vision",
        image_mean=None,
        image_std=None,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=2048,
        mask_ratio=0.75,
        norm_pix_loss=True,
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
        self.use_class_token = (pooling in CLASS_TOKEN_POOLINGS) if use_class_token is None else use_class_token
        self.representation_size = representation_size
        self.head_zero_init = head_zero_init
        self.position_embedding_type = position_embedding_type
        self.position_embedding_interpolation = position_embedding_interpolation
        self.position_embedding_align_corners = position_embedding_align_corners
        self.gem_p_init = gem_p_init
        self.drop_path_rate = drop_path_rate
        self.patch_drop_rate = patch_drop_rate
        self.backbone_depths = list(backbone_depths) if isinstance(backbone_depths, (list, tuple)) else backbone_depths
        self.backbone_width_factor = backbone_width_factor
        self.backbone_num_groups = backbone_num_groups
        self.backbone_group_norm_eps = backbone_group_norm_eps
        self.backbone_weight_standardization = backbone_weight_standardization
        self.backbone_weight_standardization_eps = backbone_weight_standardization_eps
        self.mpp_target = mpp_target
        self.use_distillation_token = use_distillation_token
        self.use_distillation_head = use_distillation_token if use_distillation_head is None else use_distillation_head
        self.num_register_tokens = num_register_tokens
        self.layer_scale_init_value = layer_scale_init_value
        self.mlp_type = mlp_type
        self.layer_norm_after_pooling = layer_norm_after_pooling
        self.position_embedding_antialias = position_embedding_antialias
        self.position_embedding_sincos_style = position_embedding_sincos_style
        self.image_mean = _per_channel(DEFAULT_IMAGE_MEAN if image_mean is None else image_mean, num_channels)
        self.image_std = _per_channel(DEFAULT_IMAGE_STD if image_std is None else image_std, num_channels)
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        # ViTBackbone's stage selection (transformers' BackboneConfigMixin); None until chosen, so a plain config's
        # JSON does not change. `stage_names` is derived from the depth (a property).
        out_features, out_indices = kwargs.pop("out_features", None), kwargs.pop("out_indices", None)
        kwargs.pop("stage_names", None)
        self._out_features, self._out_indices = None, None
        # Ours first: transformers' own checks (run by PreTrainedConfig.__init__) read derived values such as
        # `head_dim`, which for a bad field would fail with a ZeroDivisionError or TypeError naming no field.
        self.validate_architecture()
        super().__init__(**kwargs)
        if out_features is not None or out_indices is not None:
            self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

    # ----------------------------------------------------------------------------------------------------------------
    # Derived quantities: the model reads these instead of recomputing them.

    @property
    def image_hw(self):
        """`image_size` as `(height, width)`."""
        return as_pair(self.image_size)

    @property
    def patch_hw(self):
        """`patch_size` as `(height, width)`."""
        return as_pair(self.patch_size)

    @property
    def is_hybrid(self):
        """Whether the tokens come from a ResNet feature map (section 3.1's hybrid)."""
        return self.backbone_depths is not None

    @property
    def backbone_stride(self):
        """Downsampling of the hybrid's ResNet (4 for the stem, x2 per stage after the first); 1 for the plain ViT."""
        if not self.is_hybrid:
            return 1
        return STEM_STRIDE * 2 ** max(len(self.backbone_depths) - 1, 0)

    @property
    def backbone_stem_width(self):
        """Channels of the hybrid's stem, `64 * backbone_width_factor` (the reference's `int(64 * width_factor)`)."""
        return int(round(64 * self.backbone_width_factor))

    @property
    def backbone_out_channels(self):
        """Channels of the feature map the hybrid's patches are cut from."""
        width = self.backbone_stem_width
        if not self.backbone_depths:
            return width
        return 4 * width * 2 ** (len(self.backbone_depths) - 1)

    @property
    def grid_size(self):
        """Token grid `(rows, cols)` at `image_size` (patches of the image, or of the hybrid's feature map)."""
        (h, w), (th, tw) = self.image_hw, self.token_pixel_size
        return (h // th, w // tw)

    @property
    def token_pixel_size(self):
        """`(height, width)` in input pixels of the image area one patch token stands for (its stride on the image):
        the patch size, times the ResNet's stride for a hybrid."""
        ph, pw = self.patch_hw
        stride = self.backbone_stride
        return (ph * stride, pw * stride)

    @property
    def stage_names(self):
        """`ViTBackbone` stages: "stem" (the embeddings) and "stage1".."stageL" (the output of each block)."""
        return ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]

    @stage_names.setter
    def stage_names(self, value):
        # Derived from num_hidden_layers; transformers may try to set it when loading. Only a consistent value is OK.
        if value is not None and list(value) != self.stage_names:
            raise ValueError(
                f"`stage_names` is derived from `num_hidden_layers` ({self.stage_names[0]}..{self.stage_names[-1]}); "
                f"got {value!r}."
            )

    @property
    def num_patches(self):
        rows, cols = self.grid_size
        return rows * cols

    @property
    def num_prefix_tokens(self):
        """Tokens before the patch tokens, in this order: the class token, the distillation token, the registers.
        The single source of that count for the model, its heads and whoever slices the sequence."""
        return int(self.use_class_token) + int(self.use_distillation_token) + self.num_register_tokens

    @property
    def num_prefix_positions(self):
        """Rows of the `"learned_1d"` position table before the patch rows: the class and distillation tokens'
        (registers get no position embedding)."""
        return int(self.use_class_token) + int(self.use_distillation_token)

    @property
    def pooled_size(self):
        """Width of the pooled vector before the pre-logits layer: 2 * hidden_size for `"cls_and_gap"`."""
        return 2 * self.hidden_size if self.pooling == "cls_and_gap" else self.hidden_size

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
            for v in as_pair(value):
                _check_positive_int(name, v)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        self._validate_backbone()
        for side, size, patch, token in zip(("height", "width"), self.image_hw, self.patch_hw, self.token_pixel_size):
            if size % token != 0:
                if self.is_hybrid:
                    raise ValueError(
                        f"`image_size` {side} ({size}) must be divisible by the token size {token} (the ResNet's "
                        f"stride {self.backbone_stride} x `patch_size` {patch}); allowed are multiples of {token}."
                    )
                raise ValueError(
                    f"`image_size` {side} ({size}) must be divisible by `patch_size` ({patch}); allowed are "
                    f"multiples of {patch}."
                )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate", "patch_drop_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1), got {value!r}.")
        if self.patch_drop_rate and self.position_embedding_type == "relative":
            raise ValueError(
                "`patch_drop_rate` removes patch tokens, but `position_embedding_type='relative'` lays its attention "
                "bias out over the whole token grid, which cannot follow the kept tokens; use another "
                "position_embedding_type or patch_drop_rate 0."
            )
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
        _check_choice("mpp_target", self.mpp_target, MPP_TARGETS)
        _check_choice("mlp_type", self.mlp_type, MLP_TYPES)
        _check_choice("position_embedding_sincos_style", self.position_embedding_sincos_style, SINCOS_STYLES)
        self._validate_masked_image_modeling()
        for name in (
            "qkv_bias", "use_class_token", "head_zero_init", "position_embedding_align_corners",
            "position_embedding_antialias", "use_distillation_token", "use_distillation_head",
            "layer_norm_after_pooling",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if self.pooling in CLASS_TOKEN_POOLINGS and not self.use_class_token:
            raise ValueError(
                f"`pooling={self.pooling!r}` reads the class token and needs `use_class_token=True`; use another "
                "`pooling` without it."
            )
        self._validate_prefix_tokens()
        scale = self.layer_scale_init_value
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
            raise ValueError(
                f"`layer_scale_init_value` must be None (no LayerScale) or a positive number such as 1e-5 or 1.0, "
                f"got {scale!r}."
            )
        if self.representation_size is not None:
            _check_positive_int("representation_size", self.representation_size)
        if isinstance(self.gem_p_init, bool) or not isinstance(self.gem_p_init, (int, float)) or self.gem_p_init <= 0:
            raise ValueError(f"`gem_p_init` must be a positive number, got {self.gem_p_init!r}.")
        if self.position_embedding_type == "learned_2d" and self.hidden_size % 2:
            raise ValueError(
                f"`position_embedding_type='learned_2d'` concatenates two tables of width hidden_size/2: `hidden_size` "
                f"must be even, got {self.hidden_size}."
            )
        if self.position_embedding_type == "sincos_2d" and (self.hidden_size % 4 or self.hidden_size < 8):
            raise ValueError(
                f"`position_embedding_type='sincos_2d'` uses hidden_size/4 frequencies per sin/cos and axis: "
                f"`hidden_size` must be a multiple of 4 and at least 8, got {self.hidden_size}."
            )

    def _validate_masked_image_modeling(self):
        """The processor normalisation masked patch prediction inverts, and the MAE decoder and objective."""
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) not in (1, self.num_channels) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise ValueError(
                    f"`{name}` must hold 1 or `num_channels` ({self.num_channels}) numbers (the image processor's "
                    f"normalisation), got {values!r}."
                )
        if not all(v > 0 for v in self.image_std):
            raise ValueError(f"`image_std` values must be positive, got {self.image_std!r}.")
        for name in ("decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                     "decoder_intermediate_size"):
            _check_positive_int(name, getattr(self, name))
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"`decoder_hidden_size` ({self.decoder_hidden_size}) must be divisible by `decoder_num_attention_heads` "
                f"({self.decoder_num_attention_heads})."
            )
        if self.decoder_hidden_size % 4:
            raise ValueError(
                f"`decoder_hidden_size` ({self.decoder_hidden_size}) must be a multiple of 4: the decoder's 2-D sin-cos "
                "position table uses decoder_hidden_size/4 frequencies per sin/cos and axis."
            )
        ratio = self.mask_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be a share of the patches in [0, 1) (MAE: 0.75), got {ratio!r}.")
        if not isinstance(self.norm_pix_loss, bool):
            raise ValueError(f"`norm_pix_loss` must be True or False, got {self.norm_pix_loss!r}.")

    def record_image_normalization(self, image_processor) -> None:
        """
        Record the normalisation of the image processor this model is trained and saved with (`image_mean`,
        `image_std`; mean 0 and std 1 when the processor does not normalise), so that the model can recover the
        [0, 1] image from `pixel_values` (masked patch prediction's colour targets). The recipes call it for the
        processor they save beside the model.
        """
        if getattr(image_processor, "do_normalize", True):
            mean, std = _as_list(image_processor.image_mean), _as_list(image_processor.image_std)
        else:
            mean, std = [0.0], [1.0]
        previous = (self.image_mean, self.image_std)
        self.image_mean = [float(v) for v in _per_channel(mean, self.num_channels)]
        self.image_std = [float(v) for v in _per_channel(std, self.num_channels)]
        try:
            self._validate_masked_image_modeling()
        except ValueError:
            self.image_mean, self.image_std = previous
            raise

    def _validate_prefix_tokens(self):
        registers = self.num_register_tokens
        if isinstance(registers, bool) or not isinstance(registers, int) or registers < 0:
            raise ValueError(f"`num_register_tokens` must be an integer >= 0 (0: none), got {registers!r}.")
        if self.use_distillation_token and not self.use_class_token:
            raise ValueError(
                "`use_distillation_token=True` needs `use_class_token=True`: the distillation token follows the class "
                "token (DeiT)."
            )
        if self.use_distillation_head:
            if not self.use_distillation_token:
                raise ValueError("`use_distillation_head=True` needs `use_distillation_token=True` (the head reads it).")
            if self.representation_size is not None:
                raise ValueError(
                    "`use_distillation_head=True` with `representation_size`: the distillation head reads the "
                    "distillation token directly and has no pre-logits layer; set `representation_size=None`."
                )
            if self.layer_norm_after_pooling:
                raise ValueError(
                    "`use_distillation_head=True` with `layer_norm_after_pooling=True`: the distillation head reads the "
                    "distillation token after the final LayerNorm over the tokens; set `layer_norm_after_pooling=False`."
                )

    def _validate_backbone(self):
        depths = self.backbone_depths
        if depths is None:
            return
        if not isinstance(depths, (list, tuple)):
            raise ValueError(
                f"`backbone_depths` must be None (plain ViT) or a list of stage depths such as [3, 4, 9] ([] for the "
                f"stem alone), got {depths!r}."
            )
        for depth in depths:
            if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
                raise ValueError(f"`backbone_depths` must hold positive integers, got {list(depths)!r}.")
        factor = self.backbone_width_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
            raise ValueError(f"`backbone_width_factor` must be a positive number, got {factor!r}.")
        if not math.isclose(64 * factor, round(64 * factor), abs_tol=1e-9):
            raise ValueError(
                f"`backbone_width_factor` ({factor}) must make the stem width 64 * factor an integer, e.g. 1, 2, 0.5."
            )
        _check_positive_int("backbone_num_groups", self.backbone_num_groups)
        if self.backbone_stem_width % self.backbone_num_groups:
            raise ValueError(
                f"The ResNet's stem width ({self.backbone_stem_width} = 64 * `backbone_width_factor`) must be divisible "
                f"by `backbone_num_groups` ({self.backbone_num_groups})."
            )
        for name in ("backbone_group_norm_eps", "backbone_weight_standardization_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
        _check_choice("backbone_weight_standardization", self.backbone_weight_standardization, WEIGHT_STANDARDIZATION_STYLES)

    @classmethod
    def from_variant(cls, name, **kwargs):
        r"""
        Build the config of a named variant in the paper's notation. Keyword arguments override the table (e.g.
        `image_size=384`, `num_labels=10`).

        - Plain: `"{Ti,S,B,L,H}/{patch}"`, any patch size (`"B/16"`; `"ViT-B/16"` too).
        - The reference code's hybrids, with its patch sizes and dropout: `"R50+B/16"` (stages 3, 4, 9; 1x1 patches),
          `"R50+L/32"` (3, 4, 6, 3), `"R26+S/32"` and `"R26+B/32"` (2, 2, 2, 2), `"R-Ti/16"` (the stem alone, 8x8
          patches). `"R50+ViT-B/16"` is accepted too.
        - Any stage list: `"R[{depths}]+{size}/{patch}"`, where the number after "/" is the patch size on the ResNet's
          feature map (as for a plain ViT, the patch size): `"R[3,4,9]+B/1"` is R50+B/16's architecture (without its
          dropout), `"R[]+Ti/8"` is R-Ti/16's, `"R[2,2]+Ti/2"` has stride 8 x 2 = 16 pixels per token.

        Example:

        ```python
        >>> ViTConfig.from_variant("L/16", image_size=384).num_hidden_layers
        24
        >>> ViTConfig.from_variant("R50+B/16").token_pixel_size
        (16, 16)
        ```
        """
        if not isinstance(name, str):
            raise ValueError(f"Unknown variant {name!r}: expected a string such as 'B/16' or 'R50+B/16'.")
        key = name.replace("+ViT-", "+")
        fields = {}
        if key in HYBRID_VARIANTS:
            size, depths, patch, dropout = HYBRID_VARIANTS[key]
            fields.update(backbone_depths=list(depths), hidden_dropout_prob=dropout)
        elif key.startswith("R"):
            match = _HYBRID_PATTERN.match(key)
            if match is None:
                raise ValueError(
                    f"Unknown variant {name!r}: hybrids are {list(HYBRID_VARIANTS)} or 'R[<stage depths>]+<size>/"
                    f"<patch on the feature map>' with size in {list(VIT_VARIANTS)}, e.g. 'R[3,4,9]+B/1' or 'R[]+Ti/8'."
                )
            text = match["depths"].strip()
            depths = [int(d) for d in text.split(",")] if text else []
            if any(d <= 0 for d in depths):
                raise ValueError(f"Unknown variant {name!r}: stage depths must be positive integers.")
            size, patch = match["size"], int(match["patch"])
            fields.update(backbone_depths=depths)
        else:
            match = _VARIANT_PATTERN.match(key)
            if match is None:
                raise ValueError(
                    f"Unknown variant {name!r}: expected '<size>/<patch>' with size in {list(VIT_VARIANTS)} and an "
                    f"integer patch size, e.g. 'B/16', or a hybrid: {list(HYBRID_VARIANTS)} or 'R[3,4,9]+B/1'."
                )
            size, patch = match["size"], int(match["patch"])
        layers, hidden, mlp, heads = VIT_VARIANTS[size]
        fields.update(
            num_hidden_layers=layers,
            hidden_size=hidden,
            intermediate_size=mlp,
            num_attention_heads=heads,
            patch_size=patch,
        )
        fields.update(kwargs)
        return cls(**fields)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


__all__ = ["HYBRID_VARIANTS", "SINCOS_STYLES", "ViTConfig", "VIT_VARIANTS"]
