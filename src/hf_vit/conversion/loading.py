"""From any supported checkpoint to an hf_vit model: the steps every format shares.

1. the format module reads the config from the file's shapes and gives its key map;
2. the key map is applied one tensor at a time into the model the file describes (parameters created on the meta
   device, never randomly initialised: peak memory is the weights once, plus one tensor);
3. the model is adapted to the requested config: position embeddings resampled to another image size with the
   shared `resample_position_embeddings` (the reference's corner-aligned bilinear by default; the config's
   `position_embedding_interpolation` / `position_embedding_align_corners` choose bicubic or timm's bilinear), and,
   when a different label set is asked for, the paper's fine-tuning head (section 3.2): pre-training head and
   pre-logits layer dropped, a new zero-initialised linear classifier.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from ..configuration_hf_vit import ViTConfig, as_pair
from ..modeling_hf_vit import ViTForImageClassification, resample_position_embeddings
from .keymap import ConversionError, ConversionReport, apply_rules


POSITION_KEY = "vit.embeddings.position_embeddings"
# Config fields that set numerics, not shapes: a caller may pin others (e.g. timm's), the source check uses the file's.
_NUMERICS_FIELDS = (
    "hidden_act",
    "layer_norm_eps",
    "backbone_group_norm_eps",
    "backbone_weight_standardization",
    "backbone_weight_standardization_eps",
)


@contextlib.contextmanager
def parameters_on_meta():
    """Create every parameter on the meta device (no memory, no initialisation); buffers stay real."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def expected_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    with parameters_on_meta():
        model = ViTForImageClassification(config)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def instantiate(config: ViTConfig, state_dict: dict[str, torch.Tensor]) -> tuple[ViTForImageClassification, list[str]]:
    """A `ViTForImageClassification` holding `state_dict`'s tensors (not copies). Parameters the state dict lacks get
    the model's own initialisation; their names are returned."""
    with parameters_on_meta():
        model = ViTForImageClassification(config)
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    if result.unexpected_keys:
        raise ConversionError(f"internal: tensors without a place in the model: {result.unexpected_keys[:8]}")
    fresh = []
    for module_name, module in model.named_modules():
        metas = [name for name, p in module.named_parameters(recurse=False) if p.is_meta]
        if not metas:
            continue
        for name in metas:
            old = module._parameters[name]
            fresh_tensor = torch.empty(old.shape, dtype=old.dtype)
            module._parameters[name] = nn.Parameter(fresh_tensor, requires_grad=old.requires_grad)
            fresh.append(f"{module_name}.{name}" if module_name else name)
        model._init_weights(module)
    return model.eval(), fresh


def source_grid(patch_positions: int, patch_hw, source_image_size=None, path="", token_stride=None) -> tuple[int, int]:
    """The token grid the file's position table was made for: from `source_image_size` when given, else square."""
    token_stride = token_stride or patch_hw
    if source_image_size is not None:
        height, width = as_pair(source_image_size)
        grid = (height // token_stride[0], width // token_stride[1])
        if grid[0] * grid[1] != patch_positions:
            raise ConversionError(
                f"{path}: source_image_size {source_image_size} makes a {grid[0]}x{grid[1]} patch grid, but the "
                f"position table has {patch_positions} patch rows."
            )
        return grid
    side = math.isqrt(patch_positions)
    if side * side != patch_positions:
        raise ConversionError(
            f"{path}: the position table has {patch_positions} patch rows, which is not a square grid; pass the image "
            "size the checkpoint was trained at as source_image_size=(height, width) (CLI: --source-image-size H W)."
        )
    return (side, side)


def target_config(source_fields: dict, config: ViTConfig | None, overrides: dict, keep_pre_logits: bool) -> ViTConfig:
    """The config of the model to return: `config` as given, or the file's fields with `overrides` on top. Asking for
    another label set (num_labels / id2label) drops the pre-logits layer, as the paper's fine-tuning does, unless
    `keep_pre_logits` or `representation_size` is given."""
    if config is not None:
        if overrides:
            raise ValueError(f"Pass either `config` or config overrides ({sorted(overrides)}), not both.")
        return config
    fields = dict(source_fields)
    overrides = dict(overrides)
    if "id2label" in overrides and "num_labels" not in overrides:
        overrides["num_labels"] = len(overrides["id2label"])
    if "num_labels" in overrides and "id2label" not in overrides:
        fields.pop("id2label", None)
    new_head = overrides.get("num_labels", fields.get("num_labels")) != fields.get("num_labels")
    if new_head and "representation_size" not in overrides and not keep_pre_logits:
        fields["representation_size"] = None
    return ViTConfig(**{**fields, **overrides})


def convert(source, info: dict, rules_for, report: ConversionReport, config=None, overrides=None, *,
            source_image_size=None, keep_pre_logits=False, strict=True, check=None):
    """Shared conversion steps (see the module docstring).

    `info`: what the format module read from the file (`fields`, `patch_positions`, `token_stride` when a token
    covers more than a patch of input pixels, and `fresh_keys`: tensors the source's model builds fresh, e.g. MAE's
    fine-tuning LayerNorm). `rules_for(config)`: the format's key map for the config that matches
    the file. `check(model)`: called on the model exactly as the file describes it, before any adaptation (numerics
    against the source framework). Returns (model, report).
    """
    fields = dict(info["fields"])
    patch_hw = as_pair(fields["patch_size"])
    stride = info.get("token_stride", patch_hw)
    if source_image_size is None:
        source_image_size = info.get("source_image_size")  # what the file's own config says, when it has one
    if info["patch_positions"] is None:
        # No position table (fixed sin-cos embeddings): any resolution is the file's; take the requested one.
        size = source_image_size or (overrides or {}).get("image_size") or (config.image_size if config else 224)
        height, width = as_pair(size)
        grid = (height // stride[0], width // stride[1])
        if source_image_size is None:
            report.notes.append(f"the file has no position table; built at {height}x{width}")
    else:
        grid = source_grid(info["patch_positions"], patch_hw, source_image_size, source.path, stride)
    height, width = grid[0] * stride[0], grid[1] * stride[1]
    fields["image_size"] = height if height == width else [height, width]

    wanted = target_config(fields, config, dict(overrides or {}), keep_pre_logits)
    # The model the file describes, with the requested architecture otherwise (so a config that does not fit the
    # file is caught here, naming the tensors).
    file_config = copy.deepcopy(wanted)
    file_config.image_size = fields["image_size"]
    file_config.representation_size = fields["representation_size"]
    if file_config.num_labels != fields["num_labels"]:
        file_config.num_labels = fields["num_labels"]
        file_config.id2label = {i: f"LABEL_{i}" for i in range(fields["num_labels"])}
        file_config.label2id = {v: k for k, v in file_config.id2label.items()}
    file_config.validate_architecture()
    shapes = expected_shapes(file_config)
    rules = rules_for(ViTConfig(**fields))
    state_dict = apply_rules(rules, source, shapes, report)
    missing = sorted(set(shapes) - set(state_dict) - set(info.get("fresh_keys", ())))
    if missing:
        raise ConversionError(
            f"{source.path}: the config expects tensors the checkpoint does not have: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}."
        )
    if report.unused_keys and strict:
        raise ConversionError(
            f"{source.path}: {len(report.unused_keys)} array(s) were not used by the {report.format} key map: "
            f"{report.unused_keys[:8]}{' ...' if len(report.unused_keys) > 8 else ''}. They belong to a part hf_vit "
            "does not have; pass strict=False (CLI: --allow-unused) to convert without them."
        )
    if check is not None:
        # The source's own numerics (activation, eps) even where the caller asked for others: this checks the weights.
        check_config = copy.deepcopy(file_config)
        for name in _NUMERICS_FIELDS:
            if name in fields:
                setattr(check_config, name, fields[name])
        model, _ = instantiate(check_config, state_dict)  # shares the tensors: no copy
        check(model)
        del model

    # Resolution: resample the patch rows of the position table on the 2D grid (class-token row kept).
    new_grid = tuple(wanted.grid_size)
    if new_grid != tuple(grid) and POSITION_KEY in state_dict:
        state_dict[POSITION_KEY] = resample_position_embeddings(
            state_dict[POSITION_KEY], grid, new_grid, num_prefix_tokens=wanted.num_prefix_positions,
            mode=wanted.position_embedding_interpolation, align_corners=wanted.position_embedding_align_corners,
            antialias=wanted.position_embedding_antialias,
        )
        how = f"{wanted.position_embedding_interpolation}, align_corners={wanted.position_embedding_align_corners}"
        if wanted.position_embedding_antialias:
            how += ", antialias"
        report.resampled_position_embeddings = (tuple(grid), new_grid, how)

    # Head: another label set gets a new classifier; another representation_size a new pre-logits layer too.
    source_keys = {r.target: r.sources for r in rules}
    dropped = []
    if wanted.num_labels != fields["num_labels"] or wanted.representation_size != fields["representation_size"]:
        dropped += ["classifier.weight", "classifier.bias", "distillation_classifier.weight", "distillation_classifier.bias"]
    if wanted.representation_size != fields["representation_size"]:
        dropped += ["vit.pooler.dense.weight", "vit.pooler.dense.bias"]
    for name in dropped:
        if state_dict.pop(name, None) is not None:
            report.dropped_keys.extend(source_keys.get(name, (name,)))
    model, fresh = instantiate(wanted, state_dict)
    report.new_keys = fresh
    return model, report


__all__ = ["convert", "expected_shapes", "instantiate", "parameters_on_meta", "source_grid", "target_config"]
