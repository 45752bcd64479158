"""The parts of a recipe run around the loop: build the model and processor, write the run folder, demo the result.

The run folder (`TrainArguments.output_dir`; documented in docs/training.md, read by Hub publishing):

    <output_dir>/
      config.json, model.safetensors, *.py        the trained model (loads with from_pretrained / remote code)
      preprocessor_config.json                    its image processor
      ema/                                        the EMA (Polyak) weights as their own model folder, when enabled
      run_args.json                               every resolved argument of the run
      eval_results.json                           final metrics (test, validation, few-shot, EMA), timings
      checkpoints/step-XXXXXXXX/                  resumable training state (the last k), written by the loop
      logs/                                       tracker output (TensorBoard event files)

`save_run` is the only function that writes the model files, `ema/`, `run_args.json` and `eval_results.json`.
"""

import json
import os
import platform

from ..configuration_hf_vit import ViTConfig
from ..image_processing_hf_vit import ViTImageProcessor
from ..modeling_hf_vit import ViTForImageClassification


EMA_SUBFOLDER = "ema"
RUN_ARGS_NAME = "run_args.json"
EVAL_RESULTS_NAME = "eval_results.json"
LOGS_SUBFOLDER = "logs"


def build_model(model_args, label_names) -> ViTForImageClassification:
    """
    A fresh model from a variant (+ overrides), or a checkpoint (hf_vit, transformers' ViT or converted) with a new
    zero-initialised head for these labels, its pre-logits layer dropped on request, and its position embeddings
    resampled when `image_size` differs (the paper's fine-tuning at higher resolution, section 3.2).
    """
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    overrides = model_args.config_overrides()
    extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path:
        image_size = overrides.pop("image_size", None)
        if model_args.drop_pre_logits:
            overrides["representation_size"] = None
        model = ViTForImageClassification.from_pretrained(
            model_args.model_name_or_path, num_labels=len(label_names), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True, head_zero_init=True, **overrides, **extra,
        )
        if image_size is not None and tuple(model.config.image_hw) != (image_size, image_size):
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
        except (OSError, ValueError):
            processor = None
    if processor is None:
        processor = ViTImageProcessor()
    processor.size = {"height": height, "width": width}
    return processor


def describe_hardware(accelerator) -> str:
    """One line for the run's results and its model card: processes, device, CPU threads, torch version."""
    import torch

    processes = accelerator.num_processes
    device = accelerator.device
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} GPU"
    else:
        cpu = cpu_model()
        threads = torch.get_num_threads()
        where = (f"CPU ({cpu}), {os.cpu_count()} cores visible, {threads} torch thread{'s' if threads > 1 else ''} "
                 "per process")
    return (f"{processes} process{'es' if processes > 1 else ''} on {where}; torch {torch.__version__}, "
            f"mixed precision {accelerator.mixed_precision}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows (bench/ reports it too)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save_run(output_dir, model, processor, results: dict, *args_objects, ema_model=None) -> None:
    """
    Write the run folder's model files, processor, `ema/` (when an EMA model is given), `run_args.json` and
    `eval_results.json`: everything to reload, publish and repeat the run (layout in the module docstring).
    """
    from .arguments import save_resolved_args

    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    if ema_model is not None:
        ema_dir = os.path.join(output_dir, EMA_SUBFOLDER)
        ema_model.save_pretrained(ema_dir)
        processor.save_pretrained(ema_dir)
    save_resolved_args(os.path.join(output_dir, RUN_ARGS_NAME), *args_objects)
    with open(os.path.join(output_dir, EVAL_RESULTS_NAME), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)


def classify_with_pipeline(model_dir, images, top_k=1) -> list:
    """Reload the saved folder through `pipeline("image-classification")`, the way users will, and classify."""
    from transformers import pipeline

    classifier = pipeline("image-classification", model=model_dir, device="cpu")
    return classifier(list(images), top_k=top_k)
