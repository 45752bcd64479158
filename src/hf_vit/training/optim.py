"""Optimisers and learning-rate schedules of the paper's recipes (ViT paper, sections 4.1, appendix B.1)."""

import math

import torch


OPTIMIZERS = ("adamw", "sgd")
LR_DECAYS = ("linear", "cosine", "constant")


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and what the model declares exempt (biases, norms, position embeddings, cls)."""
    exempt = model.no_weight_decay_parameter_names() if hasattr(model, "no_weight_decay_parameter_names") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in exempt or param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, args) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (pre-training) or SGD with momentum (fine-tuning)."""
    if args.optimizer == "adamw":
        return torch.optim.AdamW(
            parameter_groups(model, args.weight_decay),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
        )
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            parameter_groups(model, args.weight_decay), lr=args.learning_rate, momentum=args.momentum
        )
    raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {args.optimizer!r}.")


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


def build_schedule(optimizer, total_steps: int, warmup_steps: int, decay: str):
    lr_multiplier(0, total_steps, warmup_steps, decay)  # validates `decay` now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, decay)
    )
