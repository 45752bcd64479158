"""Typed recipe arguments: dataclasses, filled from a YAML file in recipes/configs/ and then the command line.

The YAML values go through the same typed parser as the command line (a YAML `1e-3` is a string to YAML 1.1; here it
becomes the float the field declares), and unknown keys are an error naming the key and the file.
"""

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
    model_name_or_path: str | None = field(default=None, metadata={"help": "Start from this hf_vit / transformers-ViT folder or Hub id."})
    image_size: int | None = field(default=None, metadata={"help": "Training resolution (default: the variant's or checkpoint's); a checkpoint's position embeddings are resampled."})
    patch_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    hidden_act: str | None = field(default=None, metadata={"help": "MLP activation: gelu_pytorch_tanh (the reference's) | gelu (exact; faster on CPU) | ..."})
    representation_size: int | None = field(default=None, metadata={"help": "Width of the tanh pre-logits layer (the paper's pre-training head)."})
    drop_pre_logits: bool = field(default=False, metadata={"help": "Remove a checkpoint's pre-logits layer (the paper's fine-tuning head: one zero-initialised linear layer)."})
    pooling: str | None = field(default=None, metadata={"help": "cls | gap | ... (the model's pooling choices)"})
    hidden_dropout_prob: float | None = None
    attention_probs_dropout_prob: float | None = None
    position_embedding_type: str | None = field(default=None, metadata={"help": "learned_1d | learned_2d | sincos_2d | relative | none"})
    drop_path_rate: float | None = field(default=None, metadata={"help": "Stochastic depth at the last block (0 = the paper)."})
    backbone_depths: list[int] | None = field(default=None, metadata={"help": "Hybrid: ResNet stage depths after the stem ([] = stem only); unset = plain ViT."})
    backbone_width_factor: float | None = field(default=None, metadata={"help": "Hybrid: ResNet width multiplier (stem = 64 x factor channels)."})
    backbone_num_groups: int | None = field(default=None, metadata={"help": "Hybrid: GroupNorm groups of the ResNet."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flex_attention | flash_attention_2"})

    _ARCHITECTURE_FIELDS = (
        "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "hidden_act", "representation_size", "pooling", "hidden_dropout_prob", "attention_probs_dropout_prob",
        "position_embedding_type", "drop_path_rate", "backbone_depths", "backbone_width_factor", "backbone_num_groups",
    )

    def config_overrides(self) -> dict:
        """The architecture fields that were set (None means: keep the variant's or checkpoint's value)."""
        return {name: getattr(self, name) for name in self._ARCHITECTURE_FIELDS if getattr(self, name) is not None}


@dataclass
class DataArguments:
    """Where the images come from, how they are split, checked and augmented."""

    dataset: str = field(default="digits", metadata={"help": "'digits' (scikit-learn, embedded), a folder of IDX files or of class sub-folders (imagefolder), or a Hub dataset id."})
    dataset_format: str = field(default="auto", metadata={"help": "auto | digits | idx | imagefolder | hub"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = "train"
    validation_split: str = field(default="auto", metadata={"help": "A split name, 'auto' (validation if present, else carved from train) or 'none'."})
    test_split: str = field(default="auto", metadata={"help": "A split name, 'auto' (test, else validation, else carved from train) or 'none'."})
    image_column: str = field(default="auto", metadata={"help": "Column holding the images ('auto': the Image-typed one)."})
    label_column: str = field(default="auto", metadata={"help": "Column holding the labels ('auto': the ClassLabel-typed one)."})
    label_names: list[str] | None = field(default=None, metadata={"help": "Class names in label order (IDX files carry none)."})
    streaming: bool = field(default=False, metadata={"help": "Stream a Hub data set or image folder instead of loading it (for data larger than the disk)."})
    streaming_holdout_size: int = field(default=1000, metadata={"help": "Streaming without a test/validation split: rows taken off the stream's start for each."})
    shuffle_buffer_size: int = field(default=10000, metadata={"help": "Streaming: shuffle buffer (rows)."})
    test_fraction: float = field(default=0.2, metadata={"help": "Held-out share when the data set has no test split."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of the training split used for periodic evaluation (0: none)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the fixed train/validation/test split."})
    on_bad_image: str = field(default="skip", metadata={"help": "Unreadable images found before training: skip (count + first paths printed) | fail (stop with the full list)."})
    max_train_examples: int = field(default=0, metadata={"help": "Use only the first N training rows (0: all)."})
    max_eval_examples: int = field(default=0, metadata={"help": "Use only the first N validation / test rows (0: all)."})
    augmentation: str = field(default="auto", metadata={"help": "auto | none | flip | translate | crop | crop_flip | inception_crop_flip"})
    augment_max_shift: float = field(default=0.125, metadata={"help": "translate / crop: largest shift, as a fraction of the image size."})
    randaugment_num_ops: int = field(default=0, metadata={"help": "RandAugment-style operations per image (0: off)."})
    randaugment_magnitude: float = field(default=9.0, metadata={"help": "RandAugment magnitude, 0..10."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup Beta(alpha, alpha) (0: off)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "Cutmix Beta(alpha, alpha) (0: off)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes (decoding and augmentation run there)."})
    cache_decoded_images: bool = field(default=False, metadata={"help": "Decode the training images once, before training, and keep them in memory (about height x width x channels bytes each) instead of decoding them in every epoch. Map-style data only, not streaming."})


@dataclass
class TrainArguments:
    """How to train: optimiser, schedule, regularisation and the bookkeeping of the shared loop."""

    output_dir: str = field(default="outputs/run", metadata={"help": "The run folder (see docs/training.md)."})
    seed: int = 0
    num_epochs: float = field(default=10.0, metadata={"help": "Training length in epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=0, metadata={"help": "Training length in optimiser steps (0: use num_epochs; required when streaming)."})
    batch_size: int = field(default=64, metadata={"help": "Global batch size (all processes, after accumulation)."})
    max_device_batch_size: int = field(default=512, metadata={"help": "Largest batch one process runs at once; the rest is gradient accumulation."})
    eval_batch_size: int = 256
    optimizer: str = field(default="adamw", metadata={"help": "adamw (Adam with decoupled weight decay) | sgd (momentum)"})
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    momentum: float = 0.9
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps (warmup_ratio is used when 0)."})
    warmup_ratio: float = 0.1
    lr_decay: str = field(default="linear", metadata={"help": "linear | cosine | constant (after the warm-up)"})
    layer_decay: float = field(default=1.0, metadata={"help": "Layer-wise lr decay factor per block below the head (1: off)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip gradients at this global norm (0: off)."})
    label_smoothing: float = 0.0
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16 | fp16"})
    ema_decay: float = field(default=0.0, metadata={"help": "Polyak / EMA factor, e.g. 0.9999 (0: off); saved to the run's ema/."})
    ema_warmup: bool = field(default=True, metadata={"help": "Warm the EMA factor up as min(decay, (1+t)/(10+t))."})
    test_time_augmentation: str = field(default="none", metadata={"help": "none (one view, as the paper) | flip (each evaluation image's and its mirror image's class probabilities averaged)."})
    eval_every_steps: int = field(default=0, metadata={"help": "Evaluate on the validation split every N steps (0: each epoch, -1: only at the end)."})
    fewshot_every_steps: int = field(default=-1, metadata={"help": "Few-shot linear evaluation every N steps (0: with each evaluation, -1: off)."})
    fewshot_shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25], metadata={"help": "Shots per class for few-shot evaluation."})
    log_every_steps: int = 10
    save_every_steps: int = field(default=0, metadata={"help": "Save a resumable checkpoint every N steps (0: only at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (the newest k; 0 keeps all)."})
    resume: str = field(default="", metadata={"help": "'latest' (newest checkpoint of output_dir, or start fresh), a checkpoint folder, or '' (start fresh)."})
    report_to: str = field(default="tensorboard", metadata={"help": "Trackers Accelerate supports, comma-separated, or 'none'."})
    predict_examples: int = field(default=5, metadata={"help": "Held-out images classified through pipeline() at the end."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repository 'namespace/name' to publish the run folder to after training (docs/hub.md; checked before training). Off by default."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository private."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created from main if missing)."})
    hub_create_pr: bool = field(default=False, metadata={"help": "Open a pull request against main instead of committing."})
    hub_commit_message: str | None = field(default=None, metadata={"help": "Commit title (default: names the model and its test accuracy)."})
    hub_card_data: str | None = field(default=None, metadata={"help": "Model card data YAML (default: model_cards/<dataset>.yaml when it exists)."})


@dataclass
class FinetuneModelArguments(ModelArguments):
    """Fine-tuning starts from a checkpoint and, as in the paper, replaces the head by one zero-initialised layer."""

    variant: str | None = None
    drop_pre_logits: bool = True


@dataclass
class FinetuneTrainArguments(TrainArguments):
    """The paper's fine-tuning (appendix B.1.1): SGD momentum 0.9, no weight decay, cosine decay, clip at norm 1."""

    optimizer: str = "sgd"
    learning_rate: float = 0.01
    weight_decay: float = 0.0
    lr_decay: str = "cosine"
    warmup_ratio: float = 0.05


# Arguments that do not change what is computed: they may differ between a run and its resumption.
BOOKKEEPING_FIELDS = frozenset({
    "output_dir", "resume", "report_to", "log_every_steps", "save_every_steps", "save_total_limit", "num_workers",
    "cache_decoded_images",
    "predict_examples", "eval_batch_size", "attn_implementation",
    "push_to_hub", "hub_private_repo", "hub_revision", "hub_create_pr", "hub_commit_message",
    "hub_card_data",
})


def _yaml_to_argv(values: dict, parser) -> tuple[list[str], dict]:
    """YAML mapping -> (command-line tokens for the typed parser, None-valued keys to set directly)."""
    argv, nulls = [], {}
    for key, value in values.items():
        if value is None:
            nulls[key] = None
        elif isinstance(value, bool):
            argv += [f"--{key}", "true" if value else "false"]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *[str(v) for v in value]] if value else []
            if not value:
                nulls[key] = []
        else:
            argv += [f"--{key}", str(value)]
    return argv, nulls


def parse_recipe_args(dataclass_types, argv=None):
    """
    Parse `[config.yaml] [--field value ...]` into the given dataclasses: the YAML file comes first, the command line
    overrides it. Unknown YAML keys are an error naming the key and the file; values are converted and checked by the
    field types, like command-line values.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    yaml_argv = []
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
        yaml_argv, nulls = _yaml_to_argv(values, parser)
        parser.set_defaults(**nulls)
    return parser.parse_args_into_dataclasses(args=yaml_argv + argv)


def resolved_args_dict(*args_objects) -> dict:
    resolved = {}
    for obj in args_objects:
        resolved.update(dataclasses.asdict(obj))
    return resolved


def save_resolved_args(path, *args_objects) -> None:
    """Write every argument of the run (after YAML and command line) so it can be repeated exactly."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(resolved_args_dict(*args_objects), f, indent=2, sort_keys=True)


def check_resume_compatible(saved: dict, current: dict, checkpoint: str) -> None:
    """A resumed run must compute the same thing: every non-bookkeeping argument equal to the checkpoint's."""
    differing = sorted(
        key for key in set(saved) | set(current)
        if key not in BOOKKEEPING_FIELDS and saved.get(key) != current.get(key)
    )
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
        raise ValueError(
            f"Cannot resume from {checkpoint}: these arguments differ from the run that wrote it ({details}). "
            "Resume with the same arguments, or start a new run in another output_dir."
        )
