"""recipes/pretrain_mpp.py on the shared loop (2 steps, tiny), attention-guided masking, and fine-tuning from it."""

import json
import runpy
from pathlib import Path

import pytest
import torch

from hf_vit import ViTForImageClassification, ViTForMaskedPatchPrediction, ViTImageProcessor
from hf_vit.training.mpp.masking import MaskedPatchCollator
from hf_vit.training.mpp import MaskedPatchArguments, MaskedPatchPredictionTask

from .common import make_config


ROOT = Path(__file__).resolve().parents[1]
TINY_DIGITS = [
    "--dataset", "digits", "--variant", "Ti/4", "--image_size", "16", "--patch_size", "4", "--hidden_size", "32",
    "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64", "--batch_size", "32",
    "--report_to", "none", "--warmup_steps", "1", "--learning_rate", "1e-3",
]


def _recipe(name):
    return runpy.run_path(str(ROOT / "recipes" / name), run_name="recipe")


@pytest.mark.recipes
@pytest.mark.parametrize("masking", ["random", "attmask"])
def test_recipe_runs_two_steps_and_writes_a_finetunable_folder(tmp_path, masking):
    out = tmp_path / "mpp"
    metrics = _recipe("pretrain_mpp.py")["main"](
        TINY_DIGITS + ["--output_dir", str(out), "--max_steps", "2", "--masking", masking, "--eval_every_steps", "2",
                       "--fewshot_every_steps", "2", "--fewshot_shots", "1", "2"]
    )
    assert 0 < metrics["loss"] < 10 and 0 <= metrics["accuracy"] <= 1
    assert 0 <= metrics["fewshot/2shot_accuracy"] <= 1
    resolved = json.loads((out / "run_args.json").read_text())
    assert resolved["masking"] == masking and resolved["mask_ratio"] == 0.5 and resolved["mask_split"] == [0.8, 0.1, 0.1]
    model = ViTForMaskedPatchPrediction.from_pretrained(out)
    assert model.config.mpp_target == "mean_color"
    classifier = ViTForImageClassification.from_pretrained(out, num_labels=10, ignore_mismatched_sizes=True)
    torch.testing.assert_close(classifier.vit.encoder.layers[0].attention.qkv.weight, model.vit.encoder.layers[0].attention.qkv.weight)


def test_attmask_corrupts_what_the_teacher_attends_to():
    torch.manual_seed(0)
    config = make_config(image_size=16, patch_size=4)  # 16 patches
    model = ViTForMaskedPatchPrediction(config)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    args = MaskedPatchArguments(masking="attmask", attmask_random_share=0.0, mask_split=[1.0, 0.0, 0.0])
    task = MaskedPatchPredictionTask(model, processor, args, seed=0)
    images = [{"image": torch.rand(3, 16, 16)} for _ in range(4)]
    batch = task.train_collator()(images)
    assert "all_targets" in batch and "plan_seed" in batch
    replanned = task.attention_guided_plan(batch)
    with torch.no_grad():
        attention = task.teacher.model.vit(batch["pixel_values"], output_attentions=True).attentions[-1]
    scores = attention[:, :, 0, 1:].mean(1)
    expected = scores.topk(8, dim=1).indices.sort(dim=1).values
    assert torch.equal(replanned["corrupted_positions"], expected)
    assert torch.equal(replanned["labels"], batch["all_targets"].gather(1, expected))
    loss, metrics = task.step(batch)
    assert torch.isfinite(loss) and 0 <= float(metrics["accuracy"]) <= 1


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="masking"):
        MaskedPatchArguments(masking="block")
    with pytest.raises(ValueError, match="mask_split"):
        MaskedPatchCollator(ViTImageProcessor(), 16, mask_split=(0.5, 0.5, 0.5))


@pytest.mark.recipes
def test_study_driver_runs_end_to_end_and_resumes(tmp_path):
    """recipes/mpp_study.py --quick on digits: a pre-training, few-shot of both starting points, one fine-tuning."""
    study = _recipe("mpp_study.py")["main"]
    out = tmp_path / "study"
    argv = ["--dataset", "digits", "--out", str(out), "--quick", "--pretrainings", "mpp_mean_color_50",
            "--label-counts", "100", "--finetune-steps", "3", "--finetune-starts", "mpp_mean_color_50"]
    results = study(argv)
    points = results["starting_points"]
    assert list(points) == ["random_init", "mpp_mean_color_50"]
    assert points["random_init"]["finetune"] == {}  # not in --finetune-starts
    (fraction,) = points["mpp_mean_color_50"]["finetune"].values()
    assert fraction["steps"] == 3 and 0.0 <= fraction["test_accuracy"] <= 1.0
    for entry in points.values():
        assert {"fewshot/1shot_accuracy", "fewshot/2shot_accuracy"} <= set(entry["fewshot"]["mean_patch"])
    table = (out / "table.md").read_text()
    assert "random initialisation" in table and "| - |" in table
    pretrain_log = out / "mpp_mean_color_50.log"
    stamp = pretrain_log.stat().st_mtime_ns
    again = study(argv)  # finished runs are not repeated
    assert pretrain_log.stat().st_mtime_ns == stamp
    assert again["starting_points"]["mpp_mean_color_50"]["finetune"] == points["mpp_mean_color_50"]["finetune"]
    with pytest.raises(SystemExit):
        study(argv[:-1] + ["mpp_attmask_50"])  # not a starting point of this study
