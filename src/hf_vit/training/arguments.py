"""Typed recipe arguments: dataclasses, filled from a YAML file in recipes/configs/ and then the command line."""

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser


@dataclass
class ModelArguments:
    """What to train: a named variant (optionally overridden field by field) or an existing checkpoint."""

    variant: str | None = field(default="Ti/16", metadata={"help": "Paper notation, e.g. 'B/16'. Ignored with model_name_or_path."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Start from this hf_vit / transformers-ViT folder or repo."})
    image_size: int | None = field(default=None, metadata={"help": "Training resolution (default: the variant's or checkpoint's)."})
    patch_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    representation_size: int | None = field(default=None, metadata={"help": "Width of the tanh pre-logits layer (the paper's pre-training head)."})
    pooling: str | None = None
    hidden_dropout_prob: float | None = None
    attention_probs_dropout_prob: float | None = None
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flex_attention | flash_attention_2"})

    def config_overrides(self) -> dict:
        """The architecture fields that were set (None means: keep the variant's or checkpoint's value)."""
        names = (
            "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "representation_size", "pooling", "hidden_dropout_prob", "attention_probs_dropout_prob",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class DataArguments:
    """Where the images come from and how they are split and augmented."""

    dataset: str = field(default="digits", metadata={"help": "'digits' (scikit-learn, embedded)."})
    test_fraction: float = field(default=0.2, metadata={"help": "Held-out share when the data set has no test split."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of the training split used for periodic evaluation."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the fixed train/validation/test split."})
    augmentation: str = field(default="auto", metadata={"help": "auto | none | translate | inception_crop_flip"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})


@dataclass
class TrainArguments:
    """How to train: the optimiser, schedule and bookkeeping of the shared loop."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Model, processor, resolved arguments and results go here."})
    seed: int = 0
    num_epochs: float = field(default=10.0, metadata={"help": "Training length in epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=0, metadata={"help": "Training length in optimiser steps (0: use num_epochs)."})
    batch_size: int = field(default=64, metadata={"help": "Global batch size (all processes, after accumulation)."})
    max_device_batch_size: int = field(default=512, metadata={"help": "Largest batch one process runs at once; the rest is gradient accumulation."})
    optimizer: str = field(default="adamw", metadata={"help": "adamw (Adam with decoupled weight decay) | sgd (momentum)"})
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    momentum: float = 0.9
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps (warmup_ratio is used when 0)."})
    warmup_ratio: float = 0.1
    lr_decay: str = field(default="linear", metadata={"help": "linear | cosine | constant (after the warm-up)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip gradients at this global norm (0: off)."})
    label_smoothing: float = 0.0
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16"})
    eval_every_steps: int = field(default=0, metadata={"help": "Evaluate on the validation split every N steps (0: each epoch)."})
    log_every_steps: int = 10
    report_to: str = field(default="tensorboard", metadata={"help": "Trackers Accelerate supports, comma-separated, or 'none'."})
    predict_examples: int = field(default=5, metadata={"help": "Held-out images classified through pipeline() at the end."})


def parse_recipe_args(dataclass_types, argv=None):
    """
    Parse `[config.yaml] [--field value ...]` into the given dataclasses: the YAML file sets defaults, the command line
    overrides them. Unknown YAML keys are an error naming the key and the file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    if argv and argv[0].endswith((".yaml", ".yml")):
        path = argv.pop(0)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Recipe config {path!r} does not exist.")
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}.")
        known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown argument(s) {unknown}; allowed are {sorted(known)}.")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def save_resolved_args(path, *args_objects) -> None:
    """Write every argument of the run (after YAML and command line) so it can be repeated exactly."""
    resolved = {}
    for obj in args_objects:
        resolved.update(dataclasses.asdict(obj))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(resolved, f, indent=2, sort_keys=True)
