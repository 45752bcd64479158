"""transformers' ViT-family checkpoints <-> hf_vit, for conversion and export.

The key map and the config translation live next to the model (`hf_vit/transformers_vit_format.py`, which
`from_pretrained` uses); this module reuses them and adds what conversion needs: the shared load steps (resolution,
new head, numerical check against transformers) and the export back to a folder stock transformers loads.
Read: model_type "vit", "vit_mae", "deit", "dinov2", "dinov2_with_registers" (as `ViTForImageClassification`, see
`transformers_vit_format`); written: "vit".
"""

from __future__ import annotations

import json
import os

from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file


from ..transformers_vit_format import (
    SUPPORTED_MODEL_TYPES,
    config_from_transformers,
    state_dict_from_transformers,
    state_dict_to_transformers_vit,
    unused_by_config,
)
from .checks import run_checks, transformers_reference
from .keymap import ConversionError, ConversionReport, renames
from .loading import convert
from .sources import StateDictSource


FORMAT = "transformers"


def infer(path, allow_pickle: bool = False):
    """(fields, hf_vit-named source, layout details) of a transformers ViT-family folder, read as the family's
    classifier (`ViTForImageClassification`)."""
    from transformers import PreTrainedConfig

    if not os.path.isdir(path):
        raise ConversionError(f"{path}: a transformers checkpoint is a folder with config.json and weights, not a file.")
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(path)
    except OSError as error:
        raise ConversionError(f"{path}: no readable config.json ({error}).") from None
    model_type = config_dict.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"{path}/config.json has model_type {model_type!r}; expected one of transformers' "
            f"{list(SUPPORTED_MODEL_TYPES)}." + (" It is already an hf_vit folder." if model_type == "hf_vit" else "")
        )
    raw = StateDictSource(path, allow_pickle=allow_pickle)
    tensors = {k: raw.read(k) for k in raw.keys()}
    try:
        converted, dropped = state_dict_from_transformers(tensors)
        fields, notes = config_from_transformers(config_dict, tensors.keys(), task="classification")
    except ValueError as error:
        raise ConversionError(f"{path}: {error}") from None
    # A bare model's checkpoint has no "vit." prefix: name everything as in ViTForImageClassification.
    converted = {
        k if k.startswith(("vit.", "classifier.", "distillation_classifier.")) else f"vit.{k}": v
        for k, v in converted.items()
    }
    left_out = unused_by_config(fields, converted)
    for key in left_out:
        del converted[key]
    for name in ("image_size", "label2id", "id2label", "num_labels", "architectures"):
        fields.pop(name, None)
    num_labels = converted["classifier.weight"].shape[0] if "classifier.weight" in converted else 0
    fields["num_labels"] = num_labels
    id2label = config_dict.get("id2label")
    if num_labels and id2label and len(id2label) == num_labels:
        fields["id2label"] = {int(k): v for k, v in id2label.items()}
    prefix_rows = 1 + int(fields.get("use_distillation_token", False))
    rows = converted["vit.embeddings.position_embeddings"].shape[1] - prefix_rows
    # Parts the family's classifier builds fresh: MAE's fine-tuning LayerNorm after the pooling.
    fresh = ["vit.pooler.layernorm.weight", "vit.pooler.layernorm.bias"] if fields.get("layer_norm_after_pooling") else []
    info = {
        "fields": fields, "patch_positions": rows, "source_image_size": config_dict.get("image_size"),
        "model_type": model_type, "notes": notes, "dropped_keys": sorted(dropped) + left_out, "fresh_keys": fresh,
    }
    return fields, StateDictSource(converted), info


def load_transformers(path, config=None, *, allow_pickle=False, source_image_size=None, strict=True, check=False,
                      output_loading_info=False, **config_overrides):
    """
    Load a transformers ViT-family folder (model_type "vit", "vit_mae", "deit", "dinov2", "dinov2_with_registers")
    as an hf_vit `ViTForImageClassification` (the source's activation and eps), with the same options as `load_npz`
    (resolution change, new head); `check` compares with transformers' own model.
    """

    path = os.fspath(path)
    fields, source, info = infer(path, allow_pickle)
    source.path = path
    report = ConversionReport(path, FORMAT, f"transformers {info['model_type']} folder")
    report.dropped_keys.extend(info["dropped_keys"])
    report.notes.extend(info["notes"])

    def check_model(model):
        reference = transformers_reference(
            path, fields["num_labels"] > 0, compare_tokens=not model.config.layer_norm_after_pooling
        )
        run_checks(model, [reference], report, path)

    model, report = convert(
        source, info, lambda c: renames((k, k) for k in source.keys()), report, config, config_overrides,
        source_image_size=source_image_size, strict=strict, check=check_model if check else None,
    )
    return (model, report) if output_loading_info else model


def transformers_config(config):
    """transformers' `ViTConfig` for an hf_vit config (raises `ValueError` naming the field it cannot express)."""
    import transformers

    if getattr(config, "backbone_depths", None) is not None:
        raise ValueError("`backbone_depths` is set: transformers 5 has no hybrid ViT.")
    if config.pooling != "cls" or not config.use_class_token:
        raise ValueError(f"`pooling` is {config.pooling!r}: transformers' ViT pools the class token only ('cls').")
    if config.position_embedding_type != "learned_1d":
        raise ValueError(
            f"`position_embedding_type` {config.position_embedding_type!r}: transformers' ViT has 'learned_1d' only."
        )
    # The other families' pieces: transformers' "vit" has none of them (hf_vit writes "vit" folders only).
    unsupported = {
        "use_distillation_token": False, "num_register_tokens": 0, "layer_scale_init_value": None,
        "mlp_type": "dense", "layer_norm_after_pooling": False,
    }
    for name, plain in unsupported.items():
        if getattr(config, name) != plain:
            raise ValueError(
                f"`{name}` is {getattr(config, name)!r}: transformers' ViT has no such part (it needs {plain!r}); "
                "keep the model in hf_vit's format."
            )
    if config.representation_size is not None and config.num_labels > 0:
        raise ValueError(
            f"`representation_size` is {config.representation_size} and `num_labels` {config.num_labels}: transformers' "
            "ViTForImageClassification has no tanh pre-logits layer. Export the bare model (num_labels=0; its pooler "
            "is the pre-logits layer) or drop the pre-logits layer first."
        )
    height, width = config.image_hw
    patch_h, patch_w = config.patch_hw
    if height != width or patch_h != patch_w:
        raise ValueError(
            f"`image_size` {config.image_size} / `patch_size` {config.patch_size}: transformers' ViT is square only."
        )
    fields = dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        image_size=height,
        patch_size=patch_h,
        num_channels=config.num_channels,
        qkv_bias=config.qkv_bias,
    )
    if config.num_labels > 0:
        fields.update(id2label=dict(config.id2label), label2id=dict(config.label2id))
    if config.representation_size is not None:
        fields.update(pooler_output_size=config.representation_size, pooler_act="tanh")
    return transformers.ViTConfig(**fields)


def save_transformers_vit(model, save_directory, max_shard_size="5GB") -> None:
    """Write an hf_vit `ViTForImageClassification` as a transformers "vit" folder: `config.json` and safetensors
    with the key names transformers writes (the 4.x names every version reads), sharded above `max_shard_size`.
    Stock transformers loads it with `ViTForImageClassification` (or `ViTModel` when `num_labels == 0`). Exact: the
    same tensors, activation and eps."""

    config = transformers_config(model.config)
    tensors = state_dict_to_transformers_vit(model.state_dict())
    if model.config.num_labels > 0:
        config.architectures = ["ViTForImageClassification"]
    else:
        config.architectures = ["ViTModel"]
        tensors = {k[len("vit.") :]: v for k, v in tensors.items() if k.startswith("vit.")}
    os.makedirs(save_directory, exist_ok=True)
    config.save_pretrained(save_directory)
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for filename, names in split.filename_to_tensors.items():
        shard = {n: tensors[n].contiguous() for n in names}
        save_file(shard, os.path.join(save_directory, filename), metadata={"format": "pt"})
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename}
        with open(os.path.join(save_directory, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)


__all__ = ["FORMAT", "infer", "load_transformers", "save_transformers_vit", "transformers_config"]
