"""The one training loop every recipe shares, on Accelerate (one CPU core to many GPUs, same code).

Per optimiser step: `accumulation` micro-batches of the per-device batch (gradients synchronised only on the last),
clipping by global norm, the optimiser and the schedule, the EMA update. Around it: periodic evaluation (the task's
own, the EMA copy's, and any extra evaluators such as few-shot), tracker logging, a progress bar with loss, lr and
images/s, and atomic checkpoints every N steps and at the end from which `resume` continues exactly.
"""

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, fsdp2_prepare_model, set_seed
from tqdm.auto import tqdm

from ..data import build_eval_loader, build_train_loader, move_to_device
from ..run_folder import CHECKPOINTS_SUBFOLDER, LOGS_SUBFOLDER, RUN_ARGS_NAME, checkpoint_name, read_json
from .arguments import check_resume_compatible
from .checkpoint import TrainerState, claim_output_dir, load_checkpoint, read_trainer_state, save_checkpoint
from .ema import ModelEMA
from .optim import build_optimizer, build_schedule


@dataclass
class TrainResult:
    global_step: int
    train_seconds: float
    images_per_second: float
    eval_history: list = field(default_factory=list)  # [(step, metrics), ...]
    ema: ModelEMA | None = None
    resumed_from: str | None = None
    checkpoint: str | None = None
    best: dict | None = None  # {"metric", "value", "step", "checkpoint"} with `keep_best_metric`

    @property
    def last_eval(self) -> dict:
        return self.eval_history[-1][1] if self.eval_history else {}


def batch_plan(global_batch: int, num_processes: int, max_device_batch: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) such that per_device * processes * accumulation == global batch."""
    if global_batch < 1 or max_device_batch < 1:
        raise ValueError(f"`batch_size` ({global_batch}) and `max_device_batch_size` ({max_device_batch}) must be >= 1.")
    if global_batch % num_processes:
        raise ValueError(f"`batch_size` {global_batch} is not divisible by the {num_processes} processes.")
    per_process = global_batch // num_processes
    accumulation = math.ceil(per_process / max_device_batch)
    while per_process % accumulation:
        accumulation += 1
    return per_process // accumulation, accumulation


MIXED_PRECISIONS = ("no", "bf16", "fp16", "auto")


def resolve_mixed_precision(value: str | None) -> str | None:
    """
    The mixed precision to hand to Accelerate: `value` itself, except "auto", which becomes "bf16" where the run's
    device computes in bf16 natively (`native_bf16`: a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX, ...) and
    "no" elsewhere. NOTE: "auto" exists because bf16 autocast on a CPU without bf16 instructions is emulated and
    several times slower than float32 (bench/README.md), so a config written on a bf16 machine must not impose it.
    """
    if value is not None and value not in MIXED_PRECISIONS:
        raise ValueError(f"`mixed_precision` must be one of {list(MIXED_PRECISIONS)} (or unset: the launcher decides), "
                         f"got {value!r}.")
    if value != "auto":
        return value
    from accelerate.state import PartialState
    from accelerate.utils import parse_flag_from_env

    from ..export.precision import native_bf16

    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    return "bf16" if native_bf16(device) else "no"


def make_accelerator(args) -> Accelerator:
    """
    The run's Accelerator; logs under `output_dir/logs`. Accelerate owns the launch settings: mixed precision and
    compilation come from the launcher or accelerate config (`accelerate launch --mixed_precision bf16`, the
    ACCELERATE_* variables it sets) unless the recipe sets them (`mixed_precision`, `torch_compile`);
    `mixed_precision: auto` is bf16 where the device has bf16 instructions, else no (`resolve_mixed_precision`).
    bf16 on a device that only emulates it is run as asked, with a warning.
    """
    mixed_precision = resolve_mixed_precision(args.mixed_precision)
    trackers = [t.strip() for t in args.report_to.split(",") if t.strip() and t.strip() != "none"]
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        dynamo_backend="inductor" if args.torch_compile else None,
        log_with=trackers or None,
        project_dir=os.path.join(args.output_dir, LOGS_SUBFOLDER),
    )
    device = accelerator.device.type
    if args.mixed_precision == "auto":
        why = "native bf16" if mixed_precision == "bf16" else "float32: no native bf16"
        accelerator.print(f"mixed_precision auto -> {mixed_precision} ({why} on {device})")
    elif accelerator.mixed_precision == "bf16":
        from ..export.precision import emulated_bf16_note

        note = emulated_bf16_note(accelerator.device)
        if note is not None:
            if args.mixed_precision:
                advice = ("bf16 comes from the recipe's `mixed_precision`: set `mixed_precision: auto` (or no) to "
                          "train in float32.")
            else:
                advice = ("bf16 comes from the launcher or accelerate config: launch without `--mixed_precision bf16` "
                          "(or set the recipe's `mixed_precision: auto`) to train in float32.")
            accelerator.print(f"warning: mixed precision {note} {advice}", file=sys.stderr)
    return accelerator


def parameters_are_sharded(accelerator) -> bool:
    """Whether each process holds only shards of the parameters (FSDP, DeepSpeed ZeRO-3): the whole weights must then
    be gathered, by every process, before the main process can save them."""
    kind = accelerator.distributed_type
    return kind == DistributedType.FSDP or (
        kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    )


def _check_distributed_setup(accelerator, args, accumulation) -> None:
    """Combinations the loop cannot honour under a sharding engine, refused before any work is done."""
    kind = accelerator.distributed_type
    if args.ema_decay > 0 and parameters_are_sharded(accelerator) and not accelerator.is_fsdp2:
        engine = "FSDP1" if kind == DistributedType.FSDP else "DeepSpeed ZeRO-3"
        raise ValueError(
            f"`ema_decay`: under {engine} the parameters are sharded and the average is kept shard by shard only "
            "with FSDP2 (`fsdp_version: 2` in the accelerate config, as in recipes/configs/accelerate/fsdp_8gpu.yaml). "
            "Use FSDP2, DDP or DeepSpeed ZeRO-1/2 for Polyak averaging, or set ema_decay 0."
        )
    if kind == DistributedType.DEEPSPEED and accumulation > 1:
        raise ValueError(
            f"DeepSpeed steps on every backward: set `max_device_batch_size` to batch_size / processes "
            f"({args.batch_size // accelerator.num_processes}) so the loop does not accumulate ({accumulation} "
            "micro-batches now), and let DeepSpeed's own gradient_accumulation_steps do it if needed."
        )


def checkpoint_format(accelerator) -> str:
    """How `save_state` writes the model and optimiser under this launch: one whole copy (one process, DDP), FSDP's
    (a torch.distributed.checkpoint folder of shards with SHARDED_STATE_DICT) or DeepSpeed's."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        return f"FSDP{plugin.fsdp_version} {getattr(plugin.state_dict_type, 'name', plugin.state_dict_type)}"
    if kind == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    return "whole model (one process or DDP)"


def _check_same_layout(state, num_processes: int, device_batch: int, saved_as: str, checkpoint: str) -> None:
    """A checkpoint holds one random state per process, and every step's batches depend on the per-device batch: a
    run resumed with another layout would not continue the same computation, so it is refused; as is one launched
    with another engine, which could not read the saved model and optimiser."""
    saved = (state.num_processes, state.device_batch)
    if saved[0] and saved != (num_processes, device_batch):
        raise ValueError(
            f"Cannot resume from {checkpoint}: it was written by {saved[0]} process(es) with per-device batch "
            f"{saved[1]}, this run has {num_processes} with {device_batch}. Resume with the same number of processes "
            f"(e.g. `torchrun --nproc_per_node {saved[0]} ...` or `accelerate launch --num_processes {saved[0]} ...`) "
            "and max_device_batch_size: each process's random state is part of the checkpoint, so another layout "
            "would not continue the same run."
        )
    if state.checkpoint_format and state.checkpoint_format != saved_as:
        raise ValueError(
            f"Cannot resume from {checkpoint}: its model and optimiser were saved as {state.checkpoint_format}, and "
            f"this run is launched for {saved_as}; resume with the launch (accelerate config) that wrote it."
        )
    state.num_processes, state.device_batch, state.checkpoint_format = num_processes, device_batch, saved_as


# Fused optimiser kernels that DTensor (FSDP2's sharded parameters) implements: torch registers a sharding strategy
# for fused Adam / AdamW, not for fused SGD (NotImplementedError at the first step).
_FUSED_ON_DTENSOR = (torch.optim.Adam, torch.optim.AdamW)


def _unfuse_where_dtensor_cannot(optimizer) -> None:
    """Under FSDP2, step SGD with the per-tensor (foreach) kernels: the same update rule, another rounding."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it
    if not isinstance(inner, _FUSED_ON_DTENSOR):
        for group in inner.param_groups:
            if group.get("fused"):
                group["fused"] = False


def _scalar(value) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def train(
    task,
    train_dataset,
    args,
    eval_dataset=None,
    accelerator: Accelerator | None = None,
    evaluators=(),
    num_workers: int = 0,
    shuffle_buffer_size: int = 10_000,
    run_args: dict | None = None,
    pin_memory: bool = False,
) -> TrainResult:
    """
    Train `task.model` on `train_dataset` with `TrainArguments` `args` (see the module docstring). The task's model
    is replaced by the prepared (possibly wrapped) one. `evaluators` are callables `(model, accelerator) -> dict`
    run every `fewshot_every_steps` (e.g. `FewShotEvaluator`). `run_args` (all resolved arguments) are stored in
    each checkpoint, and a resumed run must match them.
    """
    accelerator = accelerator or make_accelerator(args)
    set_seed(args.seed)
    device_batch, accumulation = batch_plan(args.batch_size, accelerator.num_processes, args.max_device_batch_size)
    _check_distributed_setup(accelerator, args, accumulation)
    streaming = not hasattr(train_dataset, "__len__")
    if streaming and args.max_steps <= 0:
        raise ValueError("`max_steps` must be set when streaming: a stream's length is unknown.")
    if streaming and args.save_every_epochs > 0:
        raise ValueError("`save_every_epochs` needs epochs; a stream has none: use `save_every_steps`.")
    best = BestCheckpoint(args.keep_best_metric, args.keep_best_mode)
    if best.metric and eval_dataset is None and not evaluators:
        raise ValueError(f"`keep_best_metric` {best.metric!r} needs evaluations during training: a validation split "
                         "(`validation_fraction` > 0) or few-shot evaluation (`fewshot_every_steps` >= 0).")
    with accelerator.main_process_first():  # the main process moves an earlier run aside before the others look
        checkpoint, run_id = claim_output_dir(args.output_dir, args.resume, args.overwrite_output_dir,
                                              accelerator.is_main_process)

    train_loader, position = build_train_loader(
        train_dataset, task.train_collator(), device_batch, args.seed, accelerator.num_processes,
        accelerator.process_index, accumulation, num_workers, shuffle_buffer_size, pin_memory=pin_memory,
    )
    steps_per_epoch = None if streaming else position.steps_per_epoch
    if args.max_steps > 0:
        total_steps = args.max_steps
    else:
        if args.num_epochs <= 0:
            raise ValueError(f"`num_epochs` must be > 0 when `max_steps` is 0, got {args.num_epochs}.")
        total_steps = max(1, math.ceil(args.num_epochs * steps_per_epoch))
    warmup = args.warmup_steps if args.warmup_steps > 0 else int(args.warmup_ratio * total_steps)
    if args.eval_every_steps > 0:
        eval_every = args.eval_every_steps
    elif args.eval_every_steps == 0 and steps_per_epoch:
        eval_every = steps_per_epoch
    else:
        eval_every = None  # only at the end
    fewshot_every = {-1: None, 0: eval_every}.get(args.fewshot_every_steps, args.fewshot_every_steps)

    if args.gradient_checkpointing:
        if not getattr(task.model, "supports_gradient_checkpointing", False):
            raise ValueError(f"`gradient_checkpointing`: {type(task.model).__name__} does not support it.")
        task.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(task.model, args)
    schedule = build_schedule(optimizer, total_steps, warmup, args.lr_decay)
    # NOTE: the schedule is not handed to `prepare`: Accelerate would step it once per process per step (it assumes
    # the schedule was written for one process's share of the data); ours counts optimiser steps.
    ema = None
    if args.ema_decay > 0 and accelerator.is_fsdp2:
        # The average is sharded exactly as the model will be: a copy of the model before `prepare`, given the same
        # FSDP2 plan (Accelerate's `fully_shard` of the configured units); each process averages its own shards.
        ema = ModelEMA(task.model, args.ema_decay, args.ema_warmup,
                       shard=lambda average: fsdp2_prepare_model(accelerator, average))
    task.model, optimizer = accelerator.prepare(task.model, optimizer)
    if accelerator.is_fsdp2:
        _unfuse_where_dtensor_cannot(optimizer)
    eval_loader = None
    if eval_dataset is not None:
        eval_loader = accelerator.prepare(build_eval_loader(eval_dataset, task.eval_collator(), args.eval_batch_size,
                                                            pin_memory=pin_memory))
    if args.ema_decay > 0 and ema is None:
        ema = ModelEMA(accelerator.unwrap_model(task.model), args.ema_decay, args.ema_warmup)
    accelerator.register_for_checkpointing(schedule)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    if streaming:
        accelerator.register_for_checkpointing(position)

    saved_as = checkpoint_format(accelerator)
    state = TrainerState(run_id=run_id, num_processes=accelerator.num_processes, device_batch=device_batch,
                         checkpoint_format=saved_as)
    result = TrainResult(global_step=0, train_seconds=0.0, images_per_second=0.0, ema=ema)
    if checkpoint is not None:
        saved_args_path = os.path.join(checkpoint, RUN_ARGS_NAME)
        if run_args is not None and os.path.isfile(saved_args_path):
            check_resume_compatible(read_json(saved_args_path, "run's arguments"), run_args, checkpoint)
        state = read_trainer_state(checkpoint)
        # Before anything is loaded: a checkpoint of another layout may not even load (sharded files, RNG states).
        _check_same_layout(state, accelerator.num_processes, device_batch, saved_as, checkpoint)
        load_checkpoint(accelerator, checkpoint)
        state.run_id = run_id
        best.restore(state)
        result.resumed_from = checkpoint
        accelerator.print(f"resumed from {checkpoint} at step {state.global_step}")
    elif args.resume in ("latest", "auto"):
        accelerator.print(f"resume: no checkpoint in {args.output_dir}; starting fresh")

    config = {k: v for k, v in (run_args or vars(args)).items() if isinstance(v, (int, float, str, bool))}
    accelerator.init_trackers("hf_vit", config=config)

    def evaluate(step: int, with_fewshot: bool) -> None:
        metrics = {}
        if eval_loader is not None:
            metrics.update(task.evaluate(eval_loader, accelerator))
            if ema is not None:
                metrics.update({f"ema_{k}": v for k, v in task.evaluate(eval_loader, accelerator, ema.model).items()})
        if with_fewshot:
            for evaluator in evaluators:
                metrics.update(evaluator(accelerator.unwrap_model(task.model), accelerator))
        if not metrics:
            return
        state.eval_history.append([step, metrics])
        accelerator.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        progress.write(f"step {step}: {shown}")
        return metrics

    def save() -> str:
        protected = (state.best["checkpoint"],) if state.best else ()
        return save_checkpoint(accelerator, args.output_dir, state, run_args or vars(args), args.save_total_limit,
                               protected)

    progress = tqdm(total=total_steps, initial=state.global_step, desc="train", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    task.model.train()
    started = time.perf_counter() - state.train_seconds
    session_start, session_images = time.perf_counter(), 0
    model = task.model
    while state.global_step < total_steps:
        position.set_epoch(state.epoch, state.step_in_epoch)
        batches = iter(train_loader)
        epoch_done, steps_before = False, state.global_step
        while state.global_step < total_steps and not epoch_done:
            micro_batches = [batch for batch in (next(batches, None) for _ in range(accumulation)) if batch is not None]
            if len(micro_batches) < accumulation:  # the data ran out: an incomplete step is never taken
                if state.global_step == steps_before and state.step_in_epoch == 0:
                    # A whole epoch without one step would repeat forever (e.g. a stream that yields nothing).
                    raise ValueError(
                        f"The training data gave no complete optimiser step in epoch {state.epoch} (a step needs "
                        f"{accumulation} batch(es) of {device_batch} on each of {accelerator.num_processes} "
                        "process(es)); check the training split, streaming settings and batch_size."
                    )
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
                break
            for index, batch in enumerate(micro_batches):
                batch = move_to_device(batch, accelerator.device)
                sync = contextlib.nullcontext() if index == accumulation - 1 else accelerator.no_sync(model)
                with sync:
                    loss, metrics = task.step(batch)
                    accelerator.backward(loss / accumulation)
                state.running_loss += _scalar(loss)
                state.running_count += 1
                for key, value in metrics.items():
                    state.running_metrics[key] = state.running_metrics.get(key, 0.0) + _scalar(value)
                images = batch["pixel_values"].shape[0] * accelerator.num_processes
                state.images_seen += images
                session_images += images
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            state.global_step += 1
            state.step_in_epoch += 1
            step = state.global_step
            at_end = step == total_steps
            progress.update(1)

            if step % args.log_every_steps == 0 or at_end:
                count = max(1, state.running_count)
                speed = session_images / max(1e-9, time.perf_counter() - session_start)
                logs = {"train/loss": state.running_loss / count, "train/lr": schedule.get_last_lr()[-1],
                        "train/images_per_second": speed, "train/epoch": state.epoch}
                logs.update({f"train/{k}": v / count for k, v in state.running_metrics.items()})
                progress.set_postfix(loss=f"{logs['train/loss']:.4f}", lr=f"{logs['train/lr']:.2e}", img_s=f"{speed:.0f}")
                accelerator.log(logs, step=step)
                state.running_loss, state.running_count, state.running_metrics = 0.0, 0, {}
            do_eval = at_end or (eval_every is not None and step % eval_every == 0)
            do_fewshot = bool(evaluators) and (at_end or (fewshot_every is not None and step % fewshot_every == 0))
            improved = False
            if do_eval or do_fewshot:
                complete = do_fewshot or not evaluators  # every source of metrics was evaluated this time
                improved = best.update(state, step, evaluate(step, do_fewshot) or {}, args.output_dir, complete)
            if steps_per_epoch is not None and state.step_in_epoch == steps_per_epoch:
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
                epoch_done = True
            state.train_seconds = time.perf_counter() - started
            periodic = args.save_every_steps > 0 and step % args.save_every_steps == 0
            epoch_end = epoch_done and args.save_every_epochs > 0 and state.epoch % args.save_every_epochs == 0
            if at_end or periodic or epoch_end or improved:
                result.checkpoint = save()
    progress.close()
    result.global_step = state.global_step
    result.train_seconds = state.train_seconds
    result.images_per_second = state.images_seen / max(1e-9, state.train_seconds)
    result.eval_history = [tuple(item) for item in state.eval_history]
    result.best = dict(state.best) if state.best else None
    return result


class BestCheckpoint:
    """
    `keep_best_metric`: which validation metric decides the best checkpoint, and in which direction. The best so far
    lives in `TrainerState.best` (so a resumed run keeps comparing against it); a checkpoint is saved at every
    improvement and protected from pruning.
    """

    MODES = ("auto", "max", "min")

    def __init__(self, metric: str, mode: str = "auto"):
        if mode not in self.MODES:
            raise ValueError(f"`keep_best_mode` must be one of {list(self.MODES)}, got {mode!r}.")
        self.metric = metric
        self.maximize = mode == "max" or (mode == "auto" and "loss" not in metric)

    def restore(self, state) -> None:
        if state.best and state.best.get("metric") != self.metric:
            state.best = None  # another metric: start over (the old best checkpoint stays where it is)

    def update(self, state, step: int, metrics: dict, output_dir: str, complete: bool = True) -> bool:
        """Record a new best from this evaluation; True when it improved (a checkpoint is then due). `complete`: the
        evaluation ran every evaluator, so a metric missing from it does not exist."""
        if not self.metric:
            return False
        if self.metric not in metrics:
            if not complete:
                return False
            raise ValueError(f"`keep_best_metric` {self.metric!r} is not among the evaluation's metrics "
                             f"{sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))}.")
        value = float(metrics[self.metric])
        previous = state.best["value"] if state.best else None
        if previous is not None and (value <= previous if self.maximize else value >= previous):
            return False
        path = os.path.join(output_dir, CHECKPOINTS_SUBFOLDER, checkpoint_name(step))
        state.best = {"metric": self.metric, "value": value, "step": step, "checkpoint": path}
        return True
