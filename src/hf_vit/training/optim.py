"""Optimisers and learning-rate schedules of the paper's recipes (ViT paper, section 4.1, appendix B.1).

Pre-training: Adam (beta 0.9/0.999) with decoupled weight decay, linear warm-up then linear (or cosine) decay.
Fine-tuning: SGD with momentum 0.9, no weight decay, cosine decay, optionally layer-wise lr decay. Which parameters
take no weight decay and which depth each parameter sits at are declared by the model
(`no_weight_decay_parameter_names()`, `parameter_layer_ids()`); nothing here knows the model's names.
"""

import math

import torch


OPTIMIZERS = ("adamw", "sgd")
LR_DECAYS = ("linear", "cosine", "constant")


def _unwrap(model):
    # DDP / FSDP wrappers keep the model in `.module`; the declarative hints live on the model itself.
    return getattr(model, "module", model)


def parameter_groups(model, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """
    Optimiser parameter groups: weight decay except on what the model declares exempt (biases, norms, position
    embeddings, class token), and with `layer_decay < 1` an lr scale of `layer_decay ** (depth_max - depth)` per
    parameter (the head keeps the full lr, the patch embedding gets the smallest). Each group carries `lr_scale`.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"`layer_decay` must be in (0, 1] (1 = off), got {layer_decay}.")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
    inner = _unwrap(model)
    exempt = inner.no_weight_decay_parameter_names() if hasattr(inner, "no_weight_decay_parameter_names") else set()
    layer_ids = {}
    if layer_decay < 1.0:
        if not hasattr(inner, "parameter_layer_ids"):
            raise ValueError(
                f"`layer_decay` {layer_decay} needs a model that declares `parameter_layer_ids()`; "
                f"{type(inner).__name__} does not (use layer_decay 1.0)."
            )
        layer_ids = inner.parameter_layer_ids()
    max_depth = max(layer_ids.values(), default=0)

    groups: dict[tuple[bool, int], dict] = {}
    for name, param in inner.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = name in exempt or param.ndim <= 1
        depth = layer_ids.get(name, max_depth)
        key = (no_decay, depth)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (max_depth - depth),
                "names": [],
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model, args) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (pre-training) or SGD with momentum (fine-tuning), from `TrainArguments`."""
    groups = parameter_groups(model, args.weight_decay, getattr(args, "layer_decay", 1.0))
    for group in groups:
        group["lr"] = args.learning_rate * group["lr_scale"]
    if args.optimizer == "adamw":
        return _fused_if_possible(torch.optim.AdamW, groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))
    if args.optimizer == "sgd":
        return _fused_if_possible(torch.optim.SGD, groups, lr=args.learning_rate, momentum=args.momentum)
    raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {args.optimizer!r}.")


def _fused_if_possible(optimizer_class, groups, **kwargs):
    # The fused kernels update every parameter in one call. On CPU the default per-parameter loop launches ~10 small
    # ops per tensor, each paying the OpenMP barrier, which for small models costs a large share of the step
    # (bench/README.md, "Design measurements"). Same update rule; the rounding of the fused arithmetic differs.
    devices = {p.device.type for group in groups for p in group["params"]}
    if devices <= {"cpu", "cuda"}:
        try:
            return optimizer_class(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return optimizer_class(groups, **kwargs)


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, decay: str) -> float:
    """Linear warm-up from ~0 to 1 over `warmup_steps`, then `decay` to 0 at `total_steps`."""
    if decay not in LR_DECAYS:
        raise ValueError(f"`lr_decay` must be one of {list(LR_DECAYS)}, got {decay!r}.")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _Multiplier:
    """Picklable schedule function (LambdaLR stores it; a lambda would not survive `state_dict`)."""

    def __init__(self, total_steps: int, warmup_steps: int, decay: str):
        self.total_steps, self.warmup_steps, self.decay = total_steps, warmup_steps, decay

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.total_steps, self.warmup_steps, self.decay)


def build_schedule(optimizer, total_steps: int, warmup_steps: int, decay: str):
    """Per-step LambdaLR over every group's own initial lr (which already holds its layer-decay scale)."""
    lr_multiplier(0, total_steps, warmup_steps, decay)  # validates `decay` now, not at the first step
    if warmup_steps >= total_steps > 0:
        raise ValueError(f"`warmup_steps` ({warmup_steps}) must be smaller than the total steps ({total_steps}).")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Multiplier(total_steps, warmup_steps, decay))
