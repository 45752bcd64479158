"""Polyak / exponential moving average of the weights (ViT paper, appendix B.1.1: factor 0.9999 for Table 2).

The average is a full copy of the model, so it saves and loads like any hf_vit model (`save_run` writes it to the
run folder's `ema/`). NOTE: the reference code averages with a fixed 0.9999 from the first step; a run of a few
thousand steps would then still be mostly the random initialisation. The decay warms up as in TensorFlow's
`ExponentialMovingAverage(num_updates=...)`: decay_t = min(decay, (1 + t) / (10 + t)), so short runs get a useful
average and long runs the paper's factor. `warmup=False` gives the reference behaviour.
"""

import copy

import torch


class ModelEMA:
    """
    Moving average of a model's parameters (and a copy of its buffers), updated after each optimiser step.

    Args:
        model: the model being trained (unwrapped; the average is a deep copy of it, in eval mode, without gradients).
        decay: the average's factor, 0.9999 in the paper.
        warmup: whether the factor warms up as min(decay, (1 + t) / (10 + t)).

    Example:

    ```python
    >>> ema = ModelEMA(model, decay=0.9999)
    >>> ...; optimizer.step(); ema.update(model)
    >>> ema.model.save_pretrained("run/ema")
    ```
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1) (0 turns the average off), got {decay}.")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.current_decay()
        averaged = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            target = averaged[name]
            target.lerp_(param.detach().to(target.dtype), 1.0 - decay)  # target = decay * target + (1-decay) * param
        averaged_buffers = dict(self.model.named_buffers())
        for name, buffer in model.named_buffers():
            averaged_buffers[name].copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "weights": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.warmup, self.num_updates = state["decay"], state["warmup"], state["num_updates"]
        self.model.load_state_dict(state["weights"])
