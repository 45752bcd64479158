"""Typed recipe arguments: dataclasses, filled from a YAML file in recipes/configs/ and then the command line.

The YAML values go through the same typed parser as the command line (a YAML `1e-3` is a string to YAML 1.1; here it
becomes the float the field declares), and unknown keys are an error naming the key and the file.
"""

import dataclasses
import difflib
import inspect
import os
import re
import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser

from ..configuration_hf_vit import ViTConfig
from ..hub.options import prefixed_options
from ..run_folder import write_json


# ---------------------------------------------------------------------------------------------------------------------
# What to train: the choice of starting point by hand, the architecture fields derived from ViTConfig


@dataclass
class _ModelChoice:
    """What to train: a named variant (optionally overridden field by field) or an existing checkpoint."""

    variant: str | None = field(default="Ti/16", metadata={"help": "Paper notation, e.g. 'B/16' or 'R50+B/16'. Ignored with model_name_or_path."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Start from this hf_vit / transformers-ViT folder or Hub id."})
    drop_pre_logits: bool = field(default=False, metadata={"help": "Remove a checkpoint's pre-logits layer (the paper's fine-tuning head: one zero-initialised linear layer)."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flex_attention | flash_attention_2"})

    def config_overrides(self) -> dict:
        """The architecture fields that were set (None means: keep the variant's or checkpoint's value)."""
        return {name: getattr(self, name) for name in ARCHITECTURE_FIELDS if getattr(self, name) is not None}


# `ViTConfig` fields a recipe does not take as architecture overrides: set by the recipe itself (the head's classes,
# the masked-patch target, MAE's objective from its own arguments, the processor's normalisation), or how weights
# are initialised rather than what is built.
_RECIPE_SET_CONFIG_FIELDS = frozenset({
    "mpp_target", "head_zero_init", "initializer_range", "mask_ratio", "norm_pix_loss", "image_mean", "image_std",
})
_DOC_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list[int]": list[int]}
_DOC_ENTRY = re.compile(r"^ {8}(\w+) \(`([^`]+)`[^\n]*:\n((?: {12}.*\n?)+)", re.MULTILINE)


def _architecture_fields() -> list[tuple]:
    """(name, type | None, field) for every `ViTConfig.__init__` argument, typed and explained by the config's own
    docstring, so that a new config field is a recipe option without being written down twice."""
    documented = {name: (kind, " ".join(text.split())) for name, kind, text in _DOC_ENTRY.findall(ViTConfig.__doc__)}
    fields = []
    for name, parameter in inspect.signature(ViTConfig.__init__).parameters.items():
        if name == "self" or parameter.kind is parameter.VAR_KEYWORD or name in _RECIPE_SET_CONFIG_FIELDS:
            continue
        if name not in documented or documented[name][0] not in _DOC_TYPES:
            raise TypeError(
                f"ViTConfig's docstring must document `{name}` as `name (`type`, ...)` with a type in "
                f"{list(_DOC_TYPES)}: the recipes' ModelArguments are derived from it."
            )
        kind, text = documented[name]
        summary = text.split(". ")[0].rstrip(".") + "."
        fields.append((name, _DOC_TYPES[kind] | None, field(default=None, metadata={"help": f"{summary} Default: the variant's or checkpoint's."})))
    return fields


ModelArguments = dataclasses.make_dataclass("ModelArguments", _architecture_fields(), bases=(_ModelChoice,))
ModelArguments.__module__ = __name__
ModelArguments.__doc__ = (
    "What to train: a named variant or a checkpoint, and any `ViTConfig` architecture field to override (`image_size` "
    "on a checkpoint resamples its position embeddings, the paper's fine-tuning at a higher resolution)."
)
ARCHITECTURE_FIELDS = tuple(name for name, _, _ in _architecture_fields())


@dataclass
class TrainArguments(prefixed_options("hub_", "With push_to_hub: ")):
    """How to train: optimiser, schedule, regularisation and the bookkeeping of the shared loop; `push_to_hub` and the
    `hub_*` publishing options (`hf_vit.hub.PublishOptions`, prefixed) publish the run folder at the end."""

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
    mixed_precision: str | None = field(default=None, metadata={"help": "no | bf16 | fp16 | auto (bf16 where the device has bf16 instructions, else no); unset: whatever the launcher or accelerate config says (`accelerate launch --mixed_precision bf16`, ACCELERATE_MIXED_PRECISION), else no."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute each block's activations in the backward pass instead of storing them (less memory, more compute)."})
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile (Accelerate's dynamo plugin, inductor backend). false: the launcher decides (`accelerate launch --dynamo_backend ...`, ACCELERATE_DYNAMO_BACKEND), by default no compilation."})
    ema_decay: float = field(default=0.0, metadata={"help": "Polyak / EMA factor, e.g. 0.9999 (0: off); saved to the run's ema/."})
    ema_warmup: bool = field(default=True, metadata={"help": "Warm the EMA factor up as min(decay, (1+t)/(10+t))."})
    test_time_augmentation: str = field(default="none", metadata={"help": "none (one view, as the paper) | flip (each evaluation image's and its mirror image's class probabilities averaged)."})
    eval_every_steps: int = field(default=0, metadata={"help": "Evaluate on the validation split every N steps (0: each epoch, -1: only at the end)."})
    fewshot_every_steps: int = field(default=-1, metadata={"help": "Few-shot linear evaluation every N steps (0: with each evaluation, -1: off)."})
    fewshot_shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25], metadata={"help": "Shots per class for few-shot evaluation."})
    log_every_steps: int = 10
    save_every_steps: int = field(default=0, metadata={"help": "Save a resumable checkpoint every N steps (0: only at the end)."})
    save_every_epochs: int = field(default=0, metadata={"help": "Save a resumable checkpoint at the end of every N epochs (0: off; with save_every_steps, both)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints of this run kept (the newest k, plus the best one; 0 keeps all). Checkpoints of other runs are never removed."})
    keep_best_metric: str = field(default="", metadata={"help": "A validation metric, e.g. 'accuracy' or 'loss' (also 'ema_accuracy', 'fewshot/5shot_accuracy'): after each evaluation that improves it, a checkpoint is saved and kept beside the newest ones ('': off)."})
    keep_best_mode: str = field(default="auto", metadata={"help": "max | min | auto (min for names containing 'loss', else max)."})
    resume: str = field(default="", metadata={"help": "'latest' (newest checkpoint of output_dir, or start fresh), a checkpoint folder, or '' (start fresh)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start a fresh run in an output_dir that holds an earlier run: its checkpoints are moved aside (not deleted), its results replaced. Without it such a run is refused."})
    report_to: str = field(default="tensorboard", metadata={"help": "Trackers Accelerate supports, comma-separated, or 'none'."})
    predict_examples: int = field(default=5, metadata={"help": "Held-out images classified through pipeline() at the end."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repository 'namespace/name' to publish the run folder to after training (docs/hub.md; checked before training). Off by default."})


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
    "save_every_epochs", "keep_best_metric", "keep_best_mode", "overwrite_output_dir", "gradient_checkpointing",
    "torch_compile", "pin_memory", "cache_decoded_images",
    "predict_examples", "eval_batch_size", "attn_implementation",
    "push_to_hub", *(f.name for f in dataclasses.fields(prefixed_options("hub_"))),
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
    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)  # `--learning_rat` is a mistake, not learning_rate
    known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls)}
    yaml_argv = []
    if argv and argv[0].endswith((".yaml", ".yml")):
        path = argv.pop(0)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Recipe config {path!r} does not exist.")
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}.")
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: {_unknown_arguments(unknown, known)}")
        yaml_argv, nulls = _yaml_to_argv(values, parser)
        parser.set_defaults(**nulls)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=yaml_argv + argv, return_remaining_strings=True)
    if remaining:
        options = [token for token in remaining if token.startswith("-")] or remaining
        raise ValueError(_unknown_arguments([o.lstrip("-").replace("-", "_") for o in options], known,
                                            shown=options))
    return tuple(parsed)


def _unknown_arguments(names, known, shown=None) -> str:
    """'unknown argument(s) [...] (did you mean ...?)' for names that are no field of the recipe's arguments."""
    hints = [match for name in names for match in difflib.get_close_matches(name, known, n=1)]
    hint = f" (did you mean {', '.join(repr(h) for h in dict.fromkeys(hints))}?)" if hints else ""
    return (f"unknown argument(s) {list(shown or names)}{hint}; the recipe's --help lists every argument "
            f"({len(known)} in all).")


def resolved_args_dict(*args_objects) -> dict:
    resolved = {}
    for obj in args_objects:
        resolved.update(dataclasses.asdict(obj))
    return resolved


def save_resolved_args(path, *args_objects) -> None:
    """Write every argument of the run (after YAML and command line) so it can be repeated exactly."""
    write_json(path, resolved_args_dict(*args_objects))


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
