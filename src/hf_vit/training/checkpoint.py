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
import time
import uuid
from dataclasses import asdict, dataclass, field

from ..run_folder import (
    CHECKPOINT_PATTERN,
    CHECKPOINTS_SUBFOLDER,
    EVAL_RESULTS_NAME,
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
    # Which run wrote the checkpoint: pruning only ever removes checkpoints of the run that is pruning.
    run_id: str = ""
    best: dict | None = None  # the best evaluation so far with `keep_best_metric` (see loop.BestCheckpoint)
    num_processes: int = 0  # how the run was laid out (0: not recorded); a resumed run must match
    device_batch: int = 0
    checkpoint_format: str = ""  # how the model and optimiser were saved (loop.checkpoint_format; "": not recorded)

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


def checkpoint_run_id(path: str) -> str:
    """The id of the run that wrote a checkpoint ("" for checkpoints written before runs had ids)."""
    with open(os.path.join(path, TRAINER_STATE_NAME)) as f:
        return json.load(f).get("run_id", "")


def earlier_run_records(output_dir: str, run_id: str | None) -> list[str]:
    """
    What in `output_dir` belongs to a run other than `run_id` (None: a run starting fresh, which owns nothing yet):
    complete checkpoints of other runs and, for a fresh run, a finished run's results.
    """
    records = [os.path.relpath(path, output_dir) for _, path in list_checkpoints(output_dir)
               if run_id is None or checkpoint_run_id(path) != run_id]
    if run_id is None and os.path.isfile(os.path.join(output_dir, EVAL_RESULTS_NAME)):
        records.append(EVAL_RESULTS_NAME)
    return records


def claim_output_dir(output_dir: str, resume: str, overwrite: bool, is_main_process: bool = True):
    """
    Before a run writes anything: (checkpoint to resume or None, the run's id). A run resumed from a checkpoint
    continues that run's id; a fresh run gets a new one. An `output_dir` that holds another run's checkpoints or
    results is refused (nothing of it is deleted or overwritten) unless `overwrite`: then the other run's
    checkpoints are moved aside to `checkpoints.replaced-<UTC time>/` (kept, and said so) and its results will be
    replaced by this run's. Only the main process moves anything (`is_main_process=False` only checks).
    """
    checkpoint = resolve_resume(resume, output_dir)
    run_id = checkpoint_run_id(checkpoint) if checkpoint is not None else None
    others = earlier_run_records(output_dir, run_id)
    if others and not overwrite:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ValueError(
            f"`output_dir` {output_dir} holds an earlier run ({shown}) that this run would replace or prune. "
            "Continue it with `--resume latest`, write to another `--output_dir`, or pass `--overwrite_output_dir` "
            f"to start over (its checkpoints are then moved aside to {CHECKPOINTS_SUBFOLDER}.replaced-<time>/, "
            "not deleted)."
        )
    if others and is_main_process:
        foreign = [os.path.join(output_dir, name) for name in others if name != EVAL_RESULTS_NAME]
        if foreign:
            aside = os.path.join(output_dir, f"{CHECKPOINTS_SUBFOLDER}.replaced-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
            os.makedirs(aside, exist_ok=True)
            for path in foreign:
                os.replace(path, os.path.join(aside, os.path.basename(path)))
            print(f"overwrite_output_dir: moved {len(foreign)} checkpoint(s) of an earlier run aside to {aside}")
    return checkpoint, run_id if run_id is not None else uuid.uuid4().hex


def save_checkpoint(accelerator, output_dir: str, state: TrainerState, run_args: dict, keep_last: int,
                    protected: tuple = ()) -> str:
    """
    Write a complete checkpoint atomically (every process takes part; the main process renames and prunes). Pruning
    keeps the newest `keep_last` checkpoints of this run (`state.run_id`) and every path in `protected` (e.g. the
    best one); it never removes a checkpoint another run wrote.
    """
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
            if checkpoint_run_id(final) != state.run_id:
                raise ValueError(f"{final} belongs to another run; refusing to replace it.")
            shutil.rmtree(final)
        os.replace(temporary, final)
        _prune(output_dir, keep_last, state.run_id, protected)
    accelerator.wait_for_everyone()
    return final


def _fsync_tree(path: str) -> None:
    # Make the files durable before the rename publishes them (a power cut must not leave an empty "complete" folder).
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())


def _prune(output_dir: str, keep_last: int, run_id: str, protected: tuple) -> None:
    if keep_last <= 0:
        return
    own = [path for _, path in list_checkpoints(output_dir) if checkpoint_run_id(path) == run_id]
    kept = {os.path.normpath(p) for p in (*own[-keep_last:], *protected)}
    for path in own:
        if os.path.normpath(path) not in kept:
            shutil.rmtree(path, ignore_errors=True)


def read_trainer_state(path: str) -> TrainerState:
    """The loop's state of a checkpoint (step, position, layout), read without loading anything else."""
    return TrainerState.load(os.path.join(path, TRAINER_STATE_NAME))


def load_checkpoint(accelerator, path: str) -> TrainerState:
    """Restore Accelerate's state (model, optimiser, RNG, registered objects) and return the loop's state. Under FSDP
    the model and optimiser are sharded checkpoints (torch.distributed.checkpoint) that every process reads its
    shards of."""
    accelerator.load_state(path)
    return read_trainer_state(path)
