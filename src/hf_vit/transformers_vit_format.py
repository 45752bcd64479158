"""transformers' own ViT ("vit") checkpoints <-> hf_vit: the config translation and the key map, both directions.

It lives next to the model because `from_pretrained` needs it; `hf_vit.conversion` imports it.
transformers 5.x names its layers `layers.N.attention.q_proj`; the files it writes (and every Hub checkpoint such as
google/vit-base-patch16-224) still use the 4.x names `encoder.layer.N.attention.attention.query`. Both are read.
"""

import json
import re

import torch
from safetensors.torch import load_file

from transformers import PreTrainedConfig
from transformers.utils import cached_file


HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# `from_pretrained` arguments that steer loading rather than configure the model: never config overrides.
LOADING_KWARGS = HUB_KWARGS + (
    "ignore_mismatched_sizes", "use_safetensors", "weights_only", "fusion_config", "disable_mmap", "state_dict",
    "tqdm_class", "output_loading_info", "_from_auto", "_from_pipeline", "dtype", "torch_dtype", "device_map",
    "max_memory", "offload_folder", "offload_buffers", "quantization_config", "variant", "adapter_kwargs",
    "adapter_name", "generation_config", "gguf_file", "distributed_config", "device_mesh", "tp_plan", "tp_size",
    "trust_remote_code", "allow_all_kernels", "use_kernels", "kernel_config", "key_mapping",
)

# hf_vit name (within the base model) -> transformers 4.x name; q/k/v are fused into `qkv` separately.
_LAYER_RENAMES_4X = {
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_LAYER_RENAMES_5X = {
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
    "attention.o_proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV_4X = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
_QKV_5X = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
# Tensors outside the blocks keep their names in all three formats.
_SHARED = (
    "embeddings.cls_token",
    "embeddings.position_embeddings",
    "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embeddings.projection.bias",
    "layernorm.weight",
    "layernorm.bias",
    "pooler.dense.weight",
    "pooler.dense.bias",
)

_LAYER_4X = re.compile(r"^(?P<prefix>(?:vit\.)?)encoder\.layer\.(?P<index>\d+)\.(?P<rest>.+)$")
_LAYER_5X = re.compile(r"^(?P<prefix>(?:vit\.)?)layers\.(?P<index>\d+)\.(?P<rest>.+)$")


def _hub_kwargs(kwargs):
    return {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}


def is_transformers_vit_config(pretrained_model_name_or_path, kwargs) -> bool:
    """Whether the folder or repo holds a transformers "vit" config (False when it holds no config at all)."""
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **_hub_kwargs(kwargs))
    except OSError:
        return False
    return config_dict.get("model_type") == "vit"


def config_from_transformers_vit(config_dict: dict, has_pooler: bool) -> dict:
    """hf_vit `ViTConfig` fields for a transformers "vit" config dict (a `ViTModel` checkpoint's pooler becomes the
    tanh pre-logits layer, `representation_size`)."""
    out = {k: v for k, v in config_dict.items() if k not in ("model_type", "architectures", "transformers_version")}
    for dropped in ("encoder_stride", "pooler_output_size", "pooler_act", "auto_map"):
        out.pop(dropped, None)
    out.setdefault("hidden_act", "gelu")  # transformers' defaults, not hf_vit's (exact GELU, eps 1e-12)
    out.setdefault("layer_norm_eps", 1e-12)
    out["pooling"] = "cls"
    out["head_zero_init"] = True
    out["representation_size"] = None
    if has_pooler:
        if config_dict.get("pooler_act", "tanh") != "tanh":
            raise ValueError(
                f"This transformers ViT checkpoint's pooler uses `pooler_act={config_dict['pooler_act']!r}`; hf_vit's "
                "pre-logits layer is tanh (the paper's), so it cannot be loaded as is."
            )
        out["representation_size"] = config_dict.get("pooler_output_size") or config_dict.get("hidden_size", 768)
    return out


def state_dict_from_transformers_vit(state_dict: dict) -> dict:
    """transformers "vit" tensors (4.x or 5.x names, with or without the `vit.` prefix) -> hf_vit names.

    Raises a `ValueError` listing any key it does not know, rather than dropping it silently.
    """
    out, pending_qkv, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        bare = key[4:] if key.startswith("vit.") else key
        prefix = "vit." if key.startswith("vit.") else ""
        if bare in _SHARED or key.startswith("classifier."):
            out[key] = tensor
            continue
        match = _LAYER_4X.match(key) or _LAYER_5X.match(key)
        if match is None:
            unknown.append(key)
            continue
        renames, qkv_names = (_LAYER_RENAMES_4X, _QKV_4X) if _LAYER_4X.match(key) else (_LAYER_RENAMES_5X, _QKV_5X)
        rest, target = match["rest"], f"{prefix}encoder.layers.{match['index']}."
        param = rest.rsplit(".", 1)[-1]
        module = rest[: -len(param) - 1]
        hf_vit_name = next((ours for ours, theirs in renames.items() if theirs == module), None)
        if hf_vit_name is not None:
            out[target + f"{hf_vit_name}.{param}"] = tensor
        elif module in qkv_names:
            pending_qkv.setdefault((target, param), {})[qkv_names.index(module)] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Unknown keys in the transformers ViT checkpoint: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    for (target, param), parts in pending_qkv.items():
        if len(parts) != 3:
            raise ValueError(f"The checkpoint has only {len(parts)} of query/key/value for {target}attention ({param}).")
        out[f"{target}attention.qkv.{param}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


def state_dict_to_transformers_vit(state_dict: dict) -> dict:
    """hf_vit tensors -> transformers "vit" tensors with the 4.x names every transformers version reads."""
    out = {}
    pattern = re.compile(r"^(?P<prefix>(?:vit\.)?)encoder\.layers\.(?P<index>\d+)\.(?P<module>.+)\.(?P<param>weight|bias)$")
    for key, tensor in state_dict.items():
        bare = key[4:] if key.startswith("vit.") else key
        if bare in _SHARED or key.startswith("classifier."):
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


def load_transformers_vit(config_class, path, kwargs):
    """Read a transformers "vit" checkpoint: (hf_vit config, hf_vit state dict, the kwargs left for from_pretrained)."""
    kwargs = dict(kwargs)
    config_dict, _ = PreTrainedConfig.get_config_dict(path, **_hub_kwargs(kwargs))
    weights = _read_weights(path, kwargs)
    has_pooler = any(k.endswith("pooler.dense.weight") for k in weights)
    fields = config_from_transformers_vit(config_dict, has_pooler)
    # Config overrides passed to from_pretrained (num_labels, id2label, attn_implementation, ...) apply here, as
    # from_pretrained would apply them; loading options go on to from_pretrained (without the hub ones: the
    # weights are read already).
    loading = {k: kwargs.pop(k) for k in LOADING_KWARGS if k in kwargs}
    config, unused = config_class.from_dict(fields, return_unused_kwargs=True, **kwargs)
    for name in HUB_KWARGS + ("use_safetensors", "weights_only"):
        loading.pop(name, None)
    return config, state_dict_from_transformers_vit(weights), {**unused, **loading}


__all__ = [
    "config_from_transformers_vit",
    "load_transformers_vit",
    "state_dict_from_transformers_vit",
    "state_dict_to_transformers_vit",
]
