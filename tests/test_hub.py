"""Hub publishing: model cards, assembling and validating the repository, and pushes to a loopback Hub server."""

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from hf_vit import ViTConfig, ViTForImageClassification, ViTImageProcessor
from hf_vit.hub import (
    HubPublishError,
    assemble_repository,
    check_model_card,
    load_card_data,
    publish_run,
    render_model_card,
    upload_repository,
)

from .common import TINY
from .hub_server import FakeHub


ROOT = Path(__file__).resolve().parents[1]
LABELS = {0: "cat", 1: "dog", 2: "bird"}
# A fresh token per session: nothing can contain it by accident.
TOKEN = "hf_" + secrets.token_hex(20)
# eval_results.json as the training loop writes it: few-shot results inside the split they were measured on.
RESULTS = {
    "dataset": "digits", "global_step": 400, "train_seconds": 61.5, "images_per_second": 420.0,
    "validation": {"accuracy": 0.95, "top5_accuracy": 1.0, "loss": 0.25, "num_examples": 144,
                   "fewshot/5shot_accuracy": 0.71, "fewshot/5shot_l2": 1.0,
                   "fewshot/10shot_accuracy": 0.8, "fewshot/10shot_l2": 0.1},
    "test": {"accuracy": 0.9611, "top5_accuracy": 0.9972, "loss": 0.2, "num_examples": 360,
             "confusion_matrix": [[1, 0], [0, 1]]},
    "ema_test": {"accuracy": 0.9639, "top5_accuracy": 1.0, "loss": 0.19, "num_examples": 360},
    "num_parameters": 12345, "skipped_images": 0, "total_seconds": 70.0,
}


def _save_model(folder, seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(**{**TINY, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}, "head_zero_init": False})
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def _make_run(folder: Path, *, run_args=None, results=RESULTS, ema=True, extras=True) -> Path:
    """A run folder as the recipes write it: model + processor + run_args.json + eval_results.json (+ EMA, resume
    state, logs and a stray file that must not be published)."""
    _save_model(folder)
    if run_args is not False:
        args = {"output_dir": str(folder.resolve()), "dataset": "digits", "model_name_or_path": None,
                "optimizer": "adamw", "learning_rate": 0.001, "weight_decay": 0.1, "adam_beta1": 0.9,
                "adam_beta2": 0.999, "momentum": 0.9, "batch_size": 64, "num_epochs": 3.0, "max_steps": 0,
                "warmup_steps": 0, "warmup_ratio": 0.1, "lr_decay": "linear", "max_grad_norm": 1.0, "seed": 0,
                "test_fraction": 0.2, "validation_fraction": 0.1, "split_seed": 0, "mixed_precision": "no",
                "report_to": "tensorboard", "logging_dir": str((folder / "logs").resolve())}
        (folder / "run_args.json").write_text(json.dumps({**args, **(run_args or {})}, indent=2))
    if results is not None:
        (folder / "eval_results.json").write_text(json.dumps(results, indent=2))
    if ema:
        _save_model(folder / "ema", seed=1)
    if extras:
        (folder / "checkpoints" / "step_400").mkdir(parents=True)
        (folder / "checkpoints" / "step_400" / "optimizer.bin").write_bytes(b"\x00" * 128)
        (folder / "logs").mkdir()
        (folder / "logs" / "events.out.tfevents.1").write_bytes(b"tensorboard")
        (folder / "notes.txt").write_text("scratch notes")
    return folder


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("runs") / "digits-run")


# ---------------------------------------------------------------------------------------------------------------------
# Cards


def test_card_metadata_model_index_and_sections(run_dir):
    text = render_model_card(run_dir, "tester/vit-tiny").content
    card = ModelCard(text)  # huggingface_hub's own (strict) parsing
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0" and "hf_vit" in data.tags and data.base_model is None
    results = {(r.metric_name, r.dataset_split): r.metric_value for r in data.eval_results}
    assert results == {("Top-1 accuracy", "test"): 0.9611, ("Top-5 accuracy", "test"): 0.9972,
                       ("5-shot linear accuracy", "validation"): 0.71, ("10-shot linear accuracy", "validation"): 0.8}
    assert {r.dataset_type for r in data.eval_results} == {"sklearn-digits"}  # from model_cards/digits.yaml
    for section in ("## Model details", "## Intended uses and limitations", "## How to use", "## Training data",
                    "## Training procedure", "## Evaluation", "## Hardware and training time", "## Citation"):
        assert section in card.text, section
    assert "@inproceedings{dosovitskiy2021image" in card.text and "trust_remote_code=True" in card.text
    assert 'subfolder="ema"' in card.text  # the run has EMA weights
    assert "| test | 360 | 96.11% | 99.72% | 0.2000 |" in card.text and "| EMA test | 360 | 96.39% |" in card.text
    assert "| 10 | validation | 80.00% |" in card.text
    assert "| peak learning rate | 0.001 |" in card.text and "SGD momentum" not in card.text  # adamw run
    assert "1.0 min (62 s) for 400 optimiser steps, 420 images/s" in card.text
    assert "- Precision: float32" in card.text  # run_args.json's "no"
    assert "sklearn.datasets.load_digits" in card.text  # the data set's prose from model_cards/digits.yaml
    # No local absolute path (run_args.json holds output_dir and logging_dir as absolute paths).
    assert str(run_dir.resolve().parent) not in text and os.path.expanduser("~") not in text
    assert check_model_card(text, forbidden=(str(run_dir.resolve()),)) == []


def test_card_states_the_precision_that_ran_not_auto(tmp_path):
    results = {**RESULTS, "mixed_precision": "bf16"}  # `mixed_precision: auto` resolved on a CPU with bf16
    card = render_model_card(_make_run(tmp_path / "auto", run_args={"mixed_precision": "auto"}, results=results,
                                       ema=False, extras=False), "tester/vit-tiny").content
    assert "- Precision: bf16 mixed precision" in card and "auto mixed precision" not in card
    older = render_model_card(_make_run(tmp_path / "older", run_args={"mixed_precision": "auto"}, ema=False,
                                        extras=False), "tester/vit-tiny").content
    assert "- Precision:" not in older  # not recorded which: no line rather than a wrong one


def test_few_shot_results_in_either_form():
    from hf_vit.hub.cards import collect_few_shot

    assert collect_few_shot({"few_shot": {"5": 0.7, "10shot": {"accuracy": 0.8}, "notes": "x"}}) == [
        (5, 0.7, None), (10, 0.8, None)]
    assert collect_few_shot({"validation": {"accuracy": 0.9, "fewshot/25shot_accuracy": 0.85, "fewshot/25shot_l2": 1.0},
                             "fewshot/1shot_accuracy": 0.3}) == [(1, 0.3, None), (25, 0.85, "validation")]
    assert collect_few_shot({"test": {"accuracy": 0.9}}) == []


def test_card_of_a_plain_model_folder_says_what_is_unknown(tmp_path):
    _save_model(tmp_path / "plain")
    text = render_model_card(tmp_path / "plain", "tester/plain").content
    card = ModelCard(text)
    assert card.data.eval_results is None and "model-index" not in text
    assert "records neither its training run nor an evaluation" in card.text
    assert "Unknown: the folder this model was published from has no run_args.json." in card.text
    assert "Unknown: the folder this model was published from has no evaluation results" in card.text
    assert 'subfolder="ema"' not in card.text
    assert check_model_card(text) == []


@pytest.mark.parametrize("start, base_model, shown", [
    ("google/vit-base-patch16-224", "google/vit-base-patch16-224", "fine-tuned from [google/vit-base-patch16-224]"),
    ("/data/checkpoints/pretrained-b16", None, "fine-tuned from a local checkpoint (`pretrained-b16`, not on the Hub)"),
])
def test_card_names_the_base_model_only_when_it_is_on_the_hub(tmp_path, start, base_model, shown):
    run = _make_run(tmp_path / "ft", run_args={"model_name_or_path": start}, ema=False, extras=False)
    text = render_model_card(run, "tester/ft").content
    assert ModelCard(text).data.base_model == base_model
    assert shown in text and "/data/checkpoints" not in text


def test_card_data_file_sets_datasets_and_unknown_keys_are_named(tmp_path, run_dir):
    good = tmp_path / "mine.yaml"
    good.write_text("dataset:\n  name: Fashion-MNIST\n  type: zalando-datasets/fashion_mnist\n"
                    "  hub_ids: [zalando-datasets/fashion_mnist]\nlicense: mit\ntags: [fashion]\n")
    data = ModelCard(render_model_card(run_dir, "tester/x", card_data=good).content).data
    assert data.datasets == ["zalando-datasets/fashion_mnist"] and data.license == "mit" and "fashion" in data.tags
    bad = tmp_path / "bad.yaml"
    bad.write_text("licence: mit\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown card field\(s\) \['licence'\]; allowed are"):
        load_card_data(bad)


def test_card_check_catches_what_the_hub_would_reject(run_dir):
    text = render_model_card(run_dir, "tester/vit-tiny").content
    assert check_model_card(text) == []
    assert any("license" in p for p in check_model_card(text.replace("license: apache-2.0", "license: Apache 2.0")))
    assert any("pipeline_tag" in p for p in check_model_card(
        text.replace("pipeline_tag: image-classification", "pipeline_tag: text-generation")))
    assert any("not an accuracy" in p for p in check_model_card(text.replace("value: 0.9611", "value: 96.11")))
    assert any("does not parse" in p for p in check_model_card(text.replace("model-index:", "model-index: [", 1)))
    assert any("forbidden" in p for p in check_model_card(text + "\nhf_leaked", forbidden=("hf_leaked",)))


# ---------------------------------------------------------------------------------------------------------------------
# Assembling and validating


def test_assemble_publishes_the_model_not_the_run_state(run_dir, tmp_path):
    before = _digest(run_dir)
    files, skipped, card = assemble_repository(run_dir, tmp_path / "stage", "tester/vit-tiny")
    stage = tmp_path / "stage"
    code = ["configuration_hf_vit.py", "image_processing_hf_vit.py", "modeling_hf_vit.py"]
    expected = {"README.md", "config.json", "preprocessor_config.json", "model.safetensors", "eval_results.json",
                "run_args.json", "ema/config.json", "ema/preprocessor_config.json", "ema/model.safetensors"}
    staged = {f.path_in_repo for f in files}
    assert expected <= staged and all(name in staged and f"ema/{name}" in staged for name in code)
    assert not any(p.startswith(("checkpoints", "logs", "notes")) for p in staged)
    assert set(skipped) == {"checkpoints/", "logs/", "notes.txt"} and "resume state" in skipped["checkpoints/"]
    assert {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()} == staged
    for name in ["model.safetensors", "config.json", "ema/model.safetensors"] + code:
        assert (stage / name).read_bytes() == (run_dir / name).read_bytes(), name
    for name in code:  # ema/ runs the root's code (what subfolder= loading imports)
        assert (stage / "ema" / name).read_bytes() == (run_dir / name).read_bytes()
    resolved = json.loads((stage / "run_args.json").read_text())
    assert resolved["output_dir"] == "digits-run" and resolved["logging_dir"] == "logs"  # paths reduced
    assert (stage / "README.md").read_text() == card
    assert _digest(run_dir) == before  # the run folder is only read
    with pytest.raises(ValueError, match="not empty"):
        assemble_repository(run_dir, stage, "tester/vit-tiny")
    with pytest.raises(ValueError, match="outside the run folder"):
        assemble_repository(run_dir, run_dir / "repo", "tester/vit-tiny")


def test_validation_fails_when_the_repository_needs_hf_vit(run_dir, tmp_path):
    from hf_vit.hub import validate_repository

    stage = tmp_path / "stage"
    assemble_repository(run_dir, stage, "tester/vit-tiny")
    shutil.rmtree(stage / "ema")
    modeling = stage / "modeling_hf_vit.py"
    modeling.write_text("import hf_vit.training  # an absolute import: works here, fails for users\n" + modeling.read_text())
    with pytest.raises(ValueError, match="does not load where hf_vit is not installed"):
        validate_repository(stage)
    assert "import hf_vit.training" not in (run_dir / "modeling_hf_vit.py").read_text()  # the stage is a copy


def test_dry_run_prints_files_and_card_and_sends_nothing(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)  # no token needed; HF_HUB_OFFLINE=1 stays set: any request fails
    result = publish_run(run_dir, "tester/vit-tiny", dry_run=True)
    printed = capsys.readouterr().out
    assert result.dry_run and result.commit_url is None
    assert "dry run: nothing is sent" in printed and "not uploaded: checkpoints/" in printed
    assert "model.safetensors" in printed and "ema/model.safetensors" in printed
    assert result.card in printed and "pipeline_tag: image-classification" in printed
    assert set(result.validation) == {".", "ema"}
    assert all(v["max_abs_logit_diff"] <= 1e-5 for v in result.validation.values())


# ---------------------------------------------------------------------------------------------------------------------
# Pushing to the loopback Hub


_LOAD_BACK = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HideHfVit(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_vit" or name.startswith("hf_vit."):
                raise ImportError("hf_vit is hidden in this interpreter")

    sys.meta_path.insert(0, HideHfVit())
    import torch, transformers
    out = {}
    for subfolder in ("", "ema"):
        model = transformers.AutoModelForImageClassification.from_pretrained(
            "tester/vit-tiny", subfolder=subfolder, trust_remote_code=True).eval()
        torch.manual_seed(0)
        with torch.no_grad():
            out[subfolder or "main"] = {"module": type(model).__module__,
                                        "logits": model(torch.rand(2, 3, 32, 32)).logits.tolist()}
    print(json.dumps(out))
    """
)


def _push_env(hub, tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": "",
                "HF_HUB_DISABLE_TELEMETRY": "1", **extra})
    return env


def test_push_end_to_end_then_load_back_without_hf_vit(run_dir, tmp_path):
    before = _digest(run_dir)
    with FakeHub(token=TOKEN) as hub:
        done = subprocess.run(
            [sys.executable, str(ROOT / "recipes" / "push_to_hub.py"), "--run_dir", str(run_dir),
             "--repo_id", "tester/vit-tiny", "--stage_dir", str(tmp_path / "stage")],
            capture_output=True, text=True, env=_push_env(hub, tmp_path, HF_TOKEN=TOKEN), cwd=tmp_path, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        remote = hub.files("tester/vit-tiny")
        repo = hub.repos["tester/vit-tiny"]
        # Byte-identical: every assembled file, and the run's own weights and code.
        stage = tmp_path / "stage"
        for path in stage.rglob("*"):
            if path.is_file():
                assert remote[path.relative_to(stage).as_posix()] == path.read_bytes(), path.name
        for name in ("model.safetensors", "ema/model.safetensors", "config.json", "modeling_hf_vit.py"):
            assert remote[name] == (run_dir / name).read_bytes(), name
        assert not any(p.startswith(("checkpoints/", "logs/", "notes")) for p in remote)
        assert not repo.private and ModelCard(remote["README.md"].decode()).data.eval_results[0].metric_value == 0.9611
        assert ("POST", "/api/validate-yaml") in hub.requests  # the Hub's own card check ran before the commit

        # Loading it back from the Hub, where hf_vit is not installed: main weights and the EMA subfolder.
        loaded = subprocess.run(
            [sys.executable, "-c", _LOAD_BACK], capture_output=True, text=True, cwd=tmp_path, timeout=300,
            env=_push_env(hub, tmp_path, HF_HOME=str(tmp_path / "hf_home_user"),
                          HF_MODULES_CACHE=str(tmp_path / "modules")),
        )
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        back = json.loads(loaded.stdout.strip().splitlines()[-1])
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32)
    for key, folder in (("main", run_dir), ("ema", run_dir / "ema")):
        assert back[key]["module"].startswith("transformers_modules")
        with torch.no_grad():
            expected = ViTForImageClassification.from_pretrained(folder).eval()(pixels).logits
        torch.testing.assert_close(torch.tensor(back[key]["logits"]), expected, atol=1e-5, rtol=1e-5)
    assert _digest(run_dir) == before

    # The token is nowhere: not in the output, the run folder, the stage, the caches, or the repository.
    assert TOKEN not in done.stdout + done.stderr + loaded.stdout + loaded.stderr
    for folder in (run_dir, tmp_path):
        for path in folder.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path
    assert all(TOKEN.encode() not in data for data in remote.values())


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A loopback Hub for pushes from this process: endpoint patched, offline mode lifted, token in the env only."""
    from huggingface_hub import constants

    with FakeHub(token=TOKEN) as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_login_cache" / "token"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def test_second_push_updates_pr_branch_and_private(run_dir, tmp_path, hub):
    stage = tmp_path / "stage"
    assemble_repository(run_dir, stage, "tester/vit-tiny")
    first = upload_repository(stage, "tester/vit-tiny", private=True, commit_message="first")
    repo = hub.repos["tester/vit-tiny"]
    assert repo.private and repo.refs["main"] == first.oid

    (stage / "README.md").write_text((stage / "README.md").read_text() + "\nUpdated.\n")
    second = upload_repository(stage, "tester/vit-tiny", commit_message="second")
    assert second.oid != first.oid and repo.refs["main"] == second.oid
    assert repo.commits[second.oid].parent == first.oid and repo.commits[second.oid].message == "second"
    assert hub.files("tester/vit-tiny")["README.md"].endswith(b"Updated.\n")
    assert hub.files("tester/vit-tiny")["model.safetensors"] == (run_dir / "model.safetensors").read_bytes()

    (stage / "README.md").write_text((stage / "README.md").read_text() + "\nProposed.\n")
    pr = upload_repository(stage, "tester/vit-tiny", create_pr=True, commit_message="proposal")
    assert pr.pr_url.endswith("/discussions/1") and repo.refs["refs/pr/1"] == pr.oid
    assert repo.refs["main"] == second.oid  # a pull request leaves main alone
    assert hub.files("tester/vit-tiny", "refs/pr/1")["README.md"].endswith(b"Proposed.\n")

    on_branch = upload_repository(stage, "tester/vit-tiny", revision="experiment", commit_message="branch")
    assert repo.refs["experiment"] == on_branch.oid and repo.refs["main"] == second.oid
    with pytest.raises(ValueError, match="pull request against main"):
        publish_run(run_dir, "tester/vit-tiny", create_pr=True, revision="experiment")


def test_dropped_connection_is_a_clear_error_and_changes_nothing(run_dir, tmp_path, hub):
    stage = tmp_path / "stage"
    assemble_repository(run_dir, stage, "tester/vit-tiny")
    first = upload_repository(stage, "tester/vit-tiny", commit_message="first")
    before_run = _digest(run_dir)
    (stage / "README.md").write_text("---\nlicense: apache-2.0\n---\nchanged\n")
    before_stage = _digest(stage)
    hub.drop_next_commit = True
    with pytest.raises(HubPublishError) as failure:
        upload_repository(stage, "tester/vit-tiny", commit_message="dropped")
    message = str(failure.value)
    assert "failed while uploading and committing the files" in message and "RemoteProtocolError" in message
    assert "Nothing in the local folder was changed" in message and TOKEN not in message
    assert hub.repos["tester/vit-tiny"].refs["main"] == first.oid  # nothing half-committed
    assert _digest(run_dir) == before_run and _digest(stage) == before_stage


def test_no_token_is_a_clear_error_before_any_work(run_dir, hub, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubPublishError, match="No Hugging Face token: set the HF_TOKEN environment variable"):
        publish_run(run_dir, "tester/vit-tiny")
    assert hub.requests == [] and capsys.readouterr().out == ""


def test_card_command_writes_the_card(run_dir, tmp_path):
    from hf_vit.cli import main

    assert main(["card", str(run_dir), "--repo-id", "tester/vit-tiny", "-o", str(tmp_path / "README.md")]) == 0
    assert (tmp_path / "README.md").read_text() == render_model_card(run_dir, "tester/vit-tiny").content
    assert main(["card", str(tmp_path / "missing"), "--repo-id", "tester/vit-tiny"]) == 2
