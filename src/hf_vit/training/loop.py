"""The one training loop every recipe shares, on Accelerate (one CPU core to many GPUs, same code).

Per optimiser step: `accumulation` micro-batches of the per-device batch (gradients synchronised only on the last),
clipping by global norm, the optimiser and the schedule, the EMA update. Around it: periodic evaluation (the task's
own, the EMA copy's, and any extra evaluators such as few-shot), tracker logging, a progress bar with loss, lr and
images/s, and atomic checkpoints every N steps and at the end from which `resume` continues exactly.
"""

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from ..data import build_eval_loader, build_train_loader, move_to_device
from ..run_folder import LOGS_SUBFOLDER, RUN_ARGS_NAME, read_json
from .arguments import check_resume_compatible
from .checkpoint import TrainerState, load_checkpoint, resolve_resume, save_checkpoint
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


def make_accelerator(args) -> Accelerator:
    """The run's Accelerator: mixed precision and trackers from `TrainArguments`; logs under `output_dir/logs`."""
    trackers = [t.strip() for t in args.report_to.split(",") if t.strip() and t.strip() != "none"]
    return Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=trackers or None,
        project_dir=os.path.join(args.output_dir, LOGS_SUBFOLDER),
    )


def _check_distributed_setup(accelerator, args, accumulation) -> None:
    """Combinations the loop cannot honour under a sharding engine, refused before any work is done."""
    kind = accelerator.distributed_type
    sharded_params = kind == DistributedType.FSDP or (
        kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    )
    if args.ema_decay > 0 and sharded_params:
        raise ValueError(
            f"`ema_decay` needs every process to hold whole parameters; under {kind.value} (sharded parameters) the "
            "average cannot be kept. Use DDP or DeepSpeed ZeRO-1/2 for Polyak averaging, or set ema_decay 0."
        )
    if kind == DistributedType.DEEPSPEED and accumulation > 1:
        raise ValueError(
            f"DeepSpeed steps on every backward: set `max_device_batch_size` to batch_size / processes "
            f"({args.batch_size // accelerator.num_processes}) so the loop does not accumulate ({accumulation} "
            "micro-batches now), and let DeepSpeed's own gradient_accumulation_steps do it if needed."
        )


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

    optimizer = build_optimizer(task.model, args)
    schedule = build_schedule(optimizer, total_steps, warmup, args.lr_decay)
    # NOTE: the schedule is not handed to `prepare`: Accelerate would step it once per process per step (it assumes
    # the schedule was written for one process's share of the data); ours counts optimiser steps.
    task.model, optimizer = accelerator.prepare(task.model, optimizer)
    eval_loader = None
    if eval_dataset is not None:
        eval_loader = accelerator.prepare(build_eval_loader(eval_dataset, task.eval_collator(), args.eval_batch_size,
                                                            pin_memory=pin_memory))
    ema = ModelEMA(accelerator.unwrap_model(task.model), args.ema_decay, args.ema_warmup) if args.ema_decay > 0 else None
    accelerator.register_for_checkpointing(schedule)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    if streaming:
        accelerator.register_for_checkpointing(position)

    state = TrainerState()
    result = TrainResult(global_step=0, train_seconds=0.0, images_per_second=0.0, ema=ema)
    checkpoint = resolve_resume(args.resume, args.output_dir)
    if checkpoint is not None:
        saved_args_path = os.path.join(checkpoint, RUN_ARGS_NAME)
        if run_args is not None and os.path.isfile(saved_args_path):
            check_resume_compatible(read_json(saved_args_path, "run's arguments"), run_args, checkpoint)
        state = load_checkpoint(accelerator, checkpoint)
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

    def save() -> str:
        return save_checkpoint(accelerator, args.output_dir, state, run_args or vars(args), args.save_total_limit)

    progress = tqdm(total=total_steps, initial=state.global_step, desc="train", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    task.model.train()
    started = time.perf_counter() - state.train_seconds
    session_start, session_images = time.perf_counter(), 0
    model = task.model
    while state.global_step < total_steps:
        position.set_epoch(state.epoch, state.step_in_epoch)
        batches = iter(train_loader)
        epoch_done = False
        while state.global_step < total_steps and not epoch_done:
            micro_batches = [batch for batch in (next(batches, None) for _ in range(accumulation)) if batch is not None]
            if len(micro_batches) < accumulation:  # the data ran out: an incomplete step is never taken
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
            if do_eval or do_fewshot:
                evaluate(step, do_fewshot)
            if steps_per_epoch is not None and state.step_in_epoch == steps_per_epoch:
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
                epoch_done = True
            state.train_seconds = time.perf_counter() - started
            if at_end or (args.save_every_steps > 0 and step % args.save_every_steps == 0):
                result.checkpoint = save()
    progress.close()
    result.global_step = state.global_step
    result.train_seconds = state.train_seconds
    result.images_per_second = state.images_seen / max(1e-9, state.train_seconds)
    result.eval_history = [tuple(item) for item in state.eval_history]
    return result
