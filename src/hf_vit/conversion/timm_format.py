"""timm's `VisionTransformer` state dicts <-> hf_vit: the key map (both directions) and timm's folder config.

timm keys (D = width, P = patch size):

    cls_token (1, 1, D)                     pos_embed (1, [1 +] N, D)    (no class-token row with `no_embed_class`)
    patch_embed.proj.{weight (D, C, P, P), bias}
    blocks.{i}.norm1.{weight,bias}          blocks.{i}.attn.qkv.{weight (3D, D), bias (3D,)}   (q, k, v fused)
    blocks.{i}.attn.proj.{weight,bias}      blocks.{i}.norm2.{weight,bias}
    blocks.{i}.mlp.fc1.{weight,bias}        blocks.{i}.mlp.fc2.{weight,bias}
    norm.{weight,bias}                      head.{weight,bias}

Hybrids (`vit_base_r50_s16_224`, `vit_small_r26_s32_224`, `vit_large_r50_s32_224`, `vit_tiny_r_s16_p8_224`) add
timm's ResNetV2 under `patch_embed.backbone.` (`stem.conv`, `stem.norm`, `stages.{s}.blocks.{u}.{conv1..3,
norm1..3}`, the first block's `downsample.{conv,norm}`; a stem-only backbone is `patch_embed.backbone.{conv,norm}`),
with timm's numerics: GroupNorm eps 1e-5 and weights standardised as (w - mean) / sqrt(var + 1e-8) (the reference
code: eps 1e-6 and (w - mean) / (std + 1e-5)); the converted config carries timm's values. Only timm's "same"
padding stem (the one its ViT hybrids use) is read.

timm's ViT uses the exact (erf) GELU and LayerNorm eps 1e-6. Its global average pooling either averages *after* the
final norm (`fc_norm=False`: the reference's "gap", hf_vit's `pooling="gap"`) or averages first and normalises after
(`fc_norm`, MAE's fine-tuning: hf_vit's `layer_norm_after_pooling=True`, `fc_norm.*` <-> `vit.pooler.layernorm.*`).
timm has no tanh pre-logits layer, so hf_vit models with `representation_size` do not export to timm.

The ViT variants of the self-supervised and distilled families read too:

    dist_token (1, 1, D), head_dist.{weight,bias}   DeiT's distillation token and head (`VisionTransformerDistilled`)
    reg_token (1, K, D)                             register tokens (DINOv2 with registers: `no_embed_class`, so the
                                                    class token's position is already in `cls_token`)
    blocks.{i}.ls1.gamma, blocks.{i}.ls2.gamma      LayerScale (DINOv2, DeiT III)
    blocks.{i}.mlp.fc1 (2I, D), mlp.fc2 (D, I)      the SwiGLU MLP of DINOv2-g (`SwiGLUPacked`: gate rows first)
    fc_norm.{weight,bias}                           the LayerNorm after the pooling (MAE's fine-tuning)

timm's DINOv2 state dicts have no mask token (timm drops it); MAE's pre-trained encoders are plain ViTs.
"""

from __future__ import annotations

import json
import math
import os
import re

from safetensors.torch import save_file

from ..configuration_hf_vit import VIT_VARIANTS

from .keymap import ConversionError, Rule, identity, position_embeddings_with_zero_prefix, rule


FORMAT = "timm"
# hf_vit `hidden_act` <-> timm `act_layer` names.
ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu"}
# timm's `global_pool` <-> hf_vit `pooling`.
POOLINGS = {"token": "cls", "avg": "gap"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")

_LAYER_RENAMES = (
    ("layernorm_before", "norm1"),
    ("attention.qkv", "attn.qkv"),
    ("attention.o_proj", "attn.proj"),
    ("layernorm_after", "norm2"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
)


def _pair(target, source, to_hf_vit=identity):
    return rule(target, source, to_hf_vit, from_hf_vit=lambda t: t)


# timm's registered hybrids: stage depths -> an entry point building that backbone (the transformer's size comes from
# the model arguments).
HYBRID_ARCHITECTURES = {
    (): "vit_tiny_r_s16_p8_224",
    (2, 2, 2, 2): "vit_small_r26_s32_224",
    (3, 4, 9): "vit_base_r50_s16_224",
    (3, 4, 6, 3): "vit_large_r50_s32_224",
}
# timm's ResNetV2 numerics for ViT hybrids (hf_vit field -> value).
TIMM_BACKBONE = {
    "backbone_num_groups": 32,
    "backbone_group_norm_eps": 1e-5,
    "backbone_weight_standardization": "sqrt_var_plus_eps",
    "backbone_weight_standardization_eps": 1e-8,
}
_STAGE_BLOCK = re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.")


def backbone_rules(config) -> list[Rule]:
    """hf_vit's `patch_embeddings.backbone` <-> timm's `patch_embed.backbone` (ResNetV2, post-activation blocks)."""
    ours, theirs = "vit.embeddings.patch_embeddings.backbone.", "patch_embed.backbone."
    stem = theirs if not config.backbone_depths else f"{theirs}stem."  # a stem-only backbone is the stem itself
    rules = [_pair(f"{ours}stem.conv.weight", f"{stem}conv.weight")]
    rules += [_pair(f"{ours}stem.norm.{p}", f"{stem}norm.{p}") for p in ("weight", "bias")]
    for stage, depth in enumerate(config.backbone_depths):
        for unit in range(depth):
            a, b = f"{ours}stages.{stage}.units.{unit}.", f"{theirs}stages.{stage}.blocks.{unit}."
            names = [(n, n) for n in ("conv1", "norm1", "conv2", "norm2", "conv3", "norm3")]
            if unit == 0:
                names = [("shortcut.conv", "downsample.conv"), ("shortcut.norm", "downsample.norm"), *names]
            for our_name, their_name in names:
                params = ("weight",) if "conv" in our_name else ("weight", "bias")
                rules += [_pair(f"{a}{our_name}.{p}", f"{b}{their_name}.{p}") for p in params]
    return rules


def key_map(config, pos_has_prefix_row: bool = True) -> list[Rule]:
    """hf_vit <-> timm rules for `config`. `pos_has_prefix_row=False`: timm's `no_embed_class` table."""
    rules = backbone_rules(config) if config.is_hybrid else []
    rules += [
        _pair("vit.embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),
        _pair("vit.embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"),
    ]
    if pos_has_prefix_row or config.num_prefix_positions == 0:
        rules.append(_pair("vit.embeddings.position_embeddings", "pos_embed"))
    else:
        padded = position_embeddings_with_zero_prefix(config.num_prefix_positions)
        rules.append(rule("vit.embeddings.position_embeddings", "pos_embed", padded))
    if config.use_class_token:
        rules.append(_pair("vit.embeddings.cls_token", "cls_token"))
    if config.use_distillation_token:
        rules.append(_pair("vit.embeddings.distillation_token", "dist_token"))
    if config.num_register_tokens:
        rules.append(_pair("vit.embeddings.register_tokens", "reg_token"))
    params = ("weight", "bias")
    for i in range(config.num_hidden_layers):
        for ours, theirs in _LAYER_RENAMES:
            for param in params:
                if ours == "attention.qkv" and param == "bias" and not config.qkv_bias:
                    continue
                rules.append(_pair(f"vit.encoder.layers.{i}.{ours}.{param}", f"blocks.{i}.{theirs}.{param}"))
        if config.layer_scale_init_value is not None:
            rules += [
                _pair(f"vit.encoder.layers.{i}.layer_scale_attention.gamma", f"blocks.{i}.ls1.gamma"),
                _pair(f"vit.encoder.layers.{i}.layer_scale_mlp.gamma", f"blocks.{i}.ls2.gamma"),
            ]
    norm = "vit.pooler.layernorm" if config.layer_norm_after_pooling else "vit.layernorm"
    their_norm = "fc_norm" if config.layer_norm_after_pooling else "norm"
    rules += [_pair(f"{norm}.{p}", f"{their_norm}.{p}") for p in params]
    if config.num_labels > 0:
        rules += [_pair("classifier.weight", "head.weight"), _pair("classifier.bias", "head.bias")]
        if config.use_distillation_head:
            rules += [_pair(f"distillation_classifier.{p}", f"head_dist.{p}") for p in params]
    return rules


# --------------------------------------------------------------------------------------------------------------------
# timm -> hf_vit


def _heads_for_width(width):

    return next((heads for _, hidden, _, heads in VIT_VARIANTS.values() if hidden == width), None)


def infer(source, num_attention_heads: int | None = None) -> dict:
    """hf_vit config fields and layout details of a timm ViT state dict. timm's weights do not record the number of
    heads (q, k, v are fused): it comes from the folder's config.json (`model_args.num_heads`), the argument, or the
    paper's variant of that width (Ti 3, S 6, B 12, L/H 16), in that order."""
    meta = source.metadata or {}
    model_args = dict(meta.get("model_args") or {})
    pretrained_cfg = dict(meta.get("pretrained_cfg") or {})
    if "patch_embed.proj.weight" not in source:
        raise ConversionError(
            f"{source.path}: no patch_embed.proj.weight; this is not a timm VisionTransformer state dict. "
            f"It holds e.g. {sorted(source.keys())[:5]}."
        )
    weight = source.shape("patch_embed.proj.weight")  # (D, C, P, P)
    width = weight[0]
    depth = len({int(m[1]) for k in source.keys() if (m := _BLOCK.match(k))})
    heads = model_args.get("num_heads") or num_attention_heads or _heads_for_width(width)
    if heads is None:
        raise ConversionError(
            f"{source.path}: the number of attention heads cannot be read from a timm state dict of width {width} "
            "(q, k and v are fused); pass num_attention_heads (CLI: --num-heads)."
        )
    use_class_token = "cls_token" in source
    fc_norm = "fc_norm.weight" in source  # the LayerNorm after the pooling (timm's default with global_pool="avg")
    global_pool = model_args.get("global_pool", meta.get("global_pool"))
    if global_pool is None:
        pooling = "cls" if use_class_token and not fc_norm else "gap"
    elif global_pool in POOLINGS:
        pooling = POOLINGS[global_pool]
    else:
        raise ConversionError(
            f"{source.path}: timm global_pool={global_pool!r} has no hf_vit counterpart (supported: {sorted(POOLINGS)})."
        )
    fc1, fc2 = source.shape("blocks.0.mlp.fc1.weight"), source.shape("blocks.0.mlp.fc2.weight")
    gated = fc1[0] == 2 * fc2[1]  # SwiGLUPacked: fc1 holds the gate and the value projections
    act = model_args.get("act_layer", "silu" if gated else "gelu")
    inverse = {v: k for k, v in ACTIVATIONS.items()}
    if act not in inverse:
        raise ConversionError(f"{source.path}: timm act_layer={act!r} is not supported (allowed: {sorted(inverse)}).")
    fields = {
        "patch_size": [weight[2], weight[3]] if weight[2] != weight[3] else weight[2],
        "num_channels": weight[1],
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": int(heads),
        "intermediate_size": fc2[1],
        "mlp_type": "gated" if gated else "dense",
        "hidden_act": inverse[act],
        "layer_norm_eps": 1e-6,  # timm's LayerNorm
        "qkv_bias": "blocks.0.attn.qkv.bias" in source,
        "pooling": pooling,
        "use_class_token": use_class_token,
        "representation_size": None,
        "num_labels": source.shape("head.weight")[0] if "head.weight" in source else 0,
        "layer_norm_after_pooling": fc_norm,
        "use_distillation_token": "dist_token" in source,
        "use_distillation_head": "head_dist.weight" in source,
        "num_register_tokens": source.shape("reg_token")[1] if "reg_token" in source else 0,
    }
    if "blocks.0.ls1.gamma" in source:
        # The init value is not in the weights; timm's DINOv2 and DeiT III use 1e-5.
        fields["layer_scale_init_value"] = float(model_args.get("init_values") or 1e-5)
    token_stride = (weight[2], weight[3])
    if any(k.startswith("patch_embed.backbone.") for k in source.keys()):
        fields.update(_backbone_fields(source))
        stride = 4 * 2 ** max(len(fields["backbone_depths"]) - 1, 0)  # stem 4x, then 2x per stage after the first
        token_stride = (weight[2] * stride, weight[3] * stride)
    label_names = pretrained_cfg.get("label_names")
    if label_names and len(label_names) == fields["num_labels"]:
        fields["id2label"] = {i: str(name) for i, name in enumerate(label_names)}
    # The resolution the weights were made for: the folder's config, else a square grid. Prefix rows: the class and
    # distillation tokens' (registers never have one in hf_vit).
    rows, prefix = source.shape("pos_embed")[1], int(use_class_token) + int(fields["use_distillation_token"])
    image_size = model_args.get("img_size")
    if image_size is None and pretrained_cfg.get("input_size"):
        image_size = list(pretrained_cfg["input_size"][-2:])
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        grid = (height // token_stride[0]) * (width // token_stride[1])
    else:
        grid = rows - prefix if prefix and math.isqrt(rows - prefix) ** 2 == rows - prefix else rows
    has_prefix_row = prefix > 0 and rows == grid + prefix
    registers = fields["num_register_tokens"]
    if registers and rows == grid + prefix + registers:
        raise ConversionError(
            f"{source.path}: pos_embed has rows for the {registers} register tokens; hf_vit's registers have no "
            "position embedding (DINOv2 with registers, timm's `no_embed_class`), so this is another model."
        )
    if rows != grid + prefix * has_prefix_row:
        raise ConversionError(
            f"{source.path}: pos_embed has {rows} rows, which fits neither {grid} patches nor {grid} + {prefix} "
            "(class token); check the image size in the folder's config.json."
        )
    return {
        "fields": fields,
        "patch_positions": grid,
        "source_image_size": image_size,
        "pos_has_prefix_row": has_prefix_row,
        "token_stride": token_stride,
        "image_mean": pretrained_cfg.get("mean"),
        "image_std": pretrained_cfg.get("std"),
    }


def _backbone_fields(source) -> dict:
    """A timm hybrid's ResNetV2 as hf_vit config fields (stage depths, width factor, timm's numerics)."""
    units = {}
    for key in source.keys():
        if match := _STAGE_BLOCK.match(key):
            units.setdefault(int(match[1]), set()).add(int(match[2]))
    if sorted(units) != list(range(len(units))) or any(u != set(range(len(u))) for u in units.values()):
        raise ConversionError(f"{source.path}: the backbone's stages/blocks are not numbered without gaps: {units}.")
    stem = "patch_embed.backbone.stem.conv.weight" if units else "patch_embed.backbone.conv.weight"
    if stem not in source:
        raise ConversionError(f"{source.path}: a hybrid without {stem}; not a timm ResNetV2 backbone it knows.")
    width = source.shape(stem)[0]
    return {
        "backbone_depths": [len(units[s]) for s in sorted(units)],
        "backbone_width_factor": width / 64 if width % 64 else width // 64,
        "num_channels": source.shape(stem)[1],
        **TIMM_BACKBONE,
    }


# --------------------------------------------------------------------------------------------------------------------
# hf_vit -> timm


def timm_model_args(config, for_export: bool = True) -> dict:
    """`timm.create_model` keyword arguments that build timm's `VisionTransformer` matching `config` (raises
    `ValueError` naming the field for what timm cannot express). `for_export=False`: also what only a Python call can
    express (the SwiGLU layer class, registers on a `no_embed_class` table), for building a reference model."""
    if config.is_hybrid:
        if tuple(config.backbone_depths) not in HYBRID_ARCHITECTURES or config.backbone_width_factor != 1:
            raise ValueError(
                f"`backbone_depths` {config.backbone_depths} with `backbone_width_factor` {config.backbone_width_factor}: "
                f"timm builds only the backbones of its registered hybrids (depths {sorted(HYBRID_ARCHITECTURES)}, "
                "width factor 1)."
            )
        for name, value in TIMM_BACKBONE.items():
            if getattr(config, name) != value:
                raise ValueError(
                    f"`{name}` is {getattr(config, name)!r}; timm's hybrid backbone uses {value!r}, so the exported "
                    "model would not be the same model."
                )
    if config.representation_size is not None:
        raise ValueError(
            f"`representation_size` is {config.representation_size}: timm's ViT has no tanh pre-logits layer. Drop it "
            "first (a fine-tuning head) to export to timm."
        )
    if config.pooling not in ("cls", "gap"):
        raise ValueError(f"`pooling` {config.pooling!r} does not export to timm (allowed: 'cls', 'gap').")
    if config.position_embedding_type != "learned_1d":
        raise ValueError(
            f"`position_embedding_type` {config.position_embedding_type!r} does not export to timm (allowed: 'learned_1d')."
        )
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"`hidden_act` {config.hidden_act!r} has no timm act_layer (allowed: {sorted(ACTIVATIONS)}).")
    if config.use_distillation_token and config.num_labels > 0 and not config.use_distillation_head:
        raise ValueError(
            "`use_distillation_token` without `use_distillation_head`: timm's distilled ViT always has both heads."
        )
    if for_export and config.num_register_tokens:
        raise ValueError(
            f"`num_register_tokens` is {config.num_register_tokens}: timm's register models fold the class token's "
            "position embedding into the class token (`no_embed_class`); exporting that is not supported."
        )
    if for_export and config.mlp_type == "gated":
        raise ValueError(
            "`mlp_type='gated'`: timm builds it from a layer class (`SwiGLUPacked`) that its config.json cannot name; "
            "not exported."
        )
    if config.layer_norm_eps != 1e-6:
        raise ValueError(
            f"`layer_norm_eps` is {config.layer_norm_eps}; timm's ViT LayerNorm eps is 1e-6 and timm's config cannot "
            "change it, so the exported model would not be the same model."
        )
    height, width = config.image_hw
    patch = config.patch_hw
    args = {
        "img_size": [height, width] if height != width else height,
        "patch_size": list(patch) if patch[0] != patch[1] else patch[0],
        "in_chans": config.num_channels,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": config.intermediate_size / config.hidden_size,
        "qkv_bias": config.qkv_bias,
        "class_token": config.use_class_token,
        "global_pool": {v: k for k, v in POOLINGS.items()}[config.pooling],
        "fc_norm": config.layer_norm_after_pooling,
        "act_layer": ACTIVATIONS[config.hidden_act],
        "num_classes": config.num_labels,
    }
    if config.layer_scale_init_value is not None:
        args["init_values"] = config.layer_scale_init_value
    if not for_export:
        if config.num_register_tokens:
            args["reg_tokens"] = config.num_register_tokens
        if config.mlp_type == "gated":
            from timm.layers import SwiGLUPacked

            # + 0.5: timm takes int(D * mlp_ratio), which must land on 2I exactly.
            args.update(mlp_layer=SwiGLUPacked, mlp_ratio=(2 * config.intermediate_size + 0.5) / config.hidden_size)
    return args


def timm_architecture(config) -> str:
    """The timm entry point to build `config` with (together with `timm_model_args`)."""
    if config.is_hybrid:
        return HYBRID_ARCHITECTURES[tuple(config.backbone_depths)]
    if config.use_distillation_token:
        return "deit_base_distilled_patch16_224"  # VisionTransformerDistilled; the arguments fix the rest
    # NOTE: any registered plain-ViT entry point works; the model arguments fix every architecture choice.
    return "vit_base_patch16_224"


def state_dict_to_timm(state_dict: dict, config) -> dict:
    """hf_vit `ViTForImageClassification` tensors -> timm `VisionTransformer` tensors (exact: renames only)."""
    timm_model_args(config)  # refuse what timm cannot express
    out = {}
    for r in key_map(config):
        if r.target not in state_dict:
            raise ValueError(f"The hf_vit state dict has no {r.target!r} (needed for timm's {r.sources[0]!r}).")
        out[r.sources[0]] = r.from_hf_vit(state_dict[r.target]).contiguous()
    extra = sorted(set(state_dict) - {r.target for r in key_map(config)})
    if extra:
        raise ValueError(f"These hf_vit tensors have no place in timm's ViT: {extra[:8]}.")
    return out


def save_timm(model, save_directory, image_processor=None) -> None:
    """Write `model` (an hf_vit `ViTForImageClassification`) as a timm folder: `model.safetensors` with timm's keys
    and a timm `config.json`, loadable with `timm.create_model("local-dir:<folder>", pretrained=True)`."""

    config = model.config
    model_args = timm_model_args(config)
    tensors = state_dict_to_timm(model.state_dict(), config)
    os.makedirs(save_directory, exist_ok=True)
    save_file(tensors, os.path.join(save_directory, "model.safetensors"), metadata={"format": "pt"})
    mean = list(getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5])
    std = list(getattr(image_processor, "image_std", None) or [0.5, 0.5, 0.5])
    pretrained_cfg = {
        "input_size": [config.num_channels, *config.image_hw],
        "fixed_input_size": True,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": mean,
        "std": std,
        "num_classes": config.num_labels,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
    if config.num_labels > 0 and config.id2label:
        pretrained_cfg["label_names"] = [config.id2label[i] for i in range(config.num_labels)]
    timm_config = {
        "architecture": timm_architecture(config),
        "num_classes": config.num_labels,
        "num_features": config.hidden_size,
        "global_pool": model_args["global_pool"],
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
    }
    with open(os.path.join(save_directory, "config.json"), "w") as f:
        json.dump(timm_config, f, indent=2)


__all__ = [
    "FORMAT",
    "HYBRID_ARCHITECTURES",
    "backbone_rules",
    "infer",
    "key_map",
    "save_timm",
    "state_dict_to_timm",
    "timm_architecture",
    "timm_model_args",
]
