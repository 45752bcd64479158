"""The recipes end to end (short runs), their configs, and the Accelerate launch configs."""

import inspect
import json
import re
import runpy
from pathlib import Path

import pytest
import torch

from hf_vit import ViTForImageClassification, ViTImageProcessor
from hf_vit.data import DataArguments, ImageClassificationCollator, load_digits_data
from hf_vit.training import (
    FinetuneModelArguments,
    FinetuneTrainArguments,
    ModelArguments,
    TrainArguments,
    build_model,
    parse_recipe_args,
)
from hf_vit.training.models import label_fields
from hf_vit.training.mpp import MaskedPatchArguments, MaskedPatchTrainArguments
from hf_vit.training.mae import MaskedAutoencoderArguments, MaskedAutoencoderTrainArguments


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
DIGITS_YAML = str(CONFIGS / "digits.yaml")


def _recipe(name):
    return runpy.run_path(str(ROOT / "recipes" / name), run_name="recipe")


def _saved_model_accuracy(folder) -> float:
    """Top-1 accuracy of a saved run folder on the digits test split, evaluated independently of the recipe."""
    model = ViTForImageClassification.from_pretrained(folder).eval()
    processor = ViTImageProcessor.from_pretrained(folder)
    test = load_digits_data().test
    batch = ImageClassificationCollator(processor)([test[i] for i in range(len(test))])
    with torch.no_grad():
        return (model(batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).float().mean().item()


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """The main job's recipe and config, for 3 epochs."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    metrics = _recipe("pretrain.py")["main"](
        [DIGITS_YAML, "--output_dir", str(out), "--num_epochs", "3", "--report_to", "tensorboard",
         "--predict_examples", "3", "--fewshot_shots", "1", "5"]
    )
    return out, metrics


@pytest.mark.recipes
def test_main_job_writes_the_run_folder(main_job, capsys):
    out, metrics = main_job
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "modeling_hf_vit.py", "run_args.json",
                 "eval_results.json"):
        assert (out / name).exists(), name
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # TensorBoard, Accelerate's tracker
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000060"]  # the final, resumable state
    resolved = json.loads((out / "run_args.json").read_text())
    assert resolved["num_epochs"] == 3 and resolved["hidden_size"] == 64 and resolved["dataset"] == "digits"
    results = json.loads((out / "eval_results.json").read_text())
    assert results["global_step"] == 60 and results["test"]["num_examples"] == 360
    assert results["hardware"].startswith("1 process on CPU (") and "torch " in results["hardware"]
    assert {"fewshot/1shot_accuracy", "fewshot/5shot_accuracy"} <= set(results["validation"])
    accuracy = _saved_model_accuracy(out)  # the reported accuracy is the saved model's
    assert abs(accuracy - metrics["accuracy"]) < 1e-6
    assert accuracy > 0.3  # 3 short epochs already beat chance (0.1) by far
    assert results["test"]["accuracy"] == metrics["accuracy"]


@pytest.mark.recipes
def test_finetune_recipe_from_the_main_jobs_model(main_job, tmp_path, capsys):
    source, _ = main_job
    out = tmp_path / "finetuned"
    metrics = _recipe("finetune.py")["main"](
        [str(CONFIGS / "digits_finetune.yaml"), "--model_name_or_path", str(source), "--output_dir", str(out),
         "--num_epochs", "1", "--warmup_steps", "5", "--report_to", "none", "--predict_examples", "2",
         "--image_size", "24"]
    )
    printed = capsys.readouterr().out
    assert printed.count("pipeline: held-out image") == 2 and "EMA" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 24 and config["representation_size"] is None  # higher resolution, new head
    ema = ViTForImageClassification.from_pretrained(out / "ema")  # the EMA weights load as their own model
    assert ema.config.image_size == 24
    results = json.loads((out / "eval_results.json").read_text())
    assert results["test"]["accuracy"] == metrics["accuracy"] and "ema_test" in results
    assert metrics["accuracy"] > 0.3
    with pytest.raises(ValueError, match="model_name_or_path"):
        _recipe("finetune.py")["main"]([str(CONFIGS / "digits_finetune.yaml"), "--model_name_or_path", ""])


# ---------------------------------------------------------------------------------------------------------------------
# Configs


def _config_files():
    return sorted(p for p in CONFIGS.glob("*.yaml"))


_RECIPE_TYPES = {
    "pretrain": (ModelArguments, DataArguments, TrainArguments),
    "finetune": (FinetuneModelArguments, DataArguments, FinetuneTrainArguments),
    "pretrain_mpp": (ModelArguments, DataArguments, MaskedPatchTrainArguments, MaskedPatchArguments),
    "pretrain_mae": (ModelArguments, DataArguments, MaskedAutoencoderTrainArguments, MaskedAutoencoderArguments),
}


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: p.name)
def test_every_shipped_config_parses_and_has_a_header(path):
    header = path.read_text().split("\n\n")[0]
    for word in ("Reproduces:", "Hardware:", "Command:"):
        assert word in header, f"{path.name}: the header must say {word}"
    # `python recipes/R.py recipes/configs/C` or the multi-process `... torchrun --nproc_per_node N recipes/R.py ...`
    commands = re.findall(r"(?:python|torchrun --nproc_per_node \d+) recipes/(\w+)\.py recipes/configs/(\S+)", header)
    recipes = [recipe for recipe, named in commands if named == path.name]
    assert len(recipes) == 1, f"{path.name}: the Command: must run one recipe on this config"
    recipe = recipes[0]
    assert recipe in _RECIPE_TYPES, f"{path.name}: unknown recipe {recipe}"
    parsed = parse_recipe_args(_RECIPE_TYPES[recipe], [str(path)])
    if recipe == "finetune":
        model_args, _, train_args = parsed
        # A fine-tuning config names its checkpoint, or its command line must.
        assert model_args.model_name_or_path or "--model_name_or_path" in header
        assert train_args.optimizer == "sgd" and train_args.weight_decay == 0.0
    if recipe == "pretrain_mpp":
        assert parsed[3].mpp_target and 0 < parsed[3].mask_ratio < 1


def test_paper_configs_hold_the_papers_settings():
    _, _, pretrain = parse_recipe_args((ModelArguments, DataArguments, TrainArguments),
                                       [str(CONFIGS / "vit_b16_imagenet21k_pretrain.yaml")])
    assert (pretrain.batch_size, pretrain.learning_rate, pretrain.weight_decay, pretrain.warmup_steps) == (4096, 1e-3, 0.03, 10000)
    assert (pretrain.num_epochs, pretrain.lr_decay, pretrain.adam_beta2, pretrain.max_grad_norm) == (90, "linear", 0.999, 1.0)
    model_args, _, finetune = parse_recipe_args((FinetuneModelArguments, DataArguments, FinetuneTrainArguments),
                                                [str(CONFIGS / "vit_b16_imagenet_finetune_384.yaml")])
    assert (model_args.image_size, finetune.max_steps, finetune.batch_size, finetune.ema_decay) == (384, 20000, 512, 0.9999)
    assert (finetune.momentum, finetune.lr_decay, finetune.learning_rate) == (0.9, "cosine", 0.03)
    _, _, cifar = parse_recipe_args((FinetuneModelArguments, DataArguments, FinetuneTrainArguments),
                                    [str(CONFIGS / "vit_b16_cifar10_finetune.yaml")])
    assert (cifar.max_steps, cifar.batch_size) == (10000, 512)


def test_yaml_then_command_line():
    model_args, data_args, train_args = parse_recipe_args(
        (ModelArguments, DataArguments, TrainArguments), [DIGITS_YAML, "--learning_rate", "0.01", "--hidden_size", "32"]
    )
    assert train_args.learning_rate == 0.01 and model_args.hidden_size == 32  # command line wins
    assert model_args.num_hidden_layers == 4 and data_args.dataset == "digits"  # from the YAML


def test_architecture_fields_from_the_command_line_reach_the_model():
    model_args, _, _ = parse_recipe_args(
        (ModelArguments, DataArguments, TrainArguments), [DIGITS_YAML, "--hidden_act", "gelu", "--hidden_size", "48"]
    )
    labels = label_fields([str(i) for i in range(10)])
    model = build_model(model_args, ViTForImageClassification, labels)
    assert (model.config.hidden_act, model.config.hidden_size) == ("gelu", 48)
    assert model.config.model_type == "hf_vit"
    model_args.hidden_act = "gleu"
    with pytest.raises(ValueError, match="`hidden_act` 'gleu' is unknown"):
        build_model(model_args, ViTForImageClassification, labels)


def test_unknown_yaml_key_names_the_key_and_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown argument\(s\) \['learning_rat'\]"):
        parse_recipe_args((ModelArguments, DataArguments, TrainArguments), [str(config)])


# ---------------------------------------------------------------------------------------------------------------------
# Accelerate launch configs (cannot run here: validated by Accelerate's own loader and launcher checks)


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid_for_accelerate(path, monkeypatch):
    """Each config goes through what `accelerate launch --config_file` does before it starts processes: the config
    loader, the launcher's checks, the environment it sets; the FSDP / DeepSpeed plugin is then built from that
    environment as the Accelerator in each process builds it (tests/test_fsdp.py runs the FSDP config on CPU)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    config = load_config_from_file(str(path))  # rejects unknown keys and unknown distributed types
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
    args = launch_command_parser().parse_args(["--config_file", str(path), "recipes/pretrain.py"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    if config.distributed_type == "FSDP":
        import hf_vit.modeling_hf_vit as modeling
        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
        from torch.distributed.fsdp import StateDictType

        env = prepare_multi_gpu_env(args)
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        for name in env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(","):
            assert hasattr(modeling, name), f"FSDP wraps {name}, which hf_vit does not define"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT and plugin.cpu_ram_efficient_loading
        # The wrap policy resolves against an hf_vit model and shards exactly its transformer blocks.
        model = build_model(ModelArguments(variant="Ti/16", image_size=32, patch_size=8, num_hidden_layers=3),
                            ViTForImageClassification)
        wrap_type = "transformer" if plugin.auto_wrap_policy is transformer_auto_wrap_policy else None
        plugin.set_auto_wrap_policy(model)
        if "auto_wrap_policy_type" in inspect.signature(fsdp2_prepare_auto_wrap_policy).parameters:
            policy = fsdp2_prepare_auto_wrap_policy(plugin, wrap_type, model)  # accelerate 1.6 takes the type
        else:
            policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        assert [name for name, module in model.named_modules() if policy(module)] == [
            f"vit.encoder.layers.{i}" for i in range(3)]
    if config.distributed_type == "DEEPSPEED":
        from accelerate.utils import DeepSpeedPlugin

        args.deepspeed_fields_from_accelerate_config = ",".join(
            [*defaults.deepspeed_config, *(["mixed_precision"] if precision_from_config else [])])
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plugin = DeepSpeedPlugin()  # the DeepSpeed configuration Accelerate hands to deepspeed.initialize
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
        assert plugin.deepspeed_config["gradient_clipping"] == 1.0  # the paper's clip norm (the loop's is bypassed)
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == 1  # the loop must not accumulate either


@pytest.mark.recipes
def test_finetune_from_a_transformers_vit_checkpoint(tmp_path, capsys):
    from transformers import ViTConfig as TransformersViTConfig
    from transformers import ViTForImageClassification as TransformersViT

    source = tmp_path / "transformers-vit"
    torch.manual_seed(0)
    TransformersViT(TransformersViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64, num_labels=3)).save_pretrained(source)
    out = tmp_path / "finetuned"
    metrics = _recipe("finetune.py")["main"](
        [str(CONFIGS / "digits_finetune.yaml"), "--model_name_or_path", str(source), "--output_dir", str(out),
         "--max_steps", "4", "--warmup_steps", "1", "--report_to", "none", "--predict_examples", "0",
         "--image_size", "24"]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hf_vit" and len(config["id2label"]) == 10 and config["image_size"] == 24
    assert metrics["num_examples"] == 360
    assert abs(_saved_model_accuracy(out) - metrics["accuracy"]) < 1e-6  # the saved model's own accuracy


# ---------------------------------------------------------------------------------------------------------------------
# --push_to_hub (the publishing itself is tested against a local Hub in tests/test_hub.py)


@pytest.mark.recipes
def test_push_to_hub_publishes_the_saved_run_folder(tmp_path, monkeypatch):
    from hf_vit.training import classification

    calls = []

    def fake_publish(run_dir, repo_id, **kwargs):
        # At publishing time the run folder is complete: the results are written and the saved model is the one
        # they describe (its test accuracy is the reported one).
        results = json.loads((Path(run_dir) / "eval_results.json").read_text())
        assert abs(_saved_model_accuracy(run_dir) - results["test"]["accuracy"]) < 1e-6
        calls.append((run_dir, repo_id, kwargs, results))

    monkeypatch.setattr(classification, "check_can_publish",
                        lambda repo_id, **kwargs: calls.append(("checked", repo_id)))
    monkeypatch.setattr(classification, "publish_run", fake_publish)
    out = tmp_path / "run"
    _recipe("pretrain.py")["main"](
        [DIGITS_YAML, "--output_dir", str(out), "--max_steps", "2", "--report_to", "none", "--predict_examples", "0",
         "--push-to-hub", "someone/vit-digits", "--hub_private", "--hub_revision", "v1"])
    assert calls[0] == ("checked", "someone/vit-digits")
    run_dir, repo_id, kwargs, results = calls[1]
    assert (run_dir, repo_id) == (str(out), "someone/vit-digits")
    assert kwargs["private"] is True and kwargs["revision"] == "v1" and kwargs["create_pr"] is False
    assert results["global_step"] == 2


@pytest.mark.recipes
def test_push_to_hub_is_checked_before_training_and_a_failure_keeps_the_run(tmp_path, monkeypatch, capsys):
    from hf_vit.hub import HubPublishError
    from hf_vit.training import classification

    out = tmp_path / "run"
    args = [DIGITS_YAML, "--output_dir", str(out), "--max_steps", "2", "--report_to", "none", "--predict_examples", "0"]
    with pytest.raises(ValueError, match="not a valid Hub repository id"):
        _recipe("pretrain.py")["main"](args + ["--push_to_hub", "not a repo id"])
    assert not out.exists()  # nothing was trained

    monkeypatch.setattr(classification, "check_can_publish", lambda repo_id, **kwargs: None)

    def failing_publish(run_dir, repo_id, **kwargs):
        raise HubPublishError("upload refused")

    monkeypatch.setattr(classification, "publish_run", failing_publish)
    with pytest.raises(HubPublishError, match="upload refused"):
        _recipe("pretrain.py")["main"](args + ["--push_to_hub", "someone/vit-digits"])
    assert "push_to_hub failed" in capsys.readouterr().out
    results = json.loads((out / "eval_results.json").read_text())  # the run is saved all the same
    assert results["global_step"] == 2 and abs(_saved_model_accuracy(out) - results["test"]["accuracy"]) < 1e-6


def test_masked_patch_recipe_refuses_push_to_hub(tmp_path):
    from hf_vit.training.mpp import run_masked_patch_prediction

    with pytest.raises(ValueError, match="push_to_hub"):
        run_masked_patch_prediction(None, None, MaskedPatchTrainArguments(push_to_hub="someone/mpp"), None)


@pytest.mark.recipes
def test_flip_test_time_augmentation_is_reported_beside_the_single_view(tmp_path):
    from hf_vit.evaluation.metrics import classification_metrics
    from hf_vit.evaluation.tta import classify
    from hf_vit.data import load_image_classification_data
    from hf_vit.hub.cards import render_model_card
    from tests.test_data import make_image_folder

    photos = make_image_folder(tmp_path / "photos", per_class=10)
    out = tmp_path / "run"
    argv = [DIGITS_YAML, "--dataset", str(photos), "--output_dir", str(out), "--max_steps", "3", "--report_to", "none",
            "--predict_examples", "0", "--test_time_augmentation", "flip", "--batch_size", "8", "--fewshot_every_steps", "-1"]
    metrics = _recipe("pretrain.py")["main"](argv)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["test"] == metrics and "test_single_view" in results
    # Both figures are the saved model's, recomputed here on the run's own test split.
    _, data_args, _ = parse_recipe_args((ModelArguments, DataArguments, TrainArguments), argv)
    test = load_image_classification_data(data_args).test
    model = ViTForImageClassification.from_pretrained(out).eval()
    batch = ImageClassificationCollator(ViTImageProcessor.from_pretrained(out))(list(test))
    with torch.no_grad():
        for key, views in (("test", "flip"), ("test_single_view", "none")):
            expected = classification_metrics(classify(model, batch["pixel_values"], views), batch["labels"])
            assert results[key]["accuracy"] == pytest.approx(expected["accuracy"])
            assert results[key]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert results["test"]["loss"] != pytest.approx(results["test_single_view"]["loss"], rel=1e-4)
    card = render_model_card(out, "someone/vit-photos").content
    assert "with flip test-time augmentation (one view: " in card


def test_flip_test_time_augmentation_is_refused_for_digits_before_training(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="a mirrored digit is another digit"):
        _recipe("pretrain.py")["main"]([DIGITS_YAML, "--output_dir", str(out), "--max_steps", "2", "--report_to",
                                        "none", "--test_time_augmentation", "flip"])
    assert not (out / "checkpoints").exists()


@pytest.mark.recipes
def test_cached_decoded_images_train_the_same_model(tmp_path, capsys):
    from safetensors.torch import load_file

    weights = {}
    for cache in ("false", "true"):
        out = tmp_path / f"cache-{cache}"
        _recipe("pretrain.py")["main"]([DIGITS_YAML, "--output_dir", str(out), "--max_steps", "4", "--report_to",
                                        "none", "--predict_examples", "0", "--fewshot_every_steps", "-1",
                                        "--cache_decoded_images", cache])
        weights[cache] = load_file(out / "model.safetensors")
    assert "decoded 1293 training images into memory" in capsys.readouterr().out
    assert weights["true"].keys() == weights["false"].keys()
    for name, tensor in weights["false"].items():
        assert torch.equal(weights["true"][name], tensor), name
