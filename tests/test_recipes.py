"""The recipes end to end (short runs), and the argument plumbing they share."""

import json
import runpy
from pathlib import Path

import pytest
import torch

from hf_vit import ViTForImageClassification, ViTImageProcessor
from hf_vit.training import DataArguments, ModelArguments, TrainArguments, parse_recipe_args
from hf_vit.training.data import ImageClassificationCollator, load_digits_data
from hf_vit.training.optim import lr_multiplier
from hf_vit.training.transforms import random_translate


ROOT = Path(__file__).resolve().parents[1]
DIGITS_YAML = str(ROOT / "recipes" / "configs" / "digits.yaml")


def _recipe(name):
    return runpy.run_path(str(ROOT / "recipes" / name), run_name="recipe")


@pytest.mark.recipes
def test_main_job_recipe_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "digits"
    metrics = _recipe("pretrain.py")["main"](
        [DIGITS_YAML, "--output_dir", str(out), "--num_epochs", "3", "--report_to", "none", "--predict_examples", "3"]
    )
    printed = capsys.readouterr().out
    assert "held-out test accuracy" in printed and printed.count("pipeline: held-out image") == 3
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "modeling_hf_vit.py", "run_args.json", "eval_results.json"):
        assert (out / name).exists(), name
    resolved = json.loads((out / "run_args.json").read_text())
    assert resolved["num_epochs"] == 3 and resolved["hidden_size"] == 64 and resolved["dataset"] == "digits"
    # The reported accuracy is the saved model's: re-evaluate the folder independently.
    model = ViTForImageClassification.from_pretrained(out).eval()
    processor = ViTImageProcessor.from_pretrained(out)
    test = load_digits_data().test
    batch = ImageClassificationCollator(processor)([test[i] for i in range(len(test))])
    with torch.no_grad():
        accuracy = (model(batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert abs(accuracy - metrics["accuracy"]) < 1e-6
    assert accuracy > 0.3  # 3 short epochs already beat chance (0.1) by far
    assert json.loads((out / "eval_results.json").read_text())["test"]["accuracy"] == metrics["accuracy"]


def test_yaml_then_command_line(tmp_path):
    model_args, data_args, train_args = parse_recipe_args(
        (ModelArguments, DataArguments, TrainArguments), [DIGITS_YAML, "--learning_rate", "0.01", "--hidden_size", "32"]
    )
    assert train_args.learning_rate == 0.01 and model_args.hidden_size == 32  # command line wins
    assert model_args.num_hidden_layers == 4 and data_args.dataset == "digits"  # from the YAML


def test_unknown_yaml_key_names_the_key_and_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown argument\(s\) \['learning_rat'\]"):
        parse_recipe_args((ModelArguments, DataArguments, TrainArguments), [str(config)])


def test_schedule_warms_up_then_decays():
    values = [lr_multiplier(s, 100, 10, "linear") for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[55] == pytest.approx(0.5) and values[-1] < 0.02
    cosine = [lr_multiplier(s, 100, 10, "cosine") for s in range(10, 100)]
    assert cosine[0] == pytest.approx(1.0) and cosine[45] == pytest.approx(0.5) and all(a >= b for a, b in zip(cosine, cosine[1:]))
    with pytest.raises(ValueError, match="lr_decay"):
        lr_multiplier(0, 10, 0, "step")


def test_translation_moves_content_and_keeps_shape():
    image = torch.zeros(1, 3, 16, 16)
    image[:, :, 6:10, 6:10] = 1.0
    generator = torch.Generator().manual_seed(0)
    shifted = [random_translate(image, generator=generator) for _ in range(20)]
    assert all(s.shape == image.shape for s in shifted)
    assert all(s.sum() == image.sum() for s in shifted)  # the square stays whole (shift <= 2 px, 6 px margin)
    assert any(not torch.equal(s, image) for s in shifted)
