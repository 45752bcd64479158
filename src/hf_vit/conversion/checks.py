"""Numerical checks of a conversion against the source framework, run before anything is written.

Each reference computes the source model's outputs on the same random images from the source file itself:
- `.npz`: the reference Flax forward (`jax_reference`, with jax where installed, else its NumPy form) and, where timm
  is installed, timm's own `.npz` loader;
- timm state dicts: timm's `VisionTransformer` loading the file's tensors (`strict=True`);
- transformers "vit" folders: transformers' own `ViTForImageClassification` / `ViTModel`.
The hf_vit model is the one the file describes (before any resolution change or new head), so the check is of the
key map, not of the adaptation.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import torch

from . import jax_reference as reference
from .keymap import ConversionError
from .timm_format import timm_architecture, timm_model_args


# |hf_vit - reference| <= ATOL + RTOL * max|reference|: fp32 sums over thousands of terms in another order agree to
# ~1e-6 relative; a key-map mistake is off by O(1).
ATOL, RTOL = 1e-4, 1e-4


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def sample_images(config, batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    """(B, C, H, W) float32 in [-1, 1], the original checkpoints' input range."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, config.num_channels, *config.image_hw, generator=generator) * 2 - 1


@torch.no_grad()
def hf_vit_outputs(model, pixel_values) -> dict[str, np.ndarray]:
    """What a reference may compare: `logits` (the classifier's, both heads averaged for a distilled one), `pooled`,
    `encoded` (the tokens after the final LayerNorm, or un-normalised with `layer_norm_after_pooling`) and
    `blocks` (the last block's output, before any final LayerNorm)."""
    base = model.vit(pixel_values, output_hidden_states=True)
    out = {
        "encoded": base.last_hidden_state.numpy(),
        "pooled": base.pooler_output.numpy(),
        "blocks": base.hidden_states[-1].numpy(),
    }
    if model.config.num_labels > 0:
        out["logits"] = model(pixel_values).logits.numpy()
    return out


def compare(ours: dict, theirs: dict, name: str, path: str) -> float:
    """Max |difference| over the outputs both sides have; raises `ConversionError` beyond tolerance."""
    worst, scale = 0.0, 0.0
    common = [k for k in ("logits", "pooled", "encoded", "blocks") if theirs.get(k) is not None and k in ours]
    if not common:
        raise ConversionError(f"internal: {name} gave no output to compare.")
    for key in common:
        a, b = np.asarray(ours[key], dtype=np.float64), np.asarray(theirs[key], dtype=np.float64)
        if a.shape != b.shape:
            raise ConversionError(f"{path}: hf_vit's {key} has shape {a.shape}, {name}'s {b.shape}.")
        worst = max(worst, float(np.abs(a - b).max()))
        scale = max(scale, float(np.abs(b).max()))
    if not worst <= ATOL + RTOL * scale:
        raise ConversionError(
            f"{path}: the converted model does not reproduce {name}: max abs difference {worst:.3g} "
            f"(outputs up to {scale:.3g}; tolerance {ATOL} + {RTOL} x that). Nothing was written."
        )
    return worst


# --------------------------------------------------------------------------------------------------------------------
# References


def flax_reference(path, prefix: str):
    """The reference Flax forward on the file's arrays: jax where installed, NumPy otherwise."""

    backend = "jax" if available("jax") else "numpy"
    params = reference.load_npz(path)

    def run(pixel_values):
        images = pixel_values.permute(0, 2, 3, 1).numpy()  # NCHW -> NHWC
        out = reference.forward(params, images, backend=backend, prefix=prefix)
        return {"logits": out["logits"], "pooled": out["pre_logits"], "encoded": out["encoded"]}

    return f"the reference Flax forward ({backend})", run


def timm_npz_reference(path, config, layout: dict):
    """timm's own .npz loader (`_load_weights`) into timm's ViT built like `config`."""
    from timm.models.vision_transformer import VisionTransformer, _load_weights


    args = timm_model_args(_without_pre_logits(config))
    if config.use_class_token and not layout.get("pos_has_prefix_row", True):
        args["no_embed_class"] = True
    if config.representation_size is not None:
        args["num_classes"] = 0  # timm has no pre-logits layer: compare up to the final LayerNorm
    model = VisionTransformer(**args).eval()
    _load_weights(model, path)

    @torch.no_grad()
    def run(pixel_values):
        encoded = model.forward_features(pixel_values)
        out = {"encoded": encoded.numpy()}
        if config.representation_size is None and config.num_labels > 0:
            out["logits"] = model.forward_head(encoded).numpy()
        return out

    return "timm's .npz loader", run


def timm_state_dict_reference(source, config, pos_has_prefix_row: bool = True):
    """timm's ViT built like `config`, loading the source tensors as they are (`strict=True`)."""
    import timm


    args = timm_model_args(config, for_export=False)
    if config.use_class_token and not pos_has_prefix_row:
        args["no_embed_class"] = True
    model = timm.create_model(timm_architecture(config), pretrained=False, **args).eval()
    model.load_state_dict({k: source.read(k) for k in source.keys()}, strict=True)

    @torch.no_grad()
    def run(pixel_values):
        encoded = model.forward_features(pixel_values)
        out = {"encoded": encoded.numpy()}
        if config.num_labels > 0:
            out["logits"] = model.forward_head(encoded).numpy()
        return out

    return "timm", run


def transformers_reference(path, has_classifier: bool, compare_tokens: bool = True):
    """transformers' own model of the folder's family loading the folder: its classifier (the folder's own class,
    e.g. `DeiTForImageClassificationWithTeacher`) when it has one, else its bare model (ViT-MAE with every patch
    kept, in order). `compare_tokens=False`: skip the tokens after the final LayerNorm (an hf_vit model that
    normalises after the pooling instead) and compare the last block's output."""
    import transformers

    config_dict, _ = transformers.PreTrainedConfig.get_config_dict(path)
    model_type = config_dict.get("model_type")
    architecture = (config_dict.get("architectures") or [""])[0]
    extra = {"mask_ratio": 0.0} if model_type == "vit_mae" else {}
    if has_classifier:
        classifier_class = getattr(transformers, architecture, None)
        if classifier_class is None or "ImageClassification" not in architecture:
            classifier_class = transformers.AutoModelForImageClassification
        model = classifier_class.from_pretrained(path, **extra).eval()
    elif model_type == "vit":
        model = transformers.ViTModel.from_pretrained(path).eval()
    else:
        model = transformers.AutoModel.from_pretrained(path, **extra).eval()

    @torch.no_grad()
    def run(pixel_values):
        kwargs = {}
        if model_type == "vit_mae":
            num_patches = model.config.image_size // model.config.patch_size
            kwargs["noise"] = torch.arange(num_patches**2, dtype=torch.float32).expand(pixel_values.shape[0], -1)
        if has_classifier:
            out = model(pixel_values, output_hidden_states=model_type != "vit", **kwargs)
            result = {"logits": out.logits.numpy()}
            if model_type != "vit":
                result["blocks"] = out.hidden_states[-1].numpy()
            return result
        out = model(pixel_values, output_hidden_states=True, **kwargs)
        result = {"blocks": out.hidden_states[-1].numpy()}
        if compare_tokens:
            result["encoded"] = out.last_hidden_state.numpy()
        if getattr(out, "pooler_output", None) is not None and model_type == "vit":
            result["pooled"] = out.pooler_output.numpy()
        return result

    return f"transformers' {type(model).__name__}", run


def _without_pre_logits(config):
    config = copy.deepcopy(config)
    config.representation_size = None
    return config


def run_checks(model, references, report, path) -> None:
    """Compare `model` with every reference; record the max differences in `report` (raises beyond tolerance)."""
    pixel_values = sample_images(model.config)
    ours = hf_vit_outputs(model, pixel_values)
    for name, run in references:
        report.max_abs_difference[name] = compare(ours, run(pixel_values), name, path)


__all__ = [
    "ATOL",
    "RTOL",
    "available",
    "compare",
    "hf_vit_outputs",
    "flax_reference",
    "run_checks",
    "sample_images",
    "timm_npz_reference",
    "timm_state_dict_reference",
    "transformers_reference",
]
