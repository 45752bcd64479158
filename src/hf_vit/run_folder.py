"""The run folder: what a recipe run leaves behind, the one place that names its files, writes and reads them.

    <output_dir>/
      config.json, model.safetensors, *.py        the trained model (loads with from_pretrained / remote code)
      preprocessor_config.json                    its image processor
      ema/                                        the EMA (Polyak) weights as their own model folder, when enabled
      run_args.json                               every resolved argument of the run
      eval_results.json                           final metrics (test, validation, few-shot, EMA), timings, hardware
      checkpoints/step-XXXXXXXX/                  resumable training state (see hf_vit.training.checkpoint)
      logs/                                       tracker output (TensorBoard event files)

Training writes it (`save_run`, the checkpoints), the Hub publishing and the model card read it; neither spells a
file name of its own. Any hf_vit model folder is a run folder without the run's records.
"""

import json
import os
import re
from pathlib import Path


CONFIG_NAME = "config.json"
PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
EMA_SUBFOLDER = "ema"
RUN_ARGS_NAME = "run_args.json"
EVAL_RESULTS_NAME = "eval_results.json"
CHECKPOINTS_SUBFOLDER = "checkpoints"
LOGS_SUBFOLDER = "logs"
# Inside a checkpoint folder: the loop's position (next to Accelerate's state and a copy of run_args.json).
TRAINER_STATE_NAME = "trainer_state.json"
CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after optimiser step `step` (sortable: 8 digits)."""
    return f"step-{step:08d}"


def write_json(path, data: dict) -> None:
    """Write one JSON file of the run folder (indented, keys sorted, so runs diff cleanly)."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path, what: str) -> dict:
    """A JSON object from the run folder; a ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path.name}: not valid JSON ({error}); it should hold the {what}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: expected a JSON object with the {what}, got {type(data).__name__}.")
    return data


def read_run_args(folder) -> dict | None:
    """The run's resolved arguments, or None when the folder records no run."""
    path = Path(folder) / RUN_ARGS_NAME
    return read_json(path, "resolved run arguments") if path.is_file() else None


def read_eval_results(folder) -> dict | None:
    """The run's final metrics, or None when the folder records no evaluation."""
    path = Path(folder) / EVAL_RESULTS_NAME
    return read_json(path, "evaluation results") if path.is_file() else None


def weight_files(folder) -> list[Path]:
    """The safetensors weight files of a model folder (one file, or the shards its index names); [] when none."""
    folder = Path(folder)
    single, index = folder / WEIGHTS_NAME, folder / WEIGHTS_INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(read_json(index, "shard index")["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ValueError(f"{folder.name}: the shard index names {missing}, which are missing.")
        return [folder / s for s in shards]
    return []


def save_run(output_dir, model, processor, results: dict, run_args: dict, ema_model=None) -> None:
    """
    Write the run folder's model files, processor, `ema/` (when an EMA model is given), `run_args.json` and
    `eval_results.json`: everything to reload, publish and repeat the run. The only writer of these files.
    """
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    if ema_model is not None:
        ema_dir = os.path.join(output_dir, EMA_SUBFOLDER)
        ema_model.save_pretrained(ema_dir)
        processor.save_pretrained(ema_dir)
    write_json(os.path.join(output_dir, RUN_ARGS_NAME), run_args)
    write_json(os.path.join(output_dir, EVAL_RESULTS_NAME), results)


__all__ = [
    "CHECKPOINTS_SUBFOLDER",
    "CHECKPOINT_PATTERN",
    "CONFIG_NAME",
    "EMA_SUBFOLDER",
    "EVAL_RESULTS_NAME",
    "LOGS_SUBFOLDER",
    "PROCESSOR_CONFIG_NAME",
    "RUN_ARGS_NAME",
    "TRAINER_STATE_NAME",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "checkpoint_name",
    "read_eval_results",
    "read_json",
    "read_run_args",
    "save_run",
    "weight_files",
    "write_json",
]
