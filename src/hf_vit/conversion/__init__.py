"""Other checkpoint formats -> hf_vit and back: the original JAX `.npz` files (vit_jax and big_vision layouts), timm
state dicts and transformers checkpoints of the ViT family ("vit", and the self-supervised and distilled "vit_mae",
"deit", "dinov2", "dinov2_with_registers"; timm's variants of them too) (ViT paper, section 3.1 for the model, 3.2 for
the resolution change).

    from hf_vit.conversion import load_npz
    model = load_npz("imagenet21k+imagenet2012_ViT-B_16-224.npz")           # the original model, its logits
    model = load_npz("ViT-B_16.npz", image_size=384, num_labels=10)         # fine-tuning start: resampled, new head

Each source format has its own module with an explicit key map (`vit_jax`, `big_vision`, `timm_format`,
`transformers_format`); `loading` holds the steps they share, `checks` the numerical comparison with the source
framework, `writing` the complete hf_vit folder (`hf-vit convert`).
"""

from __future__ import annotations

from . import big_vision, timm_format, vit_jax
from .checks import available, flax_reference, run_checks, timm_npz_reference, timm_state_dict_reference
from .keymap import ConversionError, ConversionReport
from .loading import convert
from .sources import NpzSource, PrefixedView, StateDictSource
from .timm_format import save_timm, state_dict_to_timm
from .transformers_format import load_transformers, save_transformers_vit


def load_npz(
    path,
    config=None,
    *,
    source_image_size=None,
    keep_pre_logits: bool = False,
    strict: bool = True,
    check: bool = False,
    output_loading_info: bool = False,
    **config_overrides,
):
    """
    Load an original JAX checkpoint (`.npz`, vit_jax or big_vision layout) as an hf_vit `ViTForImageClassification`.

    The config is read from the file's shapes (width, depth, heads, MLP size, patch size, resolution, class token or
    GAP, pre-logits, classes; the reference's tanh GELU and eps 1e-6), so the result reproduces the original model.

    Args:
        path: the `.npz` file.
        config (`ViTConfig`, *optional*): use this config instead of the inferred one; its shapes must fit the file
            (else a `ConversionError` names the tensors), its `image_size` and label set may differ.
        source_image_size (*optional*): the resolution the file was trained at, needed only for non-square grids.
        keep_pre_logits: with a new label set, keep the tanh pre-logits layer (default: dropped, as in the paper's
            fine-tuning).
        strict: raise when the file holds arrays no rule uses (default); `False` lists them in the report.
        check: compare with the reference Flax forward (jax if installed, else NumPy) and timm's loader (if installed)
            before returning; the max differences land in the report.
        output_loading_info: return `(model, ConversionReport)`.
        **config_overrides: config fields on top of the inferred ones, e.g. `image_size=384` (position embeddings are
            resampled: the reference's bilinear with corners aligned, or `position_embedding_interpolation="bicubic"`
            / `position_embedding_align_corners=False` for timm's), `num_labels=10` or `id2label={...}` (a new
            zero-initialised head), `attn_implementation="eager"`.
    """
    source = NpzSource(path)
    try:
        prefix = vit_jax.find_prefix(source)
        if prefix is not None:
            view = PrefixedView(source, prefix)
            info = vit_jax.infer(view, prefix)
            report = ConversionReport(str(path), "npz", f"vit_jax layout, {info['numbering']} key numbering")

            def rules_for(c):
                return vit_jax.key_map(c, prefix, info["numbering"])
        else:
            prefix = big_vision.find_prefix(source)
            if prefix is None:
                raise ConversionError(
                    f"{path} is an .npz archive but not a ViT checkpoint: no 'embedding/kernel' (under '', 'params/', "
                    f"'opt/target/' or 'params/img/'). It holds e.g. {sorted(source.keys())[:6]}."
                )
            view = PrefixedView(source, prefix)
            info = big_vision.infer(view, prefix)
            scanned = ", scanned encoder" if info["scanned"] else ""
            report = ConversionReport(str(path), "npz", f"big_vision layout{scanned}")

            def rules_for(c):
                return big_vision.key_map(c, prefix, info)

        ignored = view.ignored_keys()
        if ignored:
            report.notes.append(f"ignored {len(ignored)} arrays outside '{prefix}' (e.g. {ignored[0]})")

        def check_model(model):
            references = [flax_reference(path, prefix)]
            # timm's hybrids have their own GroupNorm and weight-standardisation eps: not the reference model.
            if available("timm") and not model.config.is_hybrid:
                try:
                    references.append(timm_npz_reference(str(path), model.config, info))
                except Exception as error:  # timm's loader has its own limits; the reference forward still runs
                    reason = f"{type(error).__name__}: {error}"
                    report.notes.append(f"timm's .npz loader cannot load this file ({reason}); not compared")
            run_checks(model, references, report, str(path))

        model, report = convert(
            view, info, rules_for, report, config, config_overrides, source_image_size=source_image_size,
            keep_pre_logits=keep_pre_logits, strict=strict, check=check_model if check else None,
        )
    finally:
        source.close()
    return (model, report) if output_loading_info else model


def load_timm(
    path_or_state_dict,
    config=None,
    *,
    num_attention_heads: int | None = None,
    allow_pickle: bool = False,
    source_image_size=None,
    strict: bool = True,
    check: bool = False,
    output_loading_info: bool = False,
    **config_overrides,
):
    """
    Load a timm `VisionTransformer` state dict (a dict, a safetensors file, a timm folder with `config.json`, or a
    `.pth`/`.bin` pickle with `allow_pickle=True`) as an hf_vit `ViTForImageClassification`: exact GELU, eps 1e-6,
    as timm. The ViT variants of the MAE (`fc_norm`), DeiT (distilled, DeiT III) and DINOv2 (LayerScale, registers,
    ViT-g's SwiGLU) families are read too (see `timm_format`). `num_attention_heads` is needed only when neither the folder's config nor the paper's variant table
    gives it (timm fuses q, k, v). Other arguments as in `load_npz`; `check` compares with timm (if installed).
    """
    source = StateDictSource(path_or_state_dict, allow_pickle=allow_pickle)
    info = timm_format.infer(source, num_attention_heads)
    report = ConversionReport(str(source.path), "timm", "timm VisionTransformer state dict")

    def check_model(model):
        if available("timm"):
            reference = timm_state_dict_reference(source, model.config, info["pos_has_prefix_row"])
            run_checks(model, [reference], report, str(source.path))
        else:
            report.notes.append("timm is not installed: numerics not checked against timm")

    model, report = convert(
        source, info, lambda c: timm_format.key_map(c, info["pos_has_prefix_row"]), report, config, config_overrides,
        source_image_size=source_image_size, strict=strict, check=check_model if check else None,
    )
    return (model, report) if output_loading_info else model


FORMATS = ("npz", "timm", "transformers")

__all__ = [
    "FORMATS",
    "ConversionError",
    "ConversionReport",
    "load_npz",
    "load_timm",
    "load_transformers",
    "save_timm",
    "save_transformers_vit",
    "state_dict_to_timm",
]
