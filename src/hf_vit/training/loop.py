"""The one training loop every recipe shares, on Accelerate (one CPU core to many GPUs, same code)."""

import math
import os
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .optim import build_optimizer, build_schedule


@dataclass
class TrainResult:
    global_step: int
    train_seconds: float
    images_per_second: float
    eval_history: list = field(default_factory=list)  # [(step, metrics), ...]

    @property
    def last_eval(self) -> dict:
        return self.eval_history[-1][1] if self.eval_history else {}


def batch_plan(global_batch: int, num_processes: int, max_device_batch: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) such that per_device * processes * accumulation == global batch."""
    if global_batch % num_processes:
        raise ValueError(f"`batch_size` {global_batch} is not divisible by the {num_processes} processes.")
    per_process = global_batch // num_processes
    accumulation = math.ceil(per_process / max_device_batch)
    while per_process % accumulation:
        accumulation += 1
    return per_process // accumulation, accumulation


def make_accelerator(args, gradient_accumulation_steps: int = 1) -> Accelerator:
    trackers = [t.strip() for t in args.report_to.split(",") if t.strip() and t.strip() != "none"]
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=trackers or None,
        project_dir=os.path.join(args.output_dir, "logs"),
    )


def train(task, train_dataset, collate_train, args, eval_dataset=None, collate_eval=None, accelerator=None) -> TrainResult:
    """
    Train `task.model` on `train_dataset` with the arguments of `TrainArguments`: global batch via accumulation,
    clipping by global norm, warm-up then linear/cosine decay, periodic evaluation, a progress bar with loss, lr and
    images/s, and tracker logging. The task's model is replaced by the prepared (possibly wrapped) one.
    """
    set_seed(args.seed)
    num_processes = accelerator.num_processes if accelerator is not None else int(os.environ.get("WORLD_SIZE", "1"))
    device_batch, accumulation = batch_plan(args.batch_size, num_processes, args.max_device_batch_size)
    accelerator = accelerator or make_accelerator(args, accumulation)
    if len(train_dataset) < args.batch_size:
        raise ValueError(f"The training split has {len(train_dataset)} examples, fewer than `batch_size` {args.batch_size}.")

    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_dataset, batch_size=device_batch, shuffle=True, drop_last=True, collate_fn=collate_train,
        num_workers=getattr(args, "num_workers", 0), generator=generator,
    )
    eval_loader = None
    if eval_dataset is not None:
        eval_loader = DataLoader(eval_dataset, batch_size=device_batch, shuffle=False, collate_fn=collate_eval or collate_train)

    steps_per_epoch = len(train_loader) // accumulation
    total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.num_epochs * steps_per_epoch))
    warmup = args.warmup_steps if args.warmup_steps > 0 else int(args.warmup_ratio * total_steps)
    eval_every = args.eval_every_steps if args.eval_every_steps > 0 else steps_per_epoch

    optimizer = build_optimizer(task.model, args)
    schedule = build_schedule(optimizer, total_steps, warmup, args.lr_decay)
    task.model, optimizer, train_loader, schedule = accelerator.prepare(task.model, optimizer, train_loader, schedule)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    if accelerator.trackers:
        accelerator.init_trackers("hf_vit", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    result = TrainResult(global_step=0, train_seconds=0.0, images_per_second=0.0)
    progress = tqdm(total=total_steps, desc="train", disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    task.model.train()
    step, images, started = 0, 0, time.perf_counter()
    running_loss, running_count = 0.0, 0
    while step < total_steps:
        for batch in train_loader:
            with accelerator.accumulate(task.model):
                loss, metrics = task.step(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(task.model.parameters(), args.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            images += batch["pixel_values"].shape[0] * accelerator.num_processes
            running_loss, running_count = running_loss + loss.item(), running_count + 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % args.log_every_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - started
                logs = {"train/loss": running_loss / running_count, "train/lr": schedule.get_last_lr()[0],
                        "train/images_per_second": images / elapsed}
                logs.update({f"train/{k}": float(v) for k, v in metrics.items()})
                progress.set_postfix(loss=f"{logs['train/loss']:.4f}", lr=f"{logs['train/lr']:.2e}",
                                     img_s=f"{logs['train/images_per_second']:.0f}")
                accelerator.log(logs, step=step)
                running_loss, running_count = 0.0, 0
            if eval_loader is not None and (step % eval_every == 0 or step == total_steps):
                evaluation = task.evaluate(eval_loader, accelerator)
                result.eval_history.append((step, evaluation))
                accelerator.log({f"eval/{k}": v for k, v in evaluation.items()}, step=step)
                progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in evaluation.items() if isinstance(v, float)))
            if step >= total_steps:
                break
    progress.close()
    result.global_step = step
    result.train_seconds = time.perf_counter() - started
    result.images_per_second = images / result.train_seconds
    accelerator.end_training()
    return result
