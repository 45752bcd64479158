"""Data-parallel training on CPU: `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 recipes/finetune.py ...` ends with
the same weights and metrics as one process with the same global batch (gradient accumulation over the same
per-device batches), and both processes keep identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_vit import ViTImageProcessor


ROOT = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT))


@pytest.mark.recipes
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    from tests.test_training import tiny_model

    torch.manual_seed(0)
    checkpoint = tmp_path / "pretrained"
    tiny_model(representation_size=32).save_pretrained(checkpoint)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(checkpoint)
    config = tmp_path / "finetune.yaml"
    config.write_text(
        f"model_name_or_path: {checkpoint}\ndataset: digits\nimage_size: 24\naugmentation: translate\nmax_steps: 8\n"
        "batch_size: 32\nlearning_rate: 0.05\nwarmup_steps: 2\nema_decay: 0.9\nlayer_decay: 0.75\n"
        "eval_every_steps: 4\nreport_to: none\npredict_examples: 0\nmax_eval_examples: 101\n"
    )
    recipe = str(ROOT / "recipes" / "finetune.py")
    parallel = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", recipe, str(config),
         "--output_dir", str(tmp_path / "two")],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # One process, same global batch of 32: two accumulated micro-batches of 16, as each of the two processes runs.
    single = subprocess.run(
        [sys.executable, recipe, str(config), "--output_dir", str(tmp_path / "one"), "--max_device_batch_size", "16"],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    out, err = parallel.communicate(timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    assert parallel.returncode == 0, err[-3000:]
    assert "2 process(es)" in out and "1 process(es)" in single.stdout

    for name in ("model.safetensors", "ema/model.safetensors"):
        one, two = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        for key in one:
            # Same examples and augmentations per step; the all-reduce sums in another order than accumulation.
            assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), f"{name}: {key}"
    first, second = (json.loads((tmp_path / run / "eval_results.json").read_text()) for run in ("one", "two"))
    # 101 images on 2 processes: Accelerate pads the last batch; the streamed counts drop the padding.
    assert first["test"]["num_examples"] == second["test"]["num_examples"] == 101
    assert first["test"]["accuracy"] == pytest.approx(second["test"]["accuracy"], abs=0.011)
    assert first["test"]["loss"] == pytest.approx(second["test"]["loss"], abs=1e-4)
    # The fine-tuned model: a new head for these labels, no pre-logits, the new resolution.
    config_json = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config_json["representation_size"] is None and config_json["image_size"] == 24

    # Resuming the two-process run in one process is refused (each process's random state is in the checkpoint).
    resumed = subprocess.run([sys.executable, recipe, str(config), "--output_dir", str(tmp_path / "two"), "--resume",
                              "latest"], env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "written by 2 process(es) with per-device batch 16, this run has 1 with 32" in resumed.stderr
