"""Polyak / exponential moving average of the weights (ViT paper, appendix B.1.1: factor 0.9999 for Table 2).

The average is a full copy of the model, so it saves and loads like any hf_vit model (`save_run` writes it to the
run folder's `ema/`). NOTE: the reference code averages with a fixed 0.9999 from the first step; a run of a few
thousand steps would then still be mostly the random initialisation. The decay warms up as in TensorFlow's
`ExponentialMovingAverage(num_updates=...)`: decay_t = min(decay, (1 + t) / (10 + t)), so short runs get a useful
average and long runs the paper's factor. `warmup=False` gives the reference behaviour.

Under FSDP2 the average is sharded exactly as the model is (`shard`: the same `fully_shard` plan applied to the copy),
so each process averages only its own shards and no process ever holds more of the average than of the model; its
`state_dict()` (checkpoints) and `full_state_dict()` (the run folder's `ema/`) gather the whole weights.
"""

import copy

import torch


try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support: nothing is ever sharded
    DTensor = ()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this process (FSDP2's sharded parameters), a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _canonical(name: str) -> str:
    # Wrappers that `prepare` may put around the trained model but not around the average: activation checkpointing
    # and torch.compile add a level to the parameter names.
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def register_sharded_parameters(model: torch.nn.Module) -> None:
    """
    FSDP2 keeps a unit's parameters gathered after a forward pass without gradients (evaluation) until the next
    backward; register the sharded ones again (`FSDPModule.reshard`, a no-op where they are) so that a loop over
    `named_parameters()` sees the shards. Nothing to do for a model that is not sharded.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class ModelEMA:
    """
    Moving average of a model's parameters (and a copy of its buffers), updated after each optimiser step.

    Args:
        model: the model being trained (unwrapped; the average is a deep copy of it, in eval mode, without gradients).
        decay: the average's factor, 0.9999 in the paper.
        warmup: whether the factor warms up as min(decay, (1 + t) / (10 + t)).
        shard: applied to the copy (model -> model), e.g. the FSDP2 sharding the trained model received; the copy is
            then taken from the model before it was sharded, and the average is kept shard by shard.

    Example:

    ```python
    >>> ema = ModelEMA(model, decay=0.9999)
    >>> ...; optimizer.step(); ema.update(model)
    >>> ema.model.save_pretrained("run/ema")
    ```
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, warmup: bool = True, shard=None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1) (0 turns the average off), got {decay}.")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model)
        if shard is not None:
            self.model = shard(self.model)
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        # Whether the average is kept in shards (DTensor parameters, FSDP2).
        self.sharded = any(isinstance(param, DTensor) for param in self.model.parameters())

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average towards `model`'s parameters (every process, with its own shards under FSDP2)."""
        decay = self.current_decay()
        if self.sharded:
            register_sharded_parameters(self.model)
            register_sharded_parameters(model)
        averaged = {_canonical(name): param for name, param in self.model.named_parameters()}
        for name, param in model.named_parameters():
            target, source = _local(averaged[_canonical(name)]), _local(param.detach())
            if target.shape != source.shape:
                raise ValueError(
                    f"ModelEMA: {name} is {tuple(source.shape)} on this process in the model and "
                    f"{tuple(target.shape)} in the average; a sharded model needs an average sharded alike "
                    "(ModelEMA(..., shard=...) with the model's own sharding)."
                )
            target.lerp_(source.to(target.dtype), 1.0 - decay)  # target = decay * target + (1-decay) * param
        averaged_buffers = {_canonical(name): buffer for name, buffer in self.model.named_buffers()}
        for name, buffer in model.named_buffers():
            averaged_buffers[_canonical(name)].copy_(buffer)
        self.num_updates += 1

    def full_state_dict(self) -> dict:
        """
        The average's whole weights on the CPU. Sharded: every process must call it (the shards are gathered);
        the main process gets the weights, the others an empty dict.
        """
        if not self.sharded:
            return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def state_dict(self) -> dict:
        # The whole weights also when sharded: a checkpoint's average reads the same under any layout.
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "weights": self.full_state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Every process loads the whole weights; a sharded average keeps its own shards of them."""
        self.decay, self.warmup, self.num_updates = state["decay"], state["warmup"], state["num_updates"]
        if not self.sharded:
            self.model.load_state_dict(state["weights"])
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, state["weights"], options=StateDictOptions(full_state_dict=True))
