"""The original ViT checkpoints (google-research/vision_transformer, `vit_jax`): `.npz` key map (ViT paper, section 3.1).

Layout of a released file (`ViT-B_16.npz`, `imagenet21k+imagenet2012_ViT-B_16.npz`, the AugReg files), D = width,
H = heads, d = D / H, P = patch size, C = input channels:

    embedding/kernel (P, P, C, D)  embedding/bias (D,)                 the patch projection (a conv, HWIO)
    cls (1, 1, D)                                                      only with classifier="token"
    Transformer/posembed_input/pos_embedding (1, [1 +] N, D)           the class token's row first
    Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias} (D,)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}/kernel (D, H, d), bias (H, d)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/kernel (H, d, D), bias (D,)
    Transformer/encoderblock_{i}/LayerNorm_2/{scale,bias} (D,)
    Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/kernel (D, MLP), bias (MLP,); Dense_1 (MLP, D), (D,)
    Transformer/encoder_norm/{scale,bias} (D,)
    pre_logits/kernel (D, R), bias (R,)                                the in21k pre-training head's tanh layer
    head/kernel (R or D, K), bias (K,)

Hybrids (R50+ViT-B/16, R26+ViT-S/32, R+ViT-Ti/16, ...) add the reference ResNet (`models_resnet.py`) before the
patch embedding, whose kernel then reads the feature map (W = 64 x width factor, m = W * 2**s for stage s):

    conv_root/kernel (7, 7, C, W)      gn_root/{scale,bias} (W,)         the stem (weight-standardised conv, GN)
    block{s+1}/unit{u+1}/conv1/kernel (1, 1, in, m)    gn1/{scale,bias} (m,)
    block{s+1}/unit{u+1}/conv2/kernel (3, 3, m, m)     gn2/{scale,bias} (m,)
    block{s+1}/unit{u+1}/conv3/kernel (1, 1, m, 4m)    gn3/{scale,bias} (4m,)
    block{s+1}/unit1/conv_proj/kernel (1, 1, in, 4m)   gn_proj/{scale,bias} (4m,)   the first unit's shortcut

GroupNorm parameters of files written by Flax before 0.3.6 are (1, 1, 1, C); both shapes are read.

The released files were written by pre-linen Flax, whose module counter runs across module types
(`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`); the same code run with today's Flax writes
`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0` (vit_jax's own loader renames the former into the
latter with `convert_pre_linen`). Both numberings are read. Checkpoints saved from a Flax optimizer carry the same
keys under `opt/target/`.

The model is the paper's: tanh-approximated GELU (Flax's `nn.gelu`) and LayerNorm eps 1e-6, which are hf_vit's
defaults, so a converted checkpoint reproduces the original model's logits.
"""

from __future__ import annotations

import re

from ..configuration_hf_vit import STEM_STRIDE
from .keymap import (
    ConversionError,
    Rule,
    attention_out_kernel,
    conv_kernel,
    dense_kernel,
    flatten,
    identity,
    qkv_bias,
    qkv_kernel,
    rule,
)


FORMAT = "vit_jax"
# Key prefixes a vit_jax checkpoint is found under: plain files, and Flax optimizer checkpoints.
PREFIXES = ("", "opt/target/")
ANCHOR = "Transformer/posembed_input/pos_embedding"

# Module names inside an encoder block, per Flax naming scheme (see the module docstring).
NUMBERINGS = {
    "released": {
        "norm1": "LayerNorm_0",
        "attention": "MultiHeadDotProductAttention_1",
        "norm2": "LayerNorm_2",
        "mlp": "MlpBlock_3",
    },
    "linen": {
        "norm1": "LayerNorm_0",
        "attention": "MultiHeadDotProductAttention_0",
        "norm2": "LayerNorm_1",
        "mlp": "MlpBlock_0",
    },
}

_QKV = ("query", "key", "value")
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_RESNET_UNIT = re.compile(r"^block(\d+)/unit(\d+)/")


def find_prefix(source) -> str | None:
    """The prefix under which `source` holds a vit_jax checkpoint, or None when it does not."""
    return next((p for p in PREFIXES if f"{p}{ANCHOR}" in source), None)


def detect_numbering(source, prefix: str) -> str:
    """"released" or "linen": the numbering whose first block's attention kernel the file holds."""
    for name, modules in NUMBERINGS.items():
        if f"{prefix}Transformer/encoderblock_0/{modules['attention']}/query/kernel" in source:
            return name
    found = sorted(k for k in source.keys() if k.startswith(f"{prefix}Transformer/encoderblock_0/"))
    raise ConversionError(
        f"{source.path}: encoder block 0 has neither the released key numbering (MultiHeadDotProductAttention_1, "
        f"LayerNorm_2, MlpBlock_3) nor today's Flax numbering (MultiHeadDotProductAttention_0, LayerNorm_1, "
        f"MlpBlock_0); it holds {found[:8]}."
    )


# --------------------------------------------------------------------------------------------------------------------
# Encoder blocks: shared with big_vision, whose blocks use the same modules (today's numbering, maybe scanned).


def encoder_block_rules(layer: int, block: str, modules: dict, index: int | None = None) -> list[Rule]:
    """Rules for hf_vit block `layer` from the source block at key prefix `block` (ending in "/"). `index`: the
    layer's slice of scanned (stacked) arrays."""
    target = f"vit.encoder.layers.{layer}."
    attention, mlp = f"{block}{modules['attention']}/", f"{block}{modules['mlp']}/"
    return [
        rule(target + "layernorm_before.weight", f"{block}{modules['norm1']}/scale", index=index),
        rule(target + "layernorm_before.bias", f"{block}{modules['norm1']}/bias", index=index),
        rule(target + "attention.qkv.weight", [f"{attention}{n}/kernel" for n in _QKV], qkv_kernel, index),
        rule(target + "attention.qkv.bias", [f"{attention}{n}/bias" for n in _QKV], qkv_bias, index),
        rule(target + "attention.o_proj.weight", f"{attention}out/kernel", attention_out_kernel, index),
        rule(target + "attention.o_proj.bias", f"{attention}out/bias", index=index),
        rule(target + "layernorm_after.weight", f"{block}{modules['norm2']}/scale", index=index),
        rule(target + "layernorm_after.bias", f"{block}{modules['norm2']}/bias", index=index),
        rule(target + "mlp.fc1.weight", f"{mlp}Dense_0/kernel", dense_kernel, index),
        rule(target + "mlp.fc1.bias", f"{mlp}Dense_0/bias", index=index),
        rule(target + "mlp.fc2.weight", f"{mlp}Dense_1/kernel", dense_kernel, index),
        rule(target + "mlp.fc2.bias", f"{mlp}Dense_1/bias", index=index),
    ]


def head_rules(prefix: str, has_pre_logits: bool, has_head: bool) -> list[Rule]:
    """The tanh pre-logits layer and the classifier, named alike in vit_jax and big_vision."""
    rules = []
    if has_pre_logits:
        rules += [
            rule("vit.pooler.dense.weight", f"{prefix}pre_logits/kernel", dense_kernel),
            rule("vit.pooler.dense.bias", f"{prefix}pre_logits/bias"),
        ]
    if has_head:
        rules += [
            rule("classifier.weight", f"{prefix}head/kernel", dense_kernel),
            rule("classifier.bias", f"{prefix}head/bias"),
        ]
    return rules


def head_fields(source, prefix: str, hidden_size: int) -> dict:
    """`representation_size` and `num_labels` from the pre-logits and head shapes."""
    fields = {"representation_size": None, "num_labels": 0}
    if f"{prefix}pre_logits/kernel" in source:
        fields["representation_size"] = source.shape(f"{prefix}pre_logits/kernel")[1]
    if f"{prefix}head/kernel" in source:
        fields["num_labels"] = source.shape(f"{prefix}head/kernel")[1]
    return fields


def count_blocks(source, prefix: str) -> int:
    indices = {int(m[1]) for k in source.keys() if k.startswith(prefix) and (m := _BLOCK.match(k[len(prefix) :]))}
    if not indices:
        return 0
    if indices != set(range(len(indices))):
        raise ConversionError(
            f"{source.path}: the encoder blocks are not numbered 0..L-1 without gaps (found {sorted(indices)})."
        )
    return len(indices)


# --------------------------------------------------------------------------------------------------------------------


def infer(source, prefix: str) -> dict:
    """Everything the key map needs, read from the shapes: hf_vit config fields plus the layout details
    (`numbering`, the position table's patch rows)."""
    numbering = detect_numbering(source, prefix)
    modules = NUMBERINGS[numbering]
    kernel = source.shape(f"{prefix}embedding/kernel")  # (P, P, C, D)
    if len(kernel) != 4:
        raise ConversionError(f"{source.path}: {prefix}embedding/kernel has shape {kernel}; expected (P, P, C, D).")
    query = source.shape(f"{prefix}Transformer/encoderblock_0/{modules['attention']}/query/kernel")  # (D, H, d)
    fields = {
        "patch_size": [kernel[0], kernel[1]] if kernel[0] != kernel[1] else kernel[0],
        "num_channels": kernel[2],
        "hidden_size": kernel[3],
        "num_hidden_layers": count_blocks(source, prefix),
        "num_attention_heads": query[1],
        "intermediate_size": source.shape(f"{prefix}Transformer/encoderblock_0/{modules['mlp']}/Dense_0/kernel")[1],
        "hidden_act": "gelu_pytorch_tanh",  # Flax's nn.gelu
        "layer_norm_eps": 1e-6,  # Flax's LayerNorm
        "qkv_bias": True,
    }
    use_class_token = f"{prefix}cls" in source
    fields["pooling"] = "cls" if use_class_token else "gap"  # vit_jax's classifier="token" | "gap"
    fields["use_class_token"] = use_class_token
    fields.update(head_fields(source, prefix, fields["hidden_size"]))
    token_stride = (kernel[0], kernel[1])
    if f"{prefix}conv_root/kernel" in source:
        fields.update(resnet_fields(source, prefix))
        fields["num_channels"] = source.shape(f"{prefix}conv_root/kernel")[2]  # the embedding reads the feature map
        stride = STEM_STRIDE * 2 ** max(len(fields["backbone_depths"]) - 1, 0)
        token_stride = (kernel[0] * stride, kernel[1] * stride)
    positions = source.shape(f"{prefix}{ANCHOR}")[1] - int(use_class_token)
    return {
        "fields": fields,
        "numbering": numbering,
        "patch_positions": positions,
        "pos_has_prefix_row": True,
        "token_stride": token_stride,
    }


def resnet_fields(source, prefix: str) -> dict:
    """The hybrid's ResNet as hf_vit config fields: stage depths (units per `block{i}`) and width factor, with the
    reference's numerics (GroupNorm: 32 groups, Flax's eps 1e-6; weights standardised as (w - mean) / (std + 1e-5))."""
    units = {}
    for key in source.keys():
        match = _RESNET_UNIT.match(key[len(prefix) :])
        if match:
            units.setdefault(int(match[1]), set()).add(int(match[2]))
    if sorted(units) != list(range(1, len(units) + 1)) or any(u != set(range(1, len(u) + 1)) for u in units.values()):
        raise ConversionError(
            f"{source.path}: the ResNet stages/units are not numbered block1..blockN / unit1..unitM without gaps "
            f"(found { {b: sorted(u) for b, u in sorted(units.items())} })."
        )
    width = source.shape(f"{prefix}conv_root/kernel")[3]
    return {
        "backbone_depths": [len(units[b]) for b in sorted(units)],
        "backbone_width_factor": width / 64 if width % 64 else width // 64,
        "backbone_num_groups": 32,
        "backbone_group_norm_eps": 1e-6,
        "backbone_weight_standardization": "std_plus_eps",
        "backbone_weight_standardization_eps": 1e-5,
    }


def resnet_rules(prefix: str, depths) -> list[Rule]:
    """The reference ResNet (stem, then `block{s}/unit{u}`) -> hf_vit's `patch_embeddings.backbone`."""
    target = "vit.embeddings.patch_embeddings.backbone."
    rules = [
        rule(target + "stem.conv.weight", f"{prefix}conv_root/kernel", conv_kernel),
        rule(target + "stem.norm.weight", f"{prefix}gn_root/scale", flatten),
        rule(target + "stem.norm.bias", f"{prefix}gn_root/bias", flatten),
    ]
    for stage, depth in enumerate(depths):
        for unit in range(depth):
            ours, theirs = f"{target}stages.{stage}.units.{unit}.", f"{prefix}block{stage + 1}/unit{unit + 1}/"
            parts = [(f"conv{k}", f"norm{k}", f"conv{k}", f"gn{k}") for k in (1, 2, 3)]
            if unit == 0:  # the stage's first unit changes width (and stride): projection shortcut
                parts.insert(0, ("shortcut.conv", "shortcut.norm", "conv_proj", "gn_proj"))
            for conv, norm, jax_conv, jax_norm in parts:
                rules += [
                    rule(f"{ours}{conv}.weight", f"{theirs}{jax_conv}/kernel", conv_kernel),
                    rule(f"{ours}{norm}.weight", f"{theirs}{jax_norm}/scale", flatten),
                    rule(f"{ours}{norm}.bias", f"{theirs}{jax_norm}/bias", flatten),
                ]
    return rules


def key_map(config, prefix: str, numbering: str) -> list[Rule]:
    """The vit_jax key map for a config that matches the file (see `infer`)."""
    modules = NUMBERINGS[numbering]
    rules = resnet_rules(prefix, config.backbone_depths) if config.is_hybrid else []
    rules += [
        rule("vit.embeddings.patch_embeddings.projection.weight", f"{prefix}embedding/kernel", conv_kernel),
        rule("vit.embeddings.patch_embeddings.projection.bias", f"{prefix}embedding/bias"),
        rule("vit.embeddings.position_embeddings", f"{prefix}{ANCHOR}", identity),
    ]
    if config.use_class_token:
        rules.append(rule("vit.embeddings.cls_token", f"{prefix}cls"))
    for layer in range(config.num_hidden_layers):
        rules += encoder_block_rules(layer, f"{prefix}Transformer/encoderblock_{layer}/", modules)
    rules += [
        rule("vit.layernorm.weight", f"{prefix}Transformer/encoder_norm/scale"),
        rule("vit.layernorm.bias", f"{prefix}Transformer/encoder_norm/bias"),
    ]
    rules += head_rules(prefix, config.representation_size is not None, config.num_labels > 0)
    return rules


__all__ = [
    "FORMAT",
    "NUMBERINGS",
    "detect_numbering",
    "encoder_block_rules",
    "find_prefix",
    "infer",
    "key_map",
    "resnet_fields",
    "resnet_rules",
]
