"""recipes/pretrain_mae.py on the shared loop (tiny, on digits): a run folder that fine-tunes with recipes/finetune.py,
an exact resume, two processes equal to one, the masking drawn from each batch's seed, and the study driver's MAE row."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_vit import ViTForImageClassification, ViTForMaskedAutoencoding, ViTImageProcessor
from hf_vit.training.mae import MaskedAutoencoderArguments, MaskedAutoencoderCollator
from hf_vit.training.checkpoint import list_checkpoints


ROOT = Path(__file__).resolve().parents[1]
TINY_MAE = [
    "--dataset", "digits", "--variant", "Ti/4", "--image_size", "16", "--patch_size", "4", "--hidden_size", "32",
    "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--decoder_hidden_size", "32", "--decoder_num_hidden_layers", "1", "--decoder_num_attention_heads", "2",
    "--decoder_intermediate_size", "64", "--position_embedding_type", "sincos_2d",
    "--position_embedding_sincos_style", "mae", "--batch_size", "32", "--report_to", "none", "--warmup_steps", "1",
    "--learning_rate", "1e-3",
]


def _recipe(name):
    return runpy.run_path(str(ROOT / "recipes" / name), run_name="recipe")


def _env(**extra):
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra)


@pytest.mark.recipes
def test_recipe_writes_a_folder_that_fine_tunes_with_maes_head(tmp_path):
    out = tmp_path / "mae"
    metrics = _recipe("pretrain_mae.py")["main"](
        TINY_MAE + ["--output_dir", str(out), "--max_steps", "3", "--eval_every_steps", "3", "--fewshot_every_steps", "3",
                    "--fewshot_shots", "1", "2", "--mask_ratio", "0.5"]
    )
    assert 0 < metrics["loss"] < 10 and 0 <= metrics["fewshot/2shot_accuracy"] <= 1
    resolved = json.loads((out / "run_args.json").read_text())
    assert resolved["mask_ratio"] == 0.5 and resolved["norm_pix_loss"] is True and resolved["adam_beta2"] == 0.95
    config = json.loads((out / "config.json").read_text())
    # The recipe's objective and its processor's normalisation are recorded in the model's config.
    assert config["mask_ratio"] == 0.5 and config["norm_pix_loss"] is True
    processor = ViTImageProcessor.from_pretrained(out)
    assert config["image_mean"] == processor.image_mean and config["image_std"] == processor.image_std
    assert (out / "mae_reconstructions.png").stat().st_size > 0
    model = ViTForMaskedAutoencoding.from_pretrained(out)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).mask.sum(1).tolist() == [8.0, 8.0]  # 50% of 16

    finetuned = tmp_path / "finetuned"
    _recipe("finetune.py")["main"]([
        "--model_name_or_path", str(out), "--dataset", "digits", "--batch_size", "32", "--max_steps", "2",
        "--warmup_steps", "1", "--report_to", "none", "--predict_examples", "0", "--output_dir", str(finetuned),
    ])
    classifier = ViTForImageClassification.from_pretrained(finetuned)
    assert (classifier.config.pooling, classifier.config.layer_norm_after_pooling) == ("gap", True)
    assert classifier.config.num_labels == 10
    # The patch embedding started from the MAE's (two SGD steps move it only a little).
    start = model.vit.embeddings.patch_embeddings.projection.weight
    moved = (classifier.vit.embeddings.patch_embeddings.projection.weight - start).abs().max()
    assert 0 < moved < 0.1 * start.abs().max()


def test_the_collator_draws_the_masking_from_the_batch_seed():
    from hf_vit.data.loader import ExampleBatch

    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    collator = MaskedAutoencoderCollator(processor, 4, seed=0)
    rows = [{"image": torch.rand(3, 16, 16), "label": i} for i in range(3)]
    first, again = collator(ExampleBatch(rows, seed=7)), collator(ExampleBatch(rows, seed=7))
    other = collator(ExampleBatch(rows, seed=8))
    assert first["noise"].shape == (3, 16) and torch.equal(first["noise"], again["noise"])
    assert not torch.equal(first["noise"], other["noise"])
    evaluation = MaskedAutoencoderCollator(processor, 4, seed=0, per_batch_plans=True)
    assert torch.equal(evaluation(rows)["noise"], evaluation(rows)["noise"])  # the same batch, the same masks
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedAutoencoderArguments(mask_ratio=0.0)
    with pytest.raises(ValueError, match="fewshot_representation"):
        MaskedAutoencoderArguments(fewshot_representation="pooled")


@pytest.mark.recipes
def test_resume_latest_continues_to_the_uninterrupted_weights(tmp_path):
    """A run resumed from its step-4 checkpoint ends with the weights of the run that went through: the masks come
    from the batches' seeds, the RNG states and the data position from the checkpoint."""
    command = [sys.executable, str(ROOT / "recipes" / "pretrain_mae.py"), *TINY_MAE, "--max_steps", "6",
               "--save_every_steps", "2", "--hidden_dropout_prob", "0.1", "--augmentation", "translate",
               "--predict_examples", "0", "--fewshot_every_steps", "-1"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    runs = []
    try:
        for folder in (reference, resumed):  # side by side
            runs.append(subprocess.Popen(command + ["--output_dir", str(folder)], env=_env(), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, start_new_session=True))
        for run in runs:
            _, err = run.communicate(timeout=600)
            assert run.returncode == 0, err[-3000:]
    finally:
        _stop(runs)
    # Make `resumed` an interrupted run: its last checkpoint and its final files gone.
    steps = list_checkpoints(str(resumed))
    assert [step for step, _ in steps] == [4, 6]
    shutil.rmtree(steps[-1][1])
    for name in ("model.safetensors", "eval_results.json", "config.json"):
        (resumed / name).unlink()
    done = subprocess.run(command + ["--output_dir", str(resumed), "--resume", "latest"], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "at step 4" in done.stdout
    expected, actual = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys() and any(k.startswith("decoder.") for k in expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def _stop(runs):
    """Kill the runs still alive, each with its whole process group (torchrun's workers too; every run here starts
    its own session), and reap them: a failed assertion or a timeout leaves no orphan process behind."""
    for run in runs:
        if run.poll() is None:
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            run.wait()
        for stream in (run.stdout, run.stderr):
            if stream is not None:
                stream.close()


def test_stop_leaves_no_child_behind(tmp_path):
    # A launcher that starts a worker and waits, like torchrun: stopping the launcher stops the worker too.
    pid_file = tmp_path / "worker.pid"
    launcher = ("import subprocess, sys, time; worker = subprocess.Popen([sys.executable, '-c', "
                "'import time; time.sleep(600)']); open(sys.argv[1], 'w').write(str(worker.pid)); worker.wait()")
    run = subprocess.Popen([sys.executable, "-c", launcher, str(pid_file)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, start_new_session=True)
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    _stop([run])
    assert run.returncode is not None
    for _ in range(100):  # the worker, killed with its group, is reaped by init
        if not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text().lower():
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"worker {worker} outlived its launcher")


@pytest.mark.recipes
@pytest.mark.slow  # two torchrun processes and one more run
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    recipe = str(ROOT / "recipes" / "pretrain_mae.py")
    args = [*TINY_MAE, "--max_steps", "4", "--predict_examples", "0", "--fewshot_every_steps", "-1"]
    parallel = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", recipe, *args,
         "--output_dir", str(tmp_path / "two")],
        env=_env(ACCELERATE_USE_CPU="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        single = subprocess.run([sys.executable, recipe, *args, "--output_dir", str(tmp_path / "one"),
                                 "--max_device_batch_size", "16"], env=_env(), capture_output=True, text=True,
                                timeout=600)
        out, err = parallel.communicate(timeout=600)
    finally:
        _stop([parallel])
    assert single.returncode == 0, single.stderr[-3000:]
    assert parallel.returncode == 0, err[-3000:]
    assert "2 process(es)" in out and "1 process(es)" in single.stdout
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key


@pytest.mark.recipes
@pytest.mark.slow  # a pre-training, two few-shot evaluations and a fine-tuning, as subprocesses
def test_study_driver_runs_the_mae_row(tmp_path):
    """recipes/mpp_study.py --quick on digits with the MAE pre-training: its few-shot row and one fine-tuning."""
    study = _recipe("mpp_study.py")["main"]
    out = tmp_path / "study"
    results = study(["--dataset", "digits", "--out", str(out), "--quick", "--pretrainings", "mae_75",
                     "--label-counts", "100", "--finetune-steps", "3", "--finetune-starts", "mae_75"])
    entry = results["starting_points"]["mae_75"]
    assert entry["pretrain_seconds"] > 0 and "fewshot/1shot_accuracy" in entry["pretrain_validation"]
    assert {"fewshot/1shot_accuracy", "fewshot/2shot_accuracy"} <= set(entry["fewshot"]["mean_patch"])
    (fraction,) = entry["finetune"].values()
    assert fraction["steps"] == 3
    finetuned = json.loads((Path(fraction["folder"]) / "config.json").read_text())
    assert finetuned["pooling"] == "gap" and finetuned["layer_norm_after_pooling"] is True
    assert "masked autoencoder" in (out / "table.md").read_text()
