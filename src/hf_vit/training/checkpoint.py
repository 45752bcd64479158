"""Resumable training state: saved atomically every N steps and at the end, the last k kept.

A checkpoint is a folder `checkpoints/step-00001234/` with Accelerate's state (model, optimiser, per-process RNG
states, and the registered objects: schedule, EMA, stream position) plus `trainer_state.json` (step, epoch, position
in the epoch, evaluation history, running log averages) and `run_args.json` (the arguments it was made with).
It is written to `checkpoints/.tmp-step-00001234/` and renamed into place only when complete, so a run killed at any
moment leaves either the previous checkpoints or the new one, never a half-written folder that `--resume` would take.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field

from ..run_folder import (
    CHECKPOINT_PATTERN,
    CHECKPOINTS_SUBFOLDER,
    RUN_ARGS_NAME,
    TRAINER_STATE_NAME,
    checkpoint_name,
    write_json,
)


@dataclass
class TrainerState:
    """Where the loop is: enough to continue exactly (together with Accelerate's state)."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0
    eval_history: list = field(default_factory=list)  # [[step, {metric: value}], ...]
    running_loss: float = 0.0
    running_count: int = 0
    running_metrics: dict = field(default_factory=dict)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> "TrainerState":
        with open(path) as f:
            return cls(**json.load(f))


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """[(step, path), ...] of the complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    root = os.path.join(output_dir, CHECKPOINTS_SUBFOLDER)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(root, name)
        if match and os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(resume: str, output_dir: str) -> str | None:
    """
    `--resume` value -> the checkpoint folder to load, or None to start fresh.
    "" / "no": start fresh; "latest" / "auto": the newest complete checkpoint of `output_dir` (none: start fresh);
    a path: that checkpoint (it must exist and be complete).
    """
    if resume in ("", "no", "none", "false", "False"):
        return None
    if resume in ("latest", "auto", "true", "True"):
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    if not os.path.isfile(os.path.join(resume, TRAINER_STATE_NAME)):
        raise FileNotFoundError(
            f"`resume` {resume!r} is not a complete checkpoint folder (no {TRAINER_STATE_NAME}); give 'latest' or a "
            f"folder under {os.path.join(output_dir, CHECKPOINTS_SUBFOLDER)}."
        )
    return resume


def save_checkpoint(accelerator, output_dir: str, state: TrainerState, run_args: dict, keep_last: int) -> str:
    """Write a complete checkpoint atomically (every process takes part; the main process renames and prunes)."""
    root = os.path.join(output_dir, CHECKPOINTS_SUBFOLDER)
    final = os.path.join(root, checkpoint_name(state.global_step))
    temporary = os.path.join(root, ".tmp-" + checkpoint_name(state.global_step))
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        if os.path.isdir(temporary):  # left by a run killed while saving
            shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    if accelerator.is_main_process:
        state.save(os.path.join(temporary, TRAINER_STATE_NAME))
        write_json(os.path.join(temporary, RUN_ARGS_NAME), run_args)
        _fsync_tree(temporary)
        if os.path.isdir(final):  # the same step saved again (e.g. the final save right after a periodic one)
            shutil.rmtree(final)
        os.replace(temporary, final)
        _prune(root, keep_last)
    accelerator.wait_for_everyone()
    return final


def _fsync_tree(path: str) -> None:
    # Make the files durable before the rename publishes them (a power cut must not leave an empty "complete" folder).
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())


def _prune(root: str, keep_last: int) -> None:
    checkpoints = list_checkpoints(os.path.dirname(root))
    if keep_last > 0:
        for _, path in checkpoints[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(accelerator, path: str) -> TrainerState:
    """Restore Accelerate's state (model, optimiser, RNG, registered objects) and return the loop's state."""
    accelerator.load_state(path)
    return TrainerState.load(os.path.join(path, TRAINER_STATE_NAME))
