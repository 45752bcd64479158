"""What long runs need (issue: the recipes at the paper's scale): the best checkpoint kept by a chosen metric,
checkpoints per epoch, the launcher's precision and compilation settings honoured, gradient checkpointing."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from hf_vit.training import TrainArguments, make_accelerator
from hf_vit.training.checkpoint import list_checkpoints


ROOT = Path(__file__).resolve().parents[1]
TINY = ["--variant", "Ti/4", "--image_size", "16", "--hidden_size", "32", "--num_hidden_layers", "2",
        "--num_attention_heads", "2", "--intermediate_size", "64", "--report_to", "none", "--predict_examples", "0",
        "--learning_rate", "0.003", "--warmup_steps", "2"]


def _pretrain(argv):
    return runpy.run_path(str(ROOT / "recipes" / "pretrain.py"), run_name="recipe")["main"](argv)


@pytest.mark.recipes
def test_the_best_checkpoint_is_kept_beside_the_newest(tmp_path, fresh_accelerate_state):
    out = tmp_path / "run"
    _pretrain(["--dataset", "digits", "--output_dir", str(out), "--max_steps", "24", "--batch_size", "32",
               "--eval_every_steps", "4", "--save_every_steps", "4", "--save_total_limit", "1",
               "--keep_best_metric", "loss", *TINY])
    results = json.loads((out / "eval_results.json").read_text())
    best = results["best_checkpoint"]
    history = {step: metrics["loss"] for step, metrics in results_history(out)}
    best_step = min(history, key=history.get)
    assert best["metric"] == "loss" and best["step"] == best_step and best["value"] == pytest.approx(history[best_step])
    steps = [step for step, _ in list_checkpoints(str(out))]
    # The newest (limit 1) and the best one; every other checkpoint of the run was pruned.
    assert steps == sorted({best_step, 24}) and (out / best["checkpoint"] / "trainer_state.json").is_file()


def results_history(out):
    """[(step, validation metrics)] from the final checkpoint's trainer state."""
    last = list_checkpoints(str(out))[-1][1]
    return json.loads(Path(last, "trainer_state.json").read_text())["eval_history"]


@pytest.mark.recipes
def test_a_checkpoint_per_epoch(tmp_path, fresh_accelerate_state):
    out = tmp_path / "run"
    # 1293 training images at batch 128: 10 optimiser steps per epoch.
    _pretrain(["--dataset", "digits", "--output_dir", str(out), "--num_epochs", "3", "--batch_size", "128",
               "--save_every_epochs", "1", "--save_total_limit", "0", "--eval_every_steps", "-1", *TINY])
    assert [step for step, _ in list_checkpoints(str(out))] == [10, 20, 30]
    with pytest.raises(ValueError, match="keep_best_metric.*needs evaluations"):
        _pretrain(["--dataset", "digits", "--output_dir", str(tmp_path / "other"), "--max_steps", "2",
                   "--validation_fraction", "0", "--keep_best_metric", "accuracy", *TINY])


def test_the_launcher_decides_unless_the_recipe_says(monkeypatch, tmp_path, fresh_accelerate_state):
    args = TrainArguments(output_dir=str(tmp_path), report_to="none")
    assert make_accelerator(args).mixed_precision == "no"  # nothing set anywhere
    AcceleratorState._reset_state(True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    assert make_accelerator(args).mixed_precision == "bf16"
    AcceleratorState._reset_state(True)
    args.mixed_precision = "no"  # set by the recipe or its config: it wins
    assert make_accelerator(args).mixed_precision == "no"
    AcceleratorState._reset_state(True)
    args.mixed_precision = "bf17"
    with pytest.raises(ValueError, match="`mixed_precision` must be one of"):
        make_accelerator(args)
    args.mixed_precision, args.torch_compile = None, True
    AcceleratorState._reset_state(True)
    assert make_accelerator(args).state.dynamo_plugin.backend.value.lower() == "inductor"


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_device_has_it(monkeypatch, tmp_path, capsys, fresh_accelerate_state,
                                                             native):
    import hf_vit.export.precision as precision

    seen = []
    monkeypatch.setattr(precision, "native_bf16", lambda device: seen.append(torch.device(device).type) or native)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    args = TrainArguments(output_dir=str(tmp_path), report_to="none", mixed_precision="auto")
    assert make_accelerator(args).mixed_precision == ("bf16" if native else "no")
    assert seen[0] == "cpu"  # asked about the device the run will use
    assert f"mixed_precision auto -> {'bf16' if native else 'no'} (" in capsys.readouterr().out
    AcceleratorState._reset_state(True)
    args.mixed_precision = "bf16"  # asked for by name: run as asked, warned where it is emulated
    assert make_accelerator(args).mixed_precision == "bf16"
    warned = capsys.readouterr().err
    assert ("no bf16 instructions" in warned and "mixed_precision: auto" in warned
            and "from the recipe's `mixed_precision`" in warned) == (not native)


def test_native_bf16_reads_the_cpu(monkeypatch):
    from hf_vit.export import emulated_bf16_note, native_bf16

    for avx512_bf16, amx, arm, expected in [(True, False, False, True), (False, True, False, True),
                                            (False, False, True, True), (False, False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr("hf_vit.export.precision._arm_bf16_feature", lambda v=arm: v)
        assert native_bf16("cpu") is expected
        assert (emulated_bf16_note("cpu") is None) is expected
    assert native_bf16("meta") is False


def test_native_bf16_on_cuda_asks_the_named_gpu_without_emulation(monkeypatch):
    # torch's is_bf16_supported() says yes for a GPU that only emulates bf16, and asks the current GPU only: a host
    # with an A100 (cuda:0, bf16 arithmetic) and a T4 (cuda:1, compute capability 7.5, emulation only).
    import contextlib

    import hf_vit.export.precision as precision

    native = {0: True, 1: False}
    current = [0]

    @contextlib.contextmanager
    def on_device(index):
        previous, current[0] = current[0], index
        yield
        current[0] = previous

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or native[current[0]])
    assert precision.native_bf16("cuda:0") is True and precision.native_bf16("cuda") is True
    assert precision.native_bf16("cuda:1") is False
    current[0] = 1  # the current GPU is the T4: "cuda" means it
    assert precision.native_bf16("cuda") is False and precision.native_bf16("cuda:0") is True
    note = precision.emulated_bf16_note("cuda:1")
    assert "'cuda:1'" in note and "GPU" in note and "CPU" not in note
    assert precision.emulated_bf16_note("cuda:0") is None


@pytest.mark.recipes
def test_accelerate_launch_precision_reaches_the_run(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "bf16", "--dynamo_backend", "no", str(ROOT / "recipes" / "pretrain.py"),
               "--dataset", "digits", "--output_dir", str(out), "--max_steps", "3", "--batch_size", "32", *TINY]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["hardware"].endswith("mixed precision bf16") and results["mixed_precision"] == "bf16"
    assert json.loads((out / "run_args.json").read_text())["mixed_precision"] is None  # the recipe left it open
    from hf_vit.export import native_bf16

    # Where bf16 is emulated, the warning names where bf16 came from: here the launcher, not the recipe.
    assert ("bf16 comes from the launcher" in done.stderr) == (not native_bf16("cpu")), done.stderr[-3000:]


@pytest.mark.recipes
def test_gradient_checkpointing_trains_the_same_weights(tmp_path, fresh_accelerate_state):
    from safetensors.torch import load_file

    common = ["--dataset", "digits", "--max_steps", "3", "--batch_size", "32", "--eval_every_steps", "-1", *TINY]
    _pretrain(common + ["--output_dir", str(tmp_path / "plain")])
    fresh_accelerate_state()
    _pretrain(common + ["--output_dir", str(tmp_path / "checkpointed"), "--gradient_checkpointing"])
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    checkpointed = load_file(tmp_path / "checkpointed" / "model.safetensors")
    for key, value in plain.items():
        assert (value - checkpointed[key]).abs().max() < 1e-5, key  # recomputation, not another computation
