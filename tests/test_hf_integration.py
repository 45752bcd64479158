"""hf_vit everywhere a transformers model is used: Auto classes, remote code without hf_vit, pipeline, Trainer."""

import json
import textwrap

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from hf_vit import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel
from hf_vit.evaluation import compute_accuracy

from .common import TINY, run_without_hf_vit


LABELS = {0: "cat", 1: "dog", 2: "bird"}


def _saved_classifier(path):
    torch.manual_seed(0)
    config = ViTConfig(**{**TINY, "num_labels": 3, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}, "head_zero_init": False})
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return model


def _photo(name="china.jpg"):
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    return Image.fromarray(images.images[images.filenames.index(next(f for f in images.filenames if f.endswith(name)))])


def test_auto_classes_resolve_to_hf_vit(tmp_path):
    _saved_classifier(tmp_path)
    assert type(transformers.AutoConfig.from_pretrained(tmp_path)) is ViTConfig
    assert type(transformers.AutoModel.from_pretrained(tmp_path)) is ViTModel
    assert type(transformers.AutoModelForImageClassification.from_pretrained(tmp_path)) is ViTForImageClassification
    assert isinstance(transformers.AutoImageProcessor.from_pretrained(tmp_path), ViTImageProcessor)
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor", "AutoBackbone", "AutoModelForMaskedImageModeling", "AutoModelForPreTraining"}
    for name in ("configuration_hf_vit.py", "modeling_hf_vit.py", "image_processing_hf_vit.py"):
        assert (tmp_path / name).exists()


def test_transformers_own_vit_still_maps_to_transformers(tmp_path):
    transformers.ViTConfig(**{k: v for k, v in TINY.items() if k != "num_labels"}).save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(config) is transformers.ViTConfig
    assert type(transformers.AutoModel.from_config(config)) is transformers.ViTModel


_REMOTE_SCRIPT = textwrap.dedent(
    """
    import torch, transformers
    from PIL import Image

    folder = sys.argv[1]
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    model = transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    image = Image.open(sys.argv[2])
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values).logits
    classifier = transformers.pipeline("image-classification", model=folder, trust_remote_code=True)
    print(json.dumps({
        "modules": [type(o).__module__ for o in (config, base, model, processor)],
        "pixel_values": pixel_values.flatten()[:50].tolist(),
        "logits": logits.tolist(),
        "pipeline": classifier(image, top_k=3),
    }))
    """
)


def test_remote_code_loads_where_hf_vit_is_not_installed(tmp_path):
    model = _saved_classifier(tmp_path / "model")
    image_path = tmp_path / "photo.png"
    _photo().resize((96, 64)).save(image_path)
    result = run_without_hf_vit(_REMOTE_SCRIPT, tmp_path / "model", image_path, tmp_path=tmp_path)
    assert all("hf_vit." not in m and m.startswith("transformers_modules") for m in result["modules"]), result["modules"]
    # Same numbers as hf_vit in this process.
    processor = ViTImageProcessor.from_pretrained(tmp_path / "model")
    pixel_values = processor(Image.open(image_path), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(result["pixel_values"], pixel_values.flatten()[:50].numpy(), atol=1e-6)
    with torch.no_grad():
        expected = model(pixel_values).logits
    np.testing.assert_allclose(result["logits"], expected.numpy(), atol=1e-5)
    assert result["pipeline"][0]["label"] == LABELS[int(expected.argmax())]


@pytest.mark.parametrize("image_kind", ["photo", "grayscale"])
def test_pipeline_returns_label_names(image_kind, tmp_path):
    model = _saved_classifier(tmp_path)
    image = _photo() if image_kind == "photo" else _photo("flower.jpg").convert("L")
    classifier = transformers.pipeline("image-classification", model=str(tmp_path), device="cpu")
    predictions = classifier(image, top_k=3)
    assert [p["label"] for p in predictions] != [] and {p["label"] for p in predictions} == set(LABELS.values())
    assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-5
    # The ranking is the model's own on the processor's input.
    processor = ViTImageProcessor.from_pretrained(tmp_path)
    with torch.no_grad():
        probabilities = model(processor(image, return_tensors="pt")["pixel_values"]).logits.softmax(-1)[0]
    expected = [LABELS[i] for i in probabilities.argsort(descending=True).tolist()]
    assert [p["label"] for p in predictions] == expected
    assert abs(predictions[0]["score"] - probabilities.max().item()) < 1e-5


def test_trainer_fine_tunes_and_the_result_reloads(tmp_path):
    from hf_vit.data import load_digits_data

    data = load_digits_data()
    processor = ViTImageProcessor(size={"height": 16, "width": 16})

    def transform(batch):
        return {"pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"], "labels": batch["label"]}

    train, evaluation = data.train.with_transform(transform), data.validation.with_transform(transform)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=10, id2label=data.id2label, label2id={v: k for k, v in data.id2label.items()})
    model = ViTForImageClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=32, per_device_eval_batch_size=64,
        max_steps=120, learning_rate=3e-3, warmup_steps=10, logging_steps=10, eval_strategy="no",
        remove_unused_columns=False, report_to="none", use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, compute_metrics=compute_accuracy)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.6 * losses[0], losses
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] > 0.5, metrics  # chance is 0.1
    trainer.save_model(str(tmp_path / "final"))
    reloaded = ViTForImageClassification.from_pretrained(tmp_path / "final").eval()
    batch = transform(data.test[:8])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch["pixel_values"]).logits, model(batch["pixel_values"]).logits, rtol=0, atol=0)
