"""The `hf-vit` console script."""

import json

import pytest
import torch
from PIL import Image

from hf_vit import ViTConfig, ViTForImageClassification, ViTImageProcessor
from hf_vit.cli import main

from .common import TINY


@pytest.fixture
def model_dir(tmp_path):
    config = ViTConfig(**{**TINY, "id2label": {0: "a", 1: "b", 2: "c"}, "label2id": {"a": 0, "b": 1, "c": 2}, "head_zero_init": False})
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(tmp_path / "model")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_predict_prints_label_names(model_dir, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    assert main(["predict", str(model_dir), str(image), "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["image"] == str(image)
    assert {p["label"] for p in result["predictions"]} == {"a", "b", "c"}


def test_predict_reports_unreadable_images(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(model_dir), str(bad)]) == 2
    assert "cannot read this image" in capsys.readouterr().err


def test_info_counts_parameters(model_dir, capsys):
    assert main(["info", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    model = ViTForImageClassification.from_pretrained(model_dir)
    # The whole saved model (what its card counts from the weights), and the encoder without the head beside it.
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["encoder_parameters"] == sum(p.numel() for p in model.vit.parameters()) < info["parameters"]
    assert info["model_type"] == "hf_vit" and info["class"] == "ViTForImageClassification"
