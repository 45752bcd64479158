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



# ---------------------------------------------------------------------------------------------------------------------
# --dtype and --device


def _predict_json(capsys, model_dir, images, *flags):
    assert main(["predict", str(model_dir), *map(str, images), "--top-k", "3", "--json", *flags]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-len(images):]
    return [{p["label"]: p["score"] for p in json.loads(line)["predictions"]} for line in lines]


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 0.01), ("int8", 0.02)])
def test_predict_dtypes_match_float32(model_dir, tmp_path, capsys, dtype, tolerance):
    # Tolerance on each class probability: bf16 keeps ~3 significant digits, int8 ~2; on this tiny model the largest
    # difference is about a tenth of the bound (0.0004 for bf16, 0.002 for int8 on the red image).
    images = []
    for i, (color, size) in enumerate([((200, 10, 10), (40, 30)), ((10, 200, 30), (32, 32)), ((90, 90, 240), (64, 48))]):
        images.append(tmp_path / f"x{i}.png")
        Image.new("RGB", size, color).save(images[-1])
    want = _predict_json(capsys, model_dir, images, "--dtype", "float32", "--device", "cpu")
    got = _predict_json(capsys, model_dir, images, "--dtype", dtype)  # the default device: the CPU here
    for scores, expected in zip(got, want):
        assert scores.keys() == expected.keys() == {"a", "b", "c"}
        assert max(abs(scores[k] - expected[k]) for k in scores) <= tolerance
        assert scores != expected  # the dtype took effect


def test_predict_rejects_bad_dtype_and_device(model_dir, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    for flags, message in [
        (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16' (choose from 'float32', 'bfloat16', 'int8')"),
        (["--device", "tpu"], "argument --device: invalid device 'tpu' (choose from 'cpu', 'cuda', 'cuda:N' or 'mps')"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(model_dir), str(image), *flags])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    # Well-formed but not usable here: a message and exit status 2, no traceback.
    if not torch.cuda.is_available():
        assert main(["predict", str(model_dir), str(image), "--device", "cuda"]) == 2
        assert "no CUDA device is available here" in capsys.readouterr().err


def test_int8_runs_on_the_cpu_only():
    from hf_vit.export import resolve_device

    assert resolve_device(None, "int8") == torch.device("cpu")
    with pytest.raises(ValueError, match="int8.*runs on the CPU only|no CUDA device"):
        resolve_device("cuda", "int8")
