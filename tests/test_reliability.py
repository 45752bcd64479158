"""Nothing lost, every mistake answered in one clear line: the fault and bad-input cases hf_vit was put through, kept
as tests (the kill-and-resume equality is tests/test_resume.py's). Each user error: a message naming the file or
field, exit code 2, no traceback (unless --debug)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_vit import ViTConfig, ViTForImageClassification, ViTImageProcessor
from hf_vit.cli import main as hf_vit_main
from hf_vit.training.checkpoint import (
    TrainerState,
    claim_output_dir,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
)

from .test_data import make_image_folder


ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = """
dataset: digits
variant: Ti/4
image_size: 16
hidden_size: 32
num_hidden_layers: 2
num_attention_heads: 2
intermediate_size: 64
batch_size: 32
learning_rate: 0.003
warmup_steps: 2
report_to: none
predict_examples: 0
fewshot_every_steps: -1
"""


def _recipe(args, timeout=300, background=False):
    """recipes/pretrain.py with `args`: finished (a CompletedProcess), or started in the background (a Popen)."""
    command = [sys.executable, str(ROOT / "recipes" / "pretrain.py"), *map(str, args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    if background:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _one_clear_error(done, *fragments):
    """A user error: exit code 2, the message on stderr, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if ": error: " in line]
    assert len(errors) == 1, done.stderr[-3000:]
    message = "\n".join(lines[errors[0]:])  # the error line and the few lines of detail after it (e.g. a file list)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------------------------------
# 1. Data loss: a run never deletes a checkpoint it did not write


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RUN)
    return path


@pytest.mark.recipes
def test_a_fresh_run_into_another_runs_folder_is_refused_then_moves_it_aside_and_can_be_killed_and_resumed(
        config, tmp_path):
    out = tmp_path / "run"
    first = _recipe([config, "--output_dir", out, "--max_steps", 60, "--save_every_steps", 10])
    assert first.returncode == 0, first.stderr[-2000:]
    earlier = [step for step, _ in list_checkpoints(str(out))]
    assert earlier == [50, 60]
    results_before = (out / "eval_results.json").read_bytes()

    # The reproduction: the same command with another seed into the same folder. Refused, nothing touched.
    second = _recipe([config, "--output_dir", out, "--max_steps", 60, "--save_every_steps", 10, "--seed", 1])
    _one_clear_error(second, "holds an earlier run", "--resume latest", "--overwrite_output_dir")
    assert [step for step, _ in list_checkpoints(str(out))] == earlier
    assert (out / "eval_results.json").read_bytes() == results_before

    # Asked to overwrite: the earlier checkpoints are moved aside, the new run's own are kept, and a kill loses
    # nothing: it resumes from its own latest checkpoint.
    victim = _recipe([config, "--output_dir", out, "--max_steps", 60, "--save_every_steps", 10, "--seed", 1,
                      "--overwrite_output_dir"], background=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        own = [step for step, path in list_checkpoints(str(out))]
        if list(out.glob("checkpoints.replaced-*")) and own and 20 <= own[-1] < 50:
            break
        time.sleep(0.02)
    assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    aside = sorted(out.glob("checkpoints.replaced-*"))
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step-00000050", "step-00000060"]
    kept = [step for step, _ in list_checkpoints(str(out))]
    assert kept and kept[-1] >= 20 and all(step <= 40 for step in kept)  # the new run's, none pruned away
    resumed = _recipe([config, "--output_dir", out, "--max_steps", 60, "--save_every_steps", 10, "--seed", 1,
                       "--resume", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "eval_results.json").read_text())["global_step"] == 60
    assert sorted(p.name for p in aside[0].iterdir()) == ["step-00000050", "step-00000060"]  # still there


class _MainProcessOnly:
    """The parts of an Accelerator that save_checkpoint uses, for one process (the state itself is faked)."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        os.makedirs(path, exist_ok=True)
        Path(path, "model.safetensors").write_bytes(b"weights")


def _fake_checkpoint(output_dir, step, run_id):
    folder = Path(output_dir) / "checkpoints" / f"step-{step:08d}"
    folder.mkdir(parents=True)
    TrainerState(global_step=step, run_id=run_id).save(str(folder / "trainer_state.json"))


def test_pruning_keeps_other_runs_checkpoints_and_the_best_one(tmp_path):
    _fake_checkpoint(tmp_path, 500, "old-run")
    _fake_checkpoint(tmp_path, 600, "old-run")
    accelerator = _MainProcessOnly()
    best = None
    for step in (10, 20, 30, 40):
        state = TrainerState(global_step=step, run_id="new-run")
        path = save_checkpoint(accelerator, str(tmp_path), state, {}, keep_last=2, protected=(best,) if best else ())
        if step == 20:
            best = path
    steps = [step for step, _ in list_checkpoints(str(tmp_path))]
    # Pruning by step number alone would have kept 500 and 600 and deleted every new checkpoint (the reported loss).
    assert steps == [20, 30, 40, 500, 600]


def test_claiming_an_output_dir(tmp_path):
    assert claim_output_dir(str(tmp_path), "", overwrite=False)[0] is None  # empty: a fresh run
    _fake_checkpoint(tmp_path, 60, "earlier")
    with pytest.raises(ValueError, match="holds an earlier run .*checkpoints/step-00000060"):
        claim_output_dir(str(tmp_path), "", overwrite=False)
    # Resuming it is that run going on: its id is kept, nothing is moved.
    checkpoint, run_id = claim_output_dir(str(tmp_path), "latest", overwrite=False)
    assert checkpoint == resolve_resume("latest", str(tmp_path)) and run_id == "earlier"
    # A check by another process moves nothing; the main process with overwrite moves the checkpoints aside.
    claim_output_dir(str(tmp_path), "", overwrite=True, is_main_process=False)
    assert list_checkpoints(str(tmp_path))
    checkpoint, run_id = claim_output_dir(str(tmp_path), "", overwrite=True)
    assert checkpoint is None and run_id != "earlier" and not list_checkpoints(str(tmp_path))
    (aside,) = tmp_path.glob("checkpoints.replaced-*")
    assert (aside / "step-00000060" / "trainer_state.json").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# 2. One error contract: user errors are one line and exit code 2, in the CLI and the recipes


@pytest.fixture
def cli(capsys):
    """`hf-vit ARGS` in this process: (exit code, stdout, stderr) as a CompletedProcess. Every error is caught by the
    command itself (`hf_vit.cli.main`), so a traceback here would mean it escaped."""

    def run(*args):
        code = hf_vit_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "digits-vit"
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, head_zero_init=False)
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", ["predict", "info"])
def test_a_missing_model_folder_is_one_line(command, tmp_path, cli):
    args = [command, "/no/such/model"] + (["img.png"] if command == "predict" else [])
    _one_clear_error(cli(*args), "model folder /no/such/model does not exist")
    (tmp_path / "empty").mkdir()
    args[1] = tmp_path / "empty"
    _one_clear_error(cli(*args), "has no config.json")


def test_debug_shows_the_traceback():
    done = subprocess.run([sys.executable, "-m", "hf_vit.cli", "info", "/no/such/model", "--debug"],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode != 0 and "Traceback" in done.stderr and "FileNotFoundError" in done.stderr


def test_predict_classifies_every_readable_image_and_fails_at_the_end(model_dir, tmp_path, cli):
    good = tmp_path / "good.png"
    torch.manual_seed(0)
    from PIL import Image

    Image.new("RGB", (20, 20), (10, 200, 10)).save(good)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    done = cli("predict", model_dir, tmp_path / "missing.png", tmp_path / "broken.png", good, "--json")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [json.loads(line)["image"] for line in done.stdout.splitlines()] == [str(good)]
    assert "missing.png: cannot read this image" in done.stderr and "broken.png: cannot read" in done.stderr
    assert "2 of 3 image(s) could not be read" in done.stderr


def _recipe_in_this_process(args, capsys, reset_accelerate_state):
    """recipes/pretrain.py's `main` under the recipes' error contract (`run_command`), in this process: what `_recipe`
    returns (exit code and stderr) without a new interpreter's start-up (several seconds of imports)."""
    from types import SimpleNamespace

    import runpy

    from hf_vit.cli_support import run_command

    main = runpy.run_path(str(ROOT / "recipes" / "pretrain.py"))["main"]
    reset_accelerate_state()  # each run its own Accelerator, as in a new process
    capsys.readouterr()
    code = run_command(main, [str(arg) for arg in args], prog="pretrain.py")
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


@pytest.mark.recipes
def test_recipe_user_errors_are_one_line(config, tmp_path, capsys, fresh_accelerate_state):
    # As a command (the script's own `sys.exit(run_command(main))`) once; the other cases through the same contract
    # in this process.
    _one_clear_error(_recipe([config, "--learning_rat", "3"]), "unknown argument(s) ['--learning_rat']",
                     "did you mean 'learning_rate'")

    def in_process(*args):
        return _recipe_in_this_process(args, capsys, fresh_accelerate_state)

    _one_clear_error(in_process(tmp_path / "missing.yaml"), "missing.yaml")
    folder = make_image_folder(tmp_path / "photos", corrupt=("cat1.png",))
    _one_clear_error(in_process(config, "--dataset", folder, "--on_bad_image", "fail", "--output_dir", tmp_path / "o"),
                     "unreadable image(s)", "cat1.png")
    out = tmp_path / "run"
    assert in_process(config, "--output_dir", out, "--max_steps", 4, "--save_every_steps", 2).returncode == 0
    _one_clear_error(in_process(config, "--output_dir", out, "--max_steps", 4, "--resume", "latest",
                                "--learning_rate", "0.1"),
                     "Cannot resume", "learning_rate: 0.003 -> 0.1")


# ---------------------------------------------------------------------------------------------------------------------
# 5. Friction


def test_push_takes_both_spellings_and_card_titles_after_the_folder(model_dir, capsys):
    from hf_vit.cli import build_parser

    for flag in ("--dry-run", "--dry_run"):
        assert build_parser().parse_args(["push", str(model_dir), "a/b", flag]).dry_run is True
    assert build_parser().parse_args(["predict", str(model_dir), "x.png", "--top_k", "2"]).top_k == 2
    assert hf_vit_main(["card", str(model_dir)]) in (0, 1)  # 1: warnings about what the folder does not record
    card = capsys.readouterr().out
    assert "\n# digits-vit\n" in card and "your-name/digits-vit" in card and "# model\n" not in card


def test_info_counts_the_parameters_the_card_counts(model_dir, capsys):
    from hf_vit.hub.cards import read_model_folder

    assert hf_vit_main(["info", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == read_model_folder(model_dir).num_parameters  # from the safetensors headers
    assert info["encoder_parameters"] == info["parameters"] - (32 * 3 + 3)  # the classifier: 32x3 weights, 3 biases


def test_convert_overwrite_replaces_only_what_it_writes(tmp_path, cli):
    from transformers import ViTConfig as TransformersViTConfig
    from transformers import ViTForImageClassification as TransformersViT

    source = tmp_path / "transformers-vit"
    TransformersViT(TransformersViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64,
                                          num_labels=3)).save_pretrained(source)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    refused = cli("convert", source, out)
    _one_clear_error(refused, "is not empty", "--overwrite")
    done = cli("convert", source, out, "--overwrite")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "notes.txt").read_text() == "mine"  # not the conversion's: left alone
    assert json.loads((out / "config.json").read_text())["model_type"] == "hf_vit"  # the conversion's: replaced
    assert ViTForImageClassification.from_pretrained(out).config.num_labels == 3


# ---------------------------------------------------------------------------------------------------------------------
# 3-4. Misleading or missing messages, silent wrong input: library calls name the field or file


def test_model_folders_that_are_not_complete_say_what_is_wrong(model_dir, tmp_path):
    import shutil

    no_config = tmp_path / "no-config"
    no_config.mkdir()
    shutil.copy(model_dir / "model.safetensors", no_config / "model.safetensors")
    with pytest.raises(OSError, match="no-config has no config.json"):  # not a 12-layer default around the weights
        ViTForImageClassification.from_pretrained(no_config)
    for name, content in (("truncated", (model_dir / "model.safetensors").read_bytes()[:5]), ("garbage", b"x" * 64)):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(model_dir / "config.json", folder / "config.json")
        (folder / "model.safetensors").write_bytes(content)
        with pytest.raises(OSError, match=rf"{name}/model.safetensors: not readable as safetensors"):
            ViTForImageClassification.from_pretrained(folder)


@pytest.mark.parametrize("field, value, message", [
    ("num_attention_heads", 0, "`num_attention_heads` must be a positive integer, got 0"),
    ("hidden_size", "64", "`hidden_size` must be a positive integer, got '64'"),
    ("patch_size", 0, "`patch_size` must be a positive integer, got 0"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**{field: value})


def test_inputs_the_model_cannot_take_are_refused_by_name(model_dir):
    model = ViTForImageClassification.from_pretrained(model_dir).eval()
    with pytest.raises(ValueError, match="holds no images"):
        model(torch.zeros(0, 3, 16, 16))
    with pytest.raises(ValueError, match=r"`pixel_values` are torch.uint8 \(raw pixels\?\).*ViTImageProcessor"):
        model(torch.full((1, 3, 16, 16), 200, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\) tensor, got \(3, 16, 16\)"):
        model(torch.zeros(3, 16, 16))
    assert model(torch.zeros(1, 3, 16, 16)).logits.shape == (1, 3)  # the processor's floats work
