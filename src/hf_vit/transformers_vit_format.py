"""transformers' own ViT-family checkpoints <-> hf_vit: the config translation and the key map.

It lives next to the model because `from_pretrained` needs it; `hf_vit.conversion` imports it.

Read (into hf_vit): the model types whose model hf_vit reproduces exactly, `SUPPORTED_MODEL_TYPES`:
- "vit": transformers' ViT (the paper's model);
- "vit_mae": ViT-MAE's encoder (He et al., "Masked Autoencoders Are Scalable Vision Learners"): its stored sin-cos
  position table is loaded as a learned one (as MAE's fine-tuning does); the decoder is dropped;
- "deit": DeiT (Touvron et al., "Training data-efficient image transformers & distillation through attention"):
  the distillation token, and the distillation head of `DeiTForImageClassificationWithTeacher`;
- "dinov2" / "dinov2_with_registers": DINOv2 (Oquab et al.) with LayerScale, the SwiGLU MLP of ViT-g, register
  tokens (Darcet et al., "Vision Transformers Need Registers") and its linear head on [class token, patch mean].
Written (from hf_vit): "vit" only (`state_dict_to_transformers_vit`).

transformers 5.x names its layers `layers.N.attention.q_proj` (or `encoder.layer.N...` for DINOv2); the files it
writes (and every Hub checkpoint such as google/vit-base-patch16-224) still use the 4.x names
`encoder.layer.N.attention.attention.query`. Both are read.

Each hf_vit class reproduces the transformers class of the same role on a folder: `ViTModel` (and `ViTBackbone`)
the bare model (`ViTMAEModel`, `DeiTModel`, `Dinov2Model`, ...), `ViTForImageClassification` the family's
classifier (`DeiTForImageClassification[WithTeacher]`, `Dinov2ForImageClassification`). ViT-MAE has no classifier in
transformers: `ViTForImageClassification` then builds MAE's own fine-tuning model (mean of the patch tokens, a new
LayerNorm of its own in place of the encoder's final one, timm's `fc_norm`, then the linear head).
"""

import json
import re

import torch
from safetensors.torch import load_file

from transformers import PreTrainedConfig
from transformers.utils import cached_file, logging


logger = logging.get_logger(__name__)


HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# `from_pretrained` arguments that steer loading rather than configure the model: never config overrides.
LOADING_KWARGS = HUB_KWARGS + (
    "ignore_mismatched_sizes", "use_safetensors", "weights_only", "fusion_config", "disable_mmap", "state_dict",
    "tqdm_class", "output_loading_info", "_from_auto", "_from_pipeline", "dtype", "torch_dtype", "device_map",
    "max_memory", "offload_folder", "offload_buffers", "quantization_config", "variant", "adapter_kwargs",
    "adapter_name", "generation_config", "gguf_file", "distributed_config", "device_mesh", "tp_plan", "tp_size",
    "trust_remote_code", "allow_all_kernels", "use_kernels", "kernel_config", "key_mapping",
)

# The model types whose checkpoints hf_vit reproduces exactly (see the module docstring).
SUPPORTED_MODEL_TYPES = ("vit", "vit_mae", "deit", "dinov2", "dinov2_with_registers")
# What `from_pretrained` builds from such a folder: "features" for the bare model (and the backbone),
# "classification" for ViTForImageClassification, "pretraining" for ViTForMaskedAutoencoding (ViT-MAE only: the
# encoder and its decoder).
TASKS = ("features", "classification", "pretraining")

# hf_vit name (within the base model) -> transformers 4.x name; q/k/v are fused into `qkv` separately. Export only.
_LAYER_RENAMES_4X = {
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_QKV_4X = ("attention.attention.query", "attention.attention.key", "attention.attention.value")

# Reading: every family's layer module (4.x file names and 5.x in-memory names) -> hf_vit's. The names never collide
# across families, so one table serves all of them.
_LAYER_MODULES = {
    "layernorm_before": "layernorm_before",  # ViT, ViT-MAE, DeiT
    "layernorm_after": "layernorm_after",
    "norm1": "layernorm_before",  # DINOv2
    "norm2": "layernorm_after",
    "attention.output.dense": "attention.o_proj",  # 4.x
    "attention.o_proj": "attention.o_proj",  # 5.x
    "intermediate.dense": "mlp.fc1",  # 4.x ViT, ViT-MAE, DeiT
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",  # 5.x, and DINOv2
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",  # DINOv2's SwiGLU (4.x): gate and value packed, gate first, as hf_vit's fc1
    "mlp.weights_out": "mlp.fc2",
    "mlp.down_proj": "mlp.fc2",  # DINOv2's SwiGLU (5.x)
    "layer_scale1": "layer_scale_attention",  # DINOv2's LayerScale (parameter `lambda1` -> `gamma`)
    "layer_scale2": "layer_scale_mlp",
}
_QKV_PARTS = {
    "attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2,  # 4.x
    "attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2,  # 5.x
}
_GATED_PARTS = {"mlp.gate_proj": 0, "mlp.up_proj": 1}  # DINOv2's SwiGLU (5.x): packed into fc1, gate first
_PARAMETER_RENAMES = {"lambda1": "gamma"}
# Tensors outside the blocks that keep their names (within the base model).
_SHARED = (
    "embeddings.cls_token",
    "embeddings.position_embeddings",
    "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embeddings.projection.bias",
    "embeddings.distillation_token",  # DeiT
    "embeddings.register_tokens",  # DINOv2 with registers
    "layernorm.weight",
    "layernorm.bias",
    "pooler.dense.weight",
    "pooler.dense.bias",
)
# The ones transformers' "vit" has (export).
_SHARED_VIT = tuple(name for name in _SHARED if name.split(".")[1] not in ("distillation_token", "register_tokens"))
# Heads (outside the base model): transformers name -> hf_vit name.
_HEADS = {
    "classifier": "classifier",
    "cls_classifier": "classifier",  # DeiTForImageClassificationWithTeacher
    "distillation_classifier": "distillation_classifier",
}
# Source tensors hf_vit has no place for, by design: (key prefix within the checkpoint, why, logged as a warning).
_DROPPED = (
    ("decoder.", "ViT-MAE's pixel decoder (pre-training only)", True),
    ("embeddings.mask_token", "the mask token of pre-training (DINOv2's iBOT), unused by the encoder", False),
)
# The base model's attribute in each family's heads (`vit.` in hf_vit).
_BASE_PREFIXES = ("vit.", "deit.", "dinov2_with_registers.", "dinov2.")

_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(?P<index>\d+)\.(?P<rest>.+)$")


def _hub_kwargs(kwargs):
    return {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}


def checkpoint_model_type(pretrained_model_name_or_path, kwargs) -> str | None:
    """The `model_type` of the folder's or repo's config.json; None when it holds no (readable) config."""
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **_hub_kwargs(kwargs))
    except OSError:
        return None
    return config_dict.get("model_type")


def checkpoint_architectures(pretrained_model_name_or_path, kwargs) -> list[str]:
    """The `architectures` (the class that saved it) of the folder's or repo's config.json; [] when unknown."""
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **_hub_kwargs(kwargs))
    except OSError:
        return []
    return list(config_dict.get("architectures") or [])


def is_transformers_vit_config(pretrained_model_name_or_path, kwargs) -> bool:
    """Whether the folder or repo holds a transformers "vit" config (False when it holds no config at all)."""
    return checkpoint_model_type(pretrained_model_name_or_path, kwargs) == "vit"


def check_supported_model_type(model_type, where) -> None:
    """Raise a `ValueError` naming `model_type` and the supported ones when hf_vit cannot reproduce the checkpoint."""
    if model_type in (None, "hf_vit") or model_type in SUPPORTED_MODEL_TYPES:
        return
    raise ValueError(
        f"{where} holds a checkpoint of model_type {model_type!r}, which hf_vit cannot reproduce (it would load "
        f"something else). Supported: 'hf_vit' and transformers' {list(SUPPORTED_MODEL_TYPES)}."
    )


# The config fields every family shares with hf_vit's, and PreTrainedConfig's own (labels, problem type, ...).
_SHARED_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps",
    "initializer_range", "qkv_bias", "drop_path_rate",
)
_GENERIC_FIELDS = (
    "id2label", "label2id", "problem_type", "dtype", "torch_dtype", "output_attentions", "output_hidden_states",
    "return_dict", "chunk_size_feed_forward",
)
# transformers' own defaults where a family's config.json may leave a field out (not hf_vit's).
_FAMILY_DEFAULTS = {
    "vit": {"hidden_act": "gelu", "layer_norm_eps": 1e-12},
    "vit_mae": {"hidden_act": "gelu", "layer_norm_eps": 1e-12},
    "deit": {"hidden_act": "gelu", "layer_norm_eps": 1e-12},
    "dinov2": {"hidden_act": "gelu", "layer_norm_eps": 1e-6},
    "dinov2_with_registers": {"hidden_act": "gelu", "layer_norm_eps": 1e-6},
}
# Each family's position-embedding resampling (transformers' `interpolate_pos_encoding`): all bicubic on the
# half-pixel grid; DINOv2 with registers anti-aliased on top. (Their code resamples whenever the grid differs;
# hf_vit asks for `interpolate_pos_encoding=True`, as for its own models.)
_RESAMPLING = {
    "vit_mae": {"position_embedding_interpolation": "bicubic", "position_embedding_align_corners": False},
    "deit": {"position_embedding_interpolation": "bicubic", "position_embedding_align_corners": False},
    "dinov2": {"position_embedding_interpolation": "bicubic", "position_embedding_align_corners": False},
    "dinov2_with_registers": {
        "position_embedding_interpolation": "bicubic", "position_embedding_align_corners": False,
        "position_embedding_antialias": True,
    },
}


# transformers' ViTMAEConfig defaults for the decoder and the objective (a config.json may leave them out).
_MAE_DEFAULTS = {
    "decoder_hidden_size": 512,
    "decoder_num_hidden_layers": 8,
    "decoder_num_attention_heads": 16,
    "decoder_intermediate_size": 2048,
    "mask_ratio": 0.75,
    "norm_pix_loss": False,
}
# ViT-MAE's decoder, outside its blocks: transformers name (within `decoder.`) -> hf_vit's (within `decoder.`).
_MAE_DECODER = {
    "decoder_embed": "embed",
    "decoder_norm": "layernorm",
    "decoder_pred": "pred",
}
# The fixed sin-cos tables ViT-MAE stores as parameters; hf_vit computes them (the loader checks they agree).
MAE_FIXED_TABLES = ("vit.embeddings.position_embeddings", "decoder.position_embeddings")


def _tanh_pooler_width(config_dict) -> int:
    if config_dict.get("pooler_act", "tanh") != "tanh":
        raise ValueError(
            f"This transformers {config_dict.get('model_type')} checkpoint's pooler uses "
            f"`pooler_act={config_dict['pooler_act']!r}`; hf_vit's pre-logits layer is tanh (the paper's), so it cannot "
            "be loaded as is."
        )
    return config_dict.get("pooler_output_size") or config_dict.get("hidden_size", 768)


def dinov2_intermediate_size(hidden_size: int, mlp_ratio, swiglu: bool) -> int:
    """The MLP width of transformers' (and DINOv2's) MLP: hidden * mlp_ratio, or for the SwiGLU MLP 2/3 of it rounded
    up to a multiple of 8 (the width of each of its two projections)."""
    width = int(hidden_size * mlp_ratio)
    if swiglu:
        width = (int(width * 2 / 3) + 7) // 8 * 8
    return width


def config_from_transformers(config_dict: dict, weight_names, task: str = "features") -> tuple[dict, list[str]]:
    """
    hf_vit `ViTConfig` fields for a transformers config dict of a `SUPPORTED_MODEL_TYPES` family, and notes on what
    the translation chose (worth a warning). `weight_names`: the checkpoint's tensor names (which heads and pooler it holds). `task`:
    "features" (the bare model) or "classification" (see the module docstring).
    """
    model_type = config_dict.get("model_type")
    check_supported_model_type(model_type, "The config")
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}.")
    if task == "pretraining" and model_type != "vit_mae":
        raise ValueError(
            f"Only transformers' ViT-MAE checkpoints hold a pre-training decoder (ViTForMaskedAutoencoding); this one is "
            f"{model_type!r}: load it with ViTModel or ViTForImageClassification."
        )
    names = set(weight_names)
    has = lambda suffix: any(n == suffix or n.endswith("." + suffix) for n in names)  # noqa: E731
    notes = []
    out = {k: config_dict[k] for k in (*_SHARED_FIELDS, *_GENERIC_FIELDS) if k in config_dict}
    for name, value in _FAMILY_DEFAULTS[model_type].items():
        out.setdefault(name, value)
    out.update(_RESAMPLING.get(model_type, {}))
    out.update(pooling="cls", head_zero_init=True, representation_size=None)

    if model_type == "vit":
        if has("pooler.dense.weight"):
            out["representation_size"] = _tanh_pooler_width(config_dict)
    elif model_type == "vit_mae":
        out["use_class_token"] = True
        if task == "pretraining":
            # The whole pre-training model: MAE's fixed sin-cos positions (checked against the stored tables when the
            # weights are loaded), the decoder and the objective.
            out.update(pooling="gap", position_embedding_type="sincos_2d", position_embedding_sincos_style="mae")
            for name, default in _MAE_DEFAULTS.items():
                out[name] = config_dict.get(name, default)
        elif task == "classification":
            # NOTE: MAE's fine-tuning (its main_finetune.py, timm's fc_norm): average the patch tokens, then a fresh
            # LayerNorm; the encoder's final LayerNorm is not used.
            out.update(pooling="gap", layer_norm_after_pooling=True)
            notes.append(
                "ViT-MAE has no classifier: built MAE's fine-tuning head (mean of the patch tokens, a new LayerNorm in "
                "place of the encoder's final one, a new linear head); pass layer_norm_after_pooling=False and "
                "pooling='cls' to keep the final LayerNorm"
            )
        else:
            out["pooling"] = "gap"  # MAE fine-tunes on the patch mean; transformers' ViTMAEModel has no pooler
    elif model_type == "deit":
        out["use_distillation_token"] = True
        out["use_distillation_head"] = has("distillation_classifier.weight")
        if task == "features" and has("pooler.dense.weight"):
            out["representation_size"] = _tanh_pooler_width(config_dict)
    else:  # dinov2, dinov2_with_registers
        swiglu = bool(config_dict.get("use_swiglu_ffn", False))
        hidden = config_dict.get("hidden_size", 768)
        out["intermediate_size"] = dinov2_intermediate_size(hidden, config_dict.get("mlp_ratio", 4), swiglu)
        if swiglu:
            out.update(mlp_type="gated", hidden_act="silu")  # transformers' SwiGLU ignores hidden_act
        out["layer_scale_init_value"] = float(config_dict.get("layerscale_value", 1.0))
        out["num_register_tokens"] = int(config_dict.get("num_register_tokens", 0)) if model_type != "dinov2" else 0
        if task == "classification":
            out["pooling"] = "cls_and_gap"  # Dinov2ForImageClassification's linear head
    return out, notes


def config_from_transformers_vit(config_dict: dict, has_pooler: bool) -> dict:
    """hf_vit `ViTConfig` fields for a transformers "vit" config dict (a `ViTModel` checkpoint's pooler becomes the
    tanh pre-logits layer, `representation_size`)."""
    fields, _ = config_from_transformers({**config_dict, "model_type": "vit"}, ["pooler.dense.weight"] if has_pooler else [])
    return fields


def state_dict_from_transformers(state_dict: dict, keep_decoder: bool = False) -> tuple[dict, list[str]]:
    """
    Tensors of any `SUPPORTED_MODEL_TYPES` checkpoint (4.x or 5.x names, with or without the base model's prefix) ->
    (hf_vit-named tensors, the source keys dropped on purpose: MAE's decoder, the pre-training mask token).

    The base model's prefix (`vit.`, `deit.`, `dinov2.`, ...) becomes hf_vit's `vit.`; bare keys stay bare. With
    `keep_decoder`, ViT-MAE's decoder becomes `ViTForMaskedAutoencoding`'s `decoder.` (its fixed position table as
    `decoder.position_embeddings`, for the loader to check and drop). Raises a `ValueError` listing any key it does
    not know, rather than dropping it silently.
    """
    out, pending, unknown, dropped = {}, {}, [], []
    for key, tensor in state_dict.items():
        source_prefix = next((p for p in _BASE_PREFIXES if key.startswith(p)), "")
        bare = key[len(source_prefix) :]
        prefix = "vit." if source_prefix else ""
        if keep_decoder and key.startswith("decoder."):
            inner = key[len("decoder.") :]
            module, _, param = inner.rpartition(".")
            if inner == "mask_token":
                out["decoder.mask_token"] = tensor
            elif inner == "decoder_pos_embed":
                out["decoder.position_embeddings"] = tensor
            elif module in _MAE_DECODER:
                out[f"decoder.{_MAE_DECODER[module]}.{param}"] = tensor
            elif inner.startswith(("decoder_layers.", "decoder_encoder.layer.")):
                # 4.x files and 5.x memory: `decoder_layers.N`; transformers 5 writes `decoder_encoder.layer.N`.
                _translate_layer_key(inner[len("decoder_") :], tensor, "decoder.layers.", out, pending, unknown, key)
            else:
                unknown.append(key)
            continue
        if any(bare.startswith(start) for start, _, _ in _DROPPED):
            dropped.append(key)
            continue
        if bare in _SHARED:
            out[prefix + bare] = tensor
            continue
        head, _, param = bare.rpartition(".")
        if not source_prefix and head in _HEADS:
            out[f"{_HEADS[head]}.{param}"] = tensor
            continue
        _translate_layer_key(bare, tensor, f"{prefix}encoder.layers.", out, pending, unknown, key)
    if unknown:
        raise ValueError(
            f"Unknown keys in the transformers checkpoint: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    for (target, param, count), parts in pending.items():
        if len(parts) != count:
            raise ValueError(f"The checkpoint has only {len(parts)} of the {count} fused parts of {target} ({param}).")
        out[f"{target}.{param}"] = torch.cat([parts[i] for i in range(count)], dim=0)
    return out, dropped


def _translate_layer_key(bare, tensor, target_prefix, out, pending, unknown, key) -> None:
    """One block tensor `layers.N.<module>.<param>` (or `encoder.layer.N...`) -> `<target_prefix>N.<hf_vit module>`;
    q/k/v and gate/value parts wait in `pending` to be fused; anything else is recorded in `unknown`."""
    match = _LAYER.match(bare)
    if match is None:
        unknown.append(key)
        return
    rest, target = match["rest"], f"{target_prefix}{match['index']}."
    module, _, param = rest.rpartition(".")
    if module in _LAYER_MODULES:
        out[target + f"{_LAYER_MODULES[module]}.{_PARAMETER_RENAMES.get(param, param)}"] = tensor
    elif module in _QKV_PARTS:
        pending.setdefault((target + "attention.qkv", param, 3), {})[_QKV_PARTS[module]] = tensor
    elif module in _GATED_PARTS:
        pending.setdefault((target + "mlp.fc1", param, 2), {})[_GATED_PARTS[module]] = tensor
    else:
        unknown.append(key)


def state_dict_from_transformers_vit(state_dict: dict) -> dict:
    """transformers "vit" tensors (4.x or 5.x names, with or without the `vit.` prefix) -> hf_vit names.

    Raises a `ValueError` listing any key it does not know, rather than dropping it silently.
    """
    return state_dict_from_transformers(state_dict)[0]


def state_dict_to_transformers_vit(state_dict: dict) -> dict:
    """hf_vit tensors -> transformers "vit" tensors with the 4.x names every transformers version reads."""
    out = {}
    pattern = re.compile(r"^(?P<prefix>(?:vit\.)?)encoder\.layers\.(?P<index>\d+)\.(?P<module>.+)\.(?P<param>weight|bias)$")
    for key, tensor in state_dict.items():
        bare = key[4:] if key.startswith("vit.") else key
        if bare in _SHARED_VIT or key.startswith("classifier."):
            out[key] = tensor
            continue
        match = pattern.match(key)
        if match is None:
            raise ValueError(f"{key!r} has no counterpart in transformers' ViT (only plain ViTs with cls pooling export).")
        base = f"{match['prefix']}encoder.layer.{match['index']}."
        module, param = match["module"], match["param"]
        if module == "attention.qkv":
            for name, part in zip(_QKV_4X, tensor.chunk(3, dim=0)):
                out[f"{base}{name}.{param}"] = part.contiguous()
        elif module in _LAYER_RENAMES_4X:
            out[f"{base}{_LAYER_RENAMES_4X[module]}.{param}"] = tensor
        else:
            raise ValueError(f"{key!r} has no counterpart in transformers' ViT.")
    return out


def _read_weights(path, kwargs) -> dict:
    """All tensors of a checkpoint folder or repo: safetensors (single or sharded); pickle only when asked for."""
    hub = _hub_kwargs(kwargs)
    single = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False, **hub)
    if single is not None:
        return load_file(single)
    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub)
    if index is not None:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state_dict = {}
        for shard in shards:
            state_dict.update(load_file(cached_file(path, shard, **hub)))
        return state_dict
    pickle = cached_file(path, "pytorch_model.bin", _raise_exceptions_for_missing_entries=False, **hub)
    if pickle is not None:
        if kwargs.get("use_safetensors") is False:
            return torch.load(pickle, map_location="cpu", weights_only=True)
        raise OSError(
            f"{path} holds only a pickle checkpoint (pytorch_model.bin). Loading pickles is an explicit opt-in: pass "
            "`use_safetensors=False` if you trust its source."
        )
    raise OSError(f"No model weights (model.safetensors, its sharded index, or pytorch_model.bin) found in {path}.")


def unused_by_config(config, state_dict: dict) -> list[str]:
    """hf_vit tensors of a translated checkpoint that `config` (a `ViTConfig` or its fields) has no place for, on purpose: the pooler without
    `representation_size`, the final LayerNorm with `layer_norm_after_pooling`, a head the config does not have."""
    get = config.get if isinstance(config, dict) else lambda name, default=None: getattr(config, name, default)
    unused = []
    for key in state_dict:
        bare = key[4:] if key.startswith("vit.") else key
        if bare.startswith("pooler.dense.") and get("representation_size") is None:
            unused.append(key)
        elif bare.startswith("layernorm.") and get("layer_norm_after_pooling", False):
            unused.append(key)
        elif key.startswith("distillation_classifier.") and not get("use_distillation_head", False):
            unused.append(key)
    return unused


def load_transformers_vit(config_class, path, kwargs, task: str = "features"):
    """
    Read a transformers checkpoint of a `SUPPORTED_MODEL_TYPES` family: (hf_vit config, hf_vit state dict, the kwargs
    left for from_pretrained). `task`: "features" (`ViTModel`, `ViTBackbone`) or "classification"
    (`ViTForImageClassification`), see the module docstring. What is left out on purpose is logged.
    """
    kwargs = dict(kwargs)
    config_dict, _ = PreTrainedConfig.get_config_dict(path, **_hub_kwargs(kwargs))
    model_type = config_dict.get("model_type")
    weights = _read_weights(path, kwargs)
    fields, notes = config_from_transformers(config_dict, weights.keys(), task)
    # Config overrides passed to from_pretrained (num_labels, id2label, attn_implementation, ...) apply here, as
    # from_pretrained would apply them; loading options go on to from_pretrained (without the hub ones: the
    # weights are read already).
    loading = {k: kwargs.pop(k) for k in LOADING_KWARGS if k in kwargs}
    config, unused = config_class.from_dict(fields, return_unused_kwargs=True, **kwargs)
    for name in HUB_KWARGS + ("use_safetensors", "weights_only"):
        loading.pop(name, None)
    state_dict, dropped = state_dict_from_transformers(weights, keep_decoder=task == "pretraining")
    left_out = unused_by_config(config, state_dict)
    for key in left_out:
        del state_dict[key]
    details = []
    for prefix, why, important in _DROPPED:
        keys = [k for k in dropped if prefix in k]
        if keys:
            (notes if important else details).append(f"dropped {len(keys)} tensor(s) of {why} ({keys[0]}, ...)")
    if left_out:
        details.append(f"not used by this model: {', '.join(left_out[:4])}{' ...' if len(left_out) > 4 else ''}")
    for note in notes:
        logger.warning(f"{path} ({model_type}): {note}.")
    for note in details:
        logger.info(f"{path} ({model_type}): {note}.")
    return config, state_dict, {**unused, **loading}


__all__ = [
    "MAE_FIXED_TABLES",
    "SUPPORTED_MODEL_TYPES",
    "check_supported_model_type",
    "checkpoint_architectures",
    "checkpoint_model_type",
    "config_from_transformers",
    "config_from_transformers_vit",
    "state_dict_from_transformers",
    "unused_by_config",
    "load_transformers_vit",
    "state_dict_from_transformers_vit",
    "state_dict_to_transformers_vit",
]
