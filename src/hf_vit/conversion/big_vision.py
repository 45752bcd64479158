"""big_vision ViT checkpoints (google-research/big_vision, `models/vit.py`): `.npz` key map.

Differences from the original vit_jax layout (see `vit_jax.py`), all read here:
- keys live under `params/` (`params/img/` for the image tower of a two-tower model);
- the position table is `pos_embedding` (1, N, D) at the top level and is added *before* the class token is
  prepended, so the class token has no position row: hf_vit's class-token row is then zero (the same model).
  Older files keep it in `Transformer/pos_embedding`, or hold N + 1 rows (class token's first);
- blocks use today's Flax numbering (`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`), and an
  encoder trained with `scan=True` stores one `Transformer/encoderblock/...` array per parameter with a leading
  layer axis (L, ...);
- pooling (`pool_type`): "tok" (a `cls` token), "gap" (mean of all tokens after the final LayerNorm, no class
  token) or "map" (`MAPHead_0`, attention pooling). "0" (the first patch token, no class token) cannot be told
  apart from "gap" by its keys and is read as "gap";
- `posemb="sincos2d"` files have no position table at all.
GELU is Flax's tanh approximation and LayerNorm eps 1e-6, as in vit_jax.
"""

from __future__ import annotations

import math

from .keymap import (
    ConversionError,
    Rule,
    attention_out_kernel,
    conv_kernel,
    dense_kernel,
    identity,
    position_embeddings_with_zero_prefix,
    qkv_bias,
    qkv_kernel,
    rule,
)
from .vit_jax import NUMBERINGS, count_blocks, detect_numbering, encoder_block_rules, head_fields, head_rules


FORMAT = "big_vision"
PREFIXES = ("params/", "", "params/img/", "opt/target/")
SCANNED_ANCHOR = "Transformer/encoderblock/LayerNorm_0/scale"
# Where the learned position table has lived over big_vision's history, newest first.
POSITION_KEYS = ("pos_embedding", "Transformer/pos_embedding", "Transformer/posembed_input/pos_embedding")


def find_prefix(source) -> str | None:
    """The prefix under which `source` holds a big_vision ViT, or None."""
    return next((p for p in PREFIXES if f"{p}embedding/kernel" in source), None)


def _position_key(source, prefix):
    return next((f"{prefix}{k}" for k in POSITION_KEYS if f"{prefix}{k}" in source), None)


def infer(source, prefix: str) -> dict:
    """hf_vit config fields and the layout details of a big_vision file, from its shapes."""
    scanned = f"{prefix}{SCANNED_ANCHOR}" in source
    if scanned:
        modules, numbering = NUMBERINGS["linen"], "linen"
        block = f"{prefix}Transformer/encoderblock/"
        depth = source.shape(f"{prefix}{SCANNED_ANCHOR}")[0]
        query = source.shape(f"{block}{modules['attention']}/query/kernel")[1:]  # drop the layer axis
        mlp = source.shape(f"{block}{modules['mlp']}/Dense_0/kernel")[2]
    else:
        numbering = detect_numbering(source, prefix)
        modules = NUMBERINGS[numbering]
        block = f"{prefix}Transformer/encoderblock_0/"
        depth = count_blocks(source, prefix)
        query = source.shape(f"{block}{modules['attention']}/query/kernel")
        mlp = source.shape(f"{block}{modules['mlp']}/Dense_0/kernel")[1]
    kernel = source.shape(f"{prefix}embedding/kernel")
    if len(kernel) != 4:
        raise ConversionError(
            f"{source.path}: {prefix}embedding/kernel has shape {kernel}; expected a conv kernel (P, P, C, D) "
            "(NaFlex-style dense patch embeddings are not supported)."
        )
    fields = {
        "patch_size": [kernel[0], kernel[1]] if kernel[0] != kernel[1] else kernel[0],
        "num_channels": kernel[2],
        "hidden_size": kernel[3],
        "num_hidden_layers": depth,
        "num_attention_heads": query[1],
        "intermediate_size": mlp,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
    }
    use_class_token = f"{prefix}cls" in source
    if use_class_token:
        fields["pooling"] = "cls"
    elif f"{prefix}MAPHead_0/probe" in source:
        fields["pooling"] = "map"
    else:
        fields["pooling"] = "gap"
    fields["use_class_token"] = use_class_token
    fields.update(head_fields(source, prefix, fields["hidden_size"]))

    position_key = _position_key(source, prefix)
    if position_key is None:
        # posemb="sincos2d": fixed, computed for any grid; the file does not say its resolution.
        fields["position_embedding_type"] = "sincos_2d"
        has_prefix_row, positions = False, None
    else:
        rows = source.shape(position_key)[-2]
        # Old files hold the class token's row too (a square + 1 rows); current ones only the patch rows.
        has_prefix_row = use_class_token and math.isqrt(rows - 1) ** 2 == rows - 1 and math.isqrt(rows) ** 2 != rows
        positions = rows - int(has_prefix_row)
    return {
        "fields": fields,
        "numbering": numbering,
        "scanned": scanned,
        "position_key": position_key,
        "patch_positions": positions,
        "pos_has_prefix_row": has_prefix_row,
    }


def key_map(config, prefix: str, layout: dict) -> list[Rule]:
    """The big_vision key map for a config that matches the file (see `infer`)."""
    modules = NUMBERINGS[layout["numbering"]]
    prefix_rows = config.num_prefix_positions
    positions = (
        identity if layout["pos_has_prefix_row"] or prefix_rows == 0 else position_embeddings_with_zero_prefix(prefix_rows)
    )
    rules = [
        rule("vit.embeddings.patch_embeddings.projection.weight", f"{prefix}embedding/kernel", conv_kernel),
        rule("vit.embeddings.patch_embeddings.projection.bias", f"{prefix}embedding/bias"),
    ]
    if layout["position_key"] is not None:
        rules.append(rule("vit.embeddings.position_embeddings", layout["position_key"], positions))
    if config.use_class_token:
        rules.append(rule("vit.embeddings.cls_token", f"{prefix}cls"))
    if layout["scanned"]:
        # Key by key, layer by layer: each stacked array is read once (see `apply_rules`).
        block = f"{prefix}Transformer/encoderblock/"
        per_layer = [encoder_block_rules(i, block, modules, index=i) for i in range(config.num_hidden_layers)]
        rules += [layer_rules[j] for j in range(len(per_layer[0])) for layer_rules in per_layer]
    else:
        for layer in range(config.num_hidden_layers):
            rules += encoder_block_rules(layer, f"{prefix}Transformer/encoderblock_{layer}/", modules)
    rules += [
        rule("vit.layernorm.weight", f"{prefix}Transformer/encoder_norm/scale"),
        rule("vit.layernorm.bias", f"{prefix}Transformer/encoder_norm/bias"),
    ]
    if config.pooling == "map":
        rules += map_head_rules(f"{prefix}MAPHead_0/")
    rules += head_rules(prefix, config.representation_size is not None, config.num_labels > 0)
    return rules


def map_head_rules(head: str) -> list[Rule]:
    """big_vision's MAPHead (`MAPHead_0/probe`, its attention, LayerNorm and MLP) -> hf_vit's `pooler.map_head`."""
    target = "vit.pooler.map_head."
    attention, mlp = f"{head}MultiHeadDotProductAttention_0/", f"{head}MlpBlock_0/"
    return [
        rule(target + "probe", f"{head}probe"),
        rule(target + "attention.qkv.weight", [f"{attention}{n}/kernel" for n in ("query", "key", "value")], qkv_kernel),
        rule(target + "attention.qkv.bias", [f"{attention}{n}/bias" for n in ("query", "key", "value")], qkv_bias),
        rule(target + "attention.o_proj.weight", f"{attention}out/kernel", attention_out_kernel),
        rule(target + "attention.o_proj.bias", f"{attention}out/bias"),
        rule(target + "layernorm.weight", f"{head}LayerNorm_0/scale"),
        rule(target + "layernorm.bias", f"{head}LayerNorm_0/bias"),
        rule(target + "mlp.fc1.weight", f"{mlp}Dense_0/kernel", dense_kernel),
        rule(target + "mlp.fc1.bias", f"{mlp}Dense_0/bias"),
        rule(target + "mlp.fc2.weight", f"{mlp}Dense_1/kernel", dense_kernel),
        rule(target + "mlp.fc2.bias", f"{mlp}Dense_1/bias"),
    ]


__all__ = ["FORMAT", "find_prefix", "infer", "key_map"]
