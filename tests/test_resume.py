"""Resume without loss: a training process really killed with SIGKILL and resumed with `--resume latest` ends with
the same weights, EMA weights and metrics as an uninterrupted run (dropout, augmentation and a DataLoader worker
included, so the RNG states, the data position and the batch seeds all have to come back)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_vit.training.checkpoint import list_checkpoints, resolve_resume


ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
dataset: digits
variant: Ti/4
image_size: 16
hidden_size: 32
num_hidden_layers: 2
num_attention_heads: 2
intermediate_size: 64
representation_size: 32
hidden_dropout_prob: 0.1
augmentation: translate
num_workers: 1
max_steps: 60
batch_size: 32
learning_rate: 0.003
warmup_steps: 5
ema_decay: 0.9
eval_every_steps: 20
save_every_steps: 5
save_total_limit: 2
report_to: none
predict_examples: 0
"""


def _command(config, output_dir, *extra):
    return [sys.executable, str(ROOT / "recipes" / "pretrain.py"), str(config), "--output_dir", str(output_dir), *extra]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


@pytest.mark.recipes
def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"

    # Start the run that will be killed, and the uninterrupted one beside it.
    victim = subprocess.Popen(_command(config, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uninterrupted = subprocess.Popen(_command(config, reference), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        steps = [step for step, _ in list_checkpoints(str(killed))]
        if steps and steps[-1] >= 15:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed: " + victim.stderr.read().decode()[-2000:]
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # really killed mid-run
    kept = list_checkpoints(str(killed))
    # The last k=2 are kept (one more if the kill fell between publishing a checkpoint and pruning the oldest).
    assert 1 <= len(kept) <= 3 and kept[-1][0] < 60
    resume_from = resolve_resume("latest", str(killed))
    assert resume_from == kept[-1][1]

    resumed = subprocess.run(_command(config, killed, "--resume", "latest"), env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {resume_from} at step {kept[-1][0]}" in resumed.stdout
    out, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err.decode()[-3000:]

    for name in ("model.safetensors", "ema/model.safetensors"):
        expected, actual = load_file(reference / name), load_file(killed / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.allclose(expected[key], actual[key], atol=1e-6, rtol=1e-5), f"{name}: {key}"
    first, second = (json.loads((folder / "eval_results.json").read_text()) for folder in (reference, killed))
    assert first["global_step"] == second["global_step"] == 60
    for split in ("test", "validation", "ema_test"):
        for metric in ("accuracy", "top5_accuracy", "loss"):
            assert first[split][metric] == pytest.approx(second[split][metric], abs=1e-6), (split, metric)
    assert first["test"]["confusion_matrix"] == second["test"]["confusion_matrix"]
    # The final checkpoint is there too, and resuming a finished run trains no further.
    assert list_checkpoints(str(killed))[-1][0] == 60


def test_resume_refuses_other_arguments_and_missing_checkpoints(tmp_path):
    from hf_vit.training.arguments import check_resume_compatible

    with pytest.raises(ValueError, match="learning_rate: 0.1 -> 0.2"):
        check_resume_compatible({"learning_rate": 0.1, "output_dir": "a"}, {"learning_rate": 0.2, "output_dir": "b"}, "ckpt")
    check_resume_compatible({"learning_rate": 0.1, "num_workers": 0}, {"learning_rate": 0.1, "num_workers": 4}, "ckpt")
    assert resolve_resume("latest", str(tmp_path)) is None and resolve_resume("", str(tmp_path)) is None
    (tmp_path / "checkpoints" / ".tmp-step-00000010").mkdir(parents=True)  # a save that was killed half-way
    assert resolve_resume("latest", str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / ".tmp-step-00000010"), str(tmp_path))
