"""FSDP2 in 2 CPU processes: the recipes under Accelerate's own FSDP2 integration (`fully_shard`, sharded checkpoints
through torch.distributed.checkpoint, `get_state_dict`), switched on for CPU processes by tests/fsdp_cpu_launch.py
(Accelerate 1.15 takes its FSDP path only for GPU-type devices), with the shipped recipes/configs/accelerate/
fsdp_8gpu.yaml. The checks are bench/gpu_fsdp_check.py's, which runs the same on 2 GPUs through `accelerate launch`.

Tolerances. FSDP against one process with the same global batch (two accumulated micro-batches of 16, as each of the
two processes runs): the same examples, augmentations, dropout-free model and updates; what differs is float32
rounding, since the reduce-scatter averages the two processes' gradients where one process sums two halves of the
loss, and the gradient norm for clipping is summed from shards. That is ~1e-7 relative per step; through 12 AdamW steps
at lr 3e-3 it moves a weight by well under 1e-6 (measured: 5e-10), so weights and losses must agree within 1e-6, and
accuracies within one image. A lost gradient reduction or a wrong shard moves weights by 1e-3 or more; bf16 (FSDP's
MixedPrecisionPolicy) by 1.6e-2. A resumed run repeats the same operations in the same order: bitwise equal.
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "fsdp_cpu_launch.py"
FSDP_CONFIG = ROOT / "recipes" / "configs" / "accelerate" / "fsdp_8gpu.yaml"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_fsdp_check", ROOT / "bench" / "gpu_fsdp_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(**extra):
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1",
                PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **extra)


def _fsdp(recipe, config, output_dir, *extra, env=None):
    """Start `recipe` in 2 CPU processes under Accelerate's FSDP2 path with the shipped FSDP config."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(DRIVER),
               str(FSDP_CONFIG), str(ROOT / "recipes" / recipe), str(config), "--output_dir", str(output_dir), *extra]
    return subprocess.Popen(command, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_process(recipe, config, output_dir, *extra):
    command = [sys.executable, str(ROOT / "recipes" / recipe), str(config), "--output_dir", str(output_dir), *extra]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)


def _finish(process):
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-4000:]
    return out


def _assert_sharded_in_two(rows_per_rank, what):
    """Every parameter is a DTensor cut in two along its first dimension; each process holds about half of them."""
    first, second = rows_per_rank
    assert [r["name"] for r in first] == [r["name"] for r in second]
    for a, b in zip(first, second):
        assert a["dtensor"] and b["dtensor"] and a["placements"] == b["placements"] == ["Shard(0)"], (what, a)
        assert a["shape"] == b["shape"]
        assert a["local_shape"][0] + b["local_shape"][0] == a["shape"][0], (what, a, b)
        assert a["local_shape"][1:] == b["local_shape"][1:] == a["shape"][1:], (what, a, b)
    total = sum(math.prod(r["shape"]) for r in first)
    held = [sum(math.prod(r["local_shape"]) for r in rows) for rows in rows_per_rank]
    assert sum(held) == total and all(0.4 < h / total < 0.6 for h in held), (what, held, total)


@pytest.mark.slow
@pytest.mark.recipes
def test_fsdp2_in_two_processes_equals_one_process_saves_an_ordinary_folder_and_resumes_exactly(tmp_path):
    check = _gpu_check()
    config = tmp_path / "tiny.yaml"
    config.write_text(check.CONFIG)
    two, one, report = tmp_path / "fsdp", tmp_path / "one", tmp_path / "sharding"
    fsdp = _fsdp("pretrain.py", config, two, env=_env(FSDP_CPU_LAUNCH_REPORT=str(report)))
    # One process, same global batch of 32: two accumulated micro-batches of 16, as each of the two processes runs.
    single = _one_process("pretrain.py", config, one, "--max_device_batch_size", "16")
    out = _finish(fsdp)
    assert single.returncode == 0, single.stderr[-4000:]
    assert "2 process(es)" in out and "1 process(es)" in single.stdout

    # Really sharded: in each process the model's and the average's parameters are DTensors holding half the rows...
    ranks = [json.loads((report / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for what in ("model", "ema"):
        _assert_sharded_in_two([r[what] for r in ranks], what)
    # ... and the checkpoints are torch.distributed.checkpoint folders written by both processes (the one-process
    # run's whole checkpoint fails the same check).
    assert check.check_sharded_checkpoint(two) == []
    assert check.check_sharded_checkpoint(one) != []

    # The same computation as one process: weights, EMA weights, every loss and metric (few-shot included).
    problems, largest = check.compare_runs(two, one, weights_atol=1e-6, loss_atol=1e-6)
    assert problems == [], problems
    print(f"\nFSDP2 (2 CPU processes) vs 1 process, largest differences: {largest}")
    results = json.loads((two / "eval_results.json").read_text())
    history = json.loads((check.last_checkpoint(two) / "trainer_state.json").read_text())["eval_history"]
    assert [step for step, _ in history] == [6, 12] and history[1][1]["loss"] < history[0][1]["loss"]
    assert results["test"]["accuracy"] > 0.15 and results["test"]["num_examples"] == 360  # it learned (chance: 0.1)
    assert results["hardware"].startswith("2 processes on CPU")

    # An ordinary hf_vit run folder: hf_vit's remote code, whole weights; loads with hf_vit and as remote code.
    assert check.check_ordinary_folder(two, tmp_path) == []

    # Stopped after step 6 (its checkpoint alone in a fresh folder), resumed in 2 processes: the same final run.
    resumed = tmp_path / "resumed"
    step = f"step-{check.RESUME_FROM_STEP:08d}"
    shutil.copytree(two / "checkpoints" / step, resumed / "checkpoints" / step)
    continued = _fsdp("pretrain.py", config, resumed, "--resume", "latest")
    # Resumed in one process: refused before anything is loaded, in one line (exit code 2, no traceback).
    refused = _one_process("pretrain.py", config, two, "--resume", "latest")
    out = _finish(continued)
    assert f"resumed from {resumed / 'checkpoints' / step} at step {check.RESUME_FROM_STEP}" in out
    problems, largest = check.compare_runs(resumed, two, weights_atol=0.0, loss_atol=0.0, metric_atol=0.0)
    assert problems == [], problems
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert check.check_refused(refused.returncode, refused.stderr) == []
    assert "this run has 1 with 32" in refused.stderr.splitlines()[0]


@pytest.mark.slow
@pytest.mark.recipes
def test_fsdp2_finetuning_from_a_checkpoint_equals_one_process(tmp_path):
    """The fine-tuning path: the checkpoint is read by the main process only (FSDP's RAM-efficient loading) and
    broadcast; SGD with layer-wise lr decay, stepped with the per-tensor kernels (fused SGD has no DTensor kernel).
    Without a validation split, few-shot evaluation is the first forward pass after a training step (no evaluation
    forward before it has gathered the root unit's parameters)."""
    from hf_vit import ViTImageProcessor
    from tests.test_training import tiny_model

    torch.manual_seed(0)
    checkpoint = tmp_path / "pretrained"
    tiny_model(representation_size=32).save_pretrained(checkpoint)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(checkpoint)
    config = tmp_path / "finetune.yaml"
    config.write_text(
        f"model_name_or_path: {checkpoint}\ndataset: digits\nimage_size: 24\naugmentation: translate\nmax_steps: 8\n"
        "batch_size: 32\nlearning_rate: 0.05\nwarmup_steps: 2\nema_decay: 0.9\nlayer_decay: 0.75\n"
        "validation_fraction: 0\nfewshot_every_steps: 2\nfewshot_shots: [1, 5]\nreport_to: none\n"
        "predict_examples: 0\nmax_eval_examples: 101\n"
    )
    two, one = tmp_path / "fsdp", tmp_path / "one"
    fsdp = _fsdp("finetune.py", config, two)
    single = _one_process("finetune.py", config, one, "--max_device_batch_size", "16")
    _finish(fsdp)
    assert single.returncode == 0, single.stderr[-4000:]
    check = _gpu_check()
    assert check.check_sharded_checkpoint(two) == []
    problems, largest = check.compare_runs(two, one, weights_atol=1e-6, loss_atol=1e-6)
    assert problems == [], problems
    print(f"\nFSDP2 fine-tuning (2 CPU processes) vs 1 process, largest differences: {largest}")
    assert "validation/fewshot/5shot_accuracy" in largest  # the few-shot results were compared
    assert json.loads((two / "config.json").read_text())["image_size"] == 24


def test_resume_refuses_another_engine_before_loading():
    from hf_vit.training.checkpoint import TrainerState
    from hf_vit.training.loop import _check_same_layout

    state = TrainerState(num_processes=2, device_batch=16, checkpoint_format="FSDP2 SHARDED_STATE_DICT")
    with pytest.raises(ValueError, match=r"saved as FSDP2 SHARDED_STATE_DICT, and this run is launched for whole "
                                         r"model \(one process or DDP\)"):
        _check_same_layout(state, 2, 16, "whole model (one process or DDP)", "ckpt")
    with pytest.raises(ValueError, match="written by 2 process"):
        _check_same_layout(state, 1, 32, "FSDP2 SHARDED_STATE_DICT", "ckpt")
    _check_same_layout(state, 2, 16, "FSDP2 SHARDED_STATE_DICT", "ckpt")
    legacy = TrainerState(num_processes=2, device_batch=16)  # written before the format was recorded
    _check_same_layout(legacy, 2, 16, "FSDP2 SHARDED_STATE_DICT", "ckpt")
    assert legacy.checkpoint_format == "FSDP2 SHARDED_STATE_DICT"


def test_gpu_check_commands_are_valid_accelerate_launches():
    """bench/gpu_fsdp_check.py cannot run here; its `accelerate launch` command lines are parsed and checked by
    Accelerate's own launcher code."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    commands = _gpu_check()._commands(Path("OUT"), "0,1")
    expected = {"fsdp_bf16": (2, "bf16"), "fsdp_fp32": (2, "no"), "resumed": (2, "bf16"), "one_process": (1, "bf16")}
    for name, (processes, precision) in expected.items():
        command = commands[name]
        assert command[1:3] == ["-m", "accelerate.commands.launch"]
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
        assert (args.use_fsdp, args.fsdp_version, args.num_processes, args.mixed_precision) == (
            True, 2, processes, precision), name
        assert args.training_script.endswith("pretrain.py")
    assert "--resume" not in commands["fsdp_bf16"] and commands["one_process"][-2:] == ["--resume", "latest"]
