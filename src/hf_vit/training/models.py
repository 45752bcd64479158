"""The model and processor a recipe starts from: a fresh variant, or a checkpoint continued or given a new head (ViT
paper, section 3.2: fine-tuning replaces the head and may raise the resolution, resampling the position embeddings).
"""

from ..configuration_hf_vit import ViTConfig
from ..image_processing_hf_vit import ViTImageProcessor


def build_model(model_args, model_class, config_fields: dict | None = None, new_head: bool = False):
    """
    A `model_class` model (`ViTForImageClassification`, `ViTForMaskedPatchPrediction`, ...):

    - from `model_args.model_name_or_path` (hf_vit, transformers' ViT or a converted checkpoint): the saved weights,
      with the recipe's `config_fields` and the architecture overrides applied; with `new_head`, a new
      zero-initialised head for `config_fields`' labels (and the pre-logits layer dropped on `drop_pre_logits`);
      a different `image_size` resamples the position embeddings on the patch grid;
    - else a fresh `ViTConfig.from_variant(model_args.variant, ...)`.
    """
    config_fields = dict(config_fields or {})
    overrides = model_args.config_overrides()
    if model_args.attn_implementation:
        config_fields["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path:
        image_size = overrides.pop("image_size", None)
        if model_args.drop_pre_logits:
            overrides["representation_size"] = None
        if new_head:
            config_fields.update(ignore_mismatched_sizes=True, head_zero_init=True)
        model = model_class.from_pretrained(model_args.model_name_or_path, **config_fields, **overrides)
        if image_size is not None and tuple(model.config.image_hw) != (image_size, image_size):
            model.resize_position_embeddings(image_size)
        return model
    if not model_args.variant:
        raise ValueError("Give `variant` (e.g. 'Ti/16') or `model_name_or_path`.")
    return model_class(ViTConfig.from_variant(model_args.variant, **config_fields, **overrides))


def label_fields(label_names) -> dict:
    """The config fields of a classification head for these class names (in label order)."""
    id2label = dict(enumerate(label_names))
    return {"num_labels": len(id2label), "id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}


def build_processor(model_args, model) -> ViTImageProcessor:
    """The checkpoint's processor when it has one (resized to the model), else the paper's defaults at its size."""
    height, width = model.config.image_hw
    processor = None
    if model_args.model_name_or_path:
        try:
            processor = ViTImageProcessor.from_pretrained(model_args.model_name_or_path)
        except (OSError, ValueError):
            processor = None
    if processor is None:
        processor = ViTImageProcessor()
    processor.size = {"height": height, "width": width}
    return processor


__all__ = ["build_model", "build_processor", "label_fields"]
