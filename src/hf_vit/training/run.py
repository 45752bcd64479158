"""The parts of a recipe run around the loop: build the model and processor, save the outputs, demo the result."""

import json
import os

from ..configuration_hf_vit import ViTConfig
from ..image_processing_hf_vit import ViTImageProcessor
from ..modeling_hf_vit import ViTForImageClassification


def build_model(model_args, label_names) -> ViTForImageClassification:
    """A fresh model from a variant (+ overrides), or a checkpoint with a new zero-initialised head for these labels."""
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    overrides = model_args.config_overrides()
    extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path:
        image_size = overrides.pop("image_size", None)
        model = ViTForImageClassification.from_pretrained(
            model_args.model_name_or_path, num_labels=len(label_names), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True, **overrides, **extra,
        )
        if image_size is not None and image_size != model.config.image_size:
            model.resize_position_embeddings(image_size)
        return model
    if not model_args.variant:
        raise ValueError("Give `variant` (e.g. 'Ti/16') or `model_name_or_path`.")
    config = ViTConfig.from_variant(
        model_args.variant, num_labels=len(label_names), id2label=id2label, label2id=label2id, **overrides, **extra
    )
    return ViTForImageClassification(config)


def build_processor(model_args, model) -> ViTImageProcessor:
    """The checkpoint's processor when it has one (resized to the model), else the paper's defaults at its size."""
    height, width = model.config.image_hw
    processor = None
    if model_args.model_name_or_path:
        try:
            processor = ViTImageProcessor.from_pretrained(model_args.model_name_or_path)
        except OSError:
            processor = None
    if processor is None:
        processor = ViTImageProcessor()
    processor.size = {"height": height, "width": width}
    return processor


def save_run(output_dir, model, processor, results: dict, *args_objects) -> None:
    """Model (safetensors + remote code), processor, resolved arguments and results: everything to reload and repeat."""
    from .arguments import save_resolved_args

    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    save_resolved_args(os.path.join(output_dir, "run_args.json"), *args_objects)
    with open(os.path.join(output_dir, "eval_results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)


def classify_with_pipeline(model_dir, images, top_k=1) -> list:
    """Reload the saved folder through `pipeline("image-classification")`, the way users will, and classify."""
    from transformers import pipeline

    classifier = pipeline("image-classification", model=model_dir, device="cpu")
    return classifier(list(images), top_k=top_k)
