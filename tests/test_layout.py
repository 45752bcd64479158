"""The package's layout contract (README, "Layout"): imports run down, options are declared once, the installed wheel
works from anywhere."""

import ast
import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_vit import ViTConfig, ViTForImageClassification, ViTImageProcessor
from hf_vit.cli import build_parser
from hf_vit.data import DataArguments
from hf_vit.hub import PublishOptions, PushArguments
from hf_vit.training import ModelArguments, TrainArguments, parse_recipe_args
from hf_vit.training.arguments import ARCHITECTURE_FIELDS
from hf_vit.training.mpp import MaskedPatchTrainArguments


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "hf_vit"


def _imported_modules(path: Path):
    """(line, absolute module name) of every import in a file of the package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield node.lineno, ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


@pytest.mark.parametrize("folder", ["data", "hub", "evaluation", "analysis", "conversion"])
def test_imports_only_run_down(folder):
    upward = [f"{path.relative_to(PACKAGE)}:{line} imports {module}"
              for path in sorted((PACKAGE / folder).rglob("*.py"))
              for line, module in _imported_modules(path)
              if module == "hf_vit.training" or module.startswith("hf_vit.training.")]
    assert not upward, upward


def test_the_remote_code_unit_imports_only_its_siblings():
    flat = [p for p in PACKAGE.glob("*.py") if p.name.startswith(("configuration_", "modeling_", "image_processing_",
                                                                    "transformers_vit_format"))]
    assert len(flat) == 5
    names = {p.stem for p in flat}
    for path in flat:
        for line, module in _imported_modules(path):
            if module.startswith("hf_vit"):
                assert module.split(".")[1] in names and module.count(".") == 1, f"{path.name}:{line} imports {module}"


def test_model_arguments_are_derived_from_vit_config():
    parameters = set(inspect.signature(ViTConfig.__init__).parameters) - {"self", "kwargs"}
    fields = {f.name: f for f in dataclasses.fields(ModelArguments)}
    # Every architecture field of the config is a recipe option (the ones left out are set by the recipes).
    recipe_set = {"mpp_target", "head_zero_init", "initializer_range", "mask_ratio", "norm_pix_loss", "image_mean",
                  "image_std"}
    assert parameters - set(fields) == recipe_set
    assert set(ARCHITECTURE_FIELDS) == parameters - recipe_set
    # ... typed from the config's docstring, so the command line converts values as the config expects them.
    model_args, _, _ = parse_recipe_args(
        (ModelArguments, DataArguments, TrainArguments),
        ["--variant", "Ti/4", "--image_size", "16", "--hidden_size", "32", "--num_hidden_layers", "1",
         "--num_attention_heads", "2", "--intermediate_size", "64", "--qkv_bias", "false", "--layer_norm_eps", "1e-5",
         "--position_embedding_type", "sincos_2d", "--backbone_depths", "1", "--backbone_width_factor", "0.5",
         "--backbone_num_groups", "8", "--patch_size", "1"],
    )
    overrides = model_args.config_overrides()
    assert overrides["qkv_bias"] is False and overrides["layer_norm_eps"] == 1e-5
    assert overrides["backbone_depths"] == [1] and overrides["backbone_width_factor"] == 0.5
    model = ViTForImageClassification(ViTConfig.from_variant(model_args.variant, **overrides))
    assert model.config.is_hybrid and model.vit.encoder.layers[0].attention.qkv.bias is None


def test_publishing_options_are_declared_once():
    names = [f.name for f in dataclasses.fields(PublishOptions)]
    push_fields = {f.name for f in dataclasses.fields(PushArguments)}
    assert set(names) <= push_fields
    for schema in (TrainArguments, MaskedPatchTrainArguments):
        train_fields = {f.name: f for f in dataclasses.fields(schema)}
        for name in names:
            assert f"hub_{name}" in train_fields
            assert train_fields[f"hub_{name}"].default == PublishOptions.__dataclass_fields__[name].default
    # `hf-vit push` builds its flags from PushArguments: every field, both spellings.
    for spelling in ("--dry-run", "--dry_run"):
        args = build_parser().parse_args(["push", "run", "you/model", spelling, "--create_pr", "--card-data", "c.yaml"])
        assert (args.dry_run, args.create_pr, args.card_data, args.run_dir) == (True, True, "c.yaml", "run")
    parsed = build_parser().parse_args(["push", "run", "you/model"])
    assert {name for name in push_fields if hasattr(parsed, name)} == push_fields
    # publish_run takes exactly these options: another keyword is refused by the dataclass, naming it.
    from hf_vit.hub import publish_run

    with pytest.raises(TypeError, match="private_repo"):
        publish_run("run", "you/model", private_repo=True)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """hf_vit built as a wheel and installed, without its dependencies, into a folder of its own."""
    from importlib.metadata import PackageNotFoundError, version

    scratch = tmp_path_factory.mktemp("wheel")
    try:  # the build needs setuptools >= 77 (pyproject's build-system): use the installed one when it is that new,
        recent = int(version("setuptools").split(".")[0]) >= 77  # else pip fetches one into an isolated build
    except PackageNotFoundError:
        recent = False
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", *(["--no-build-isolation"] if recent else []),
             "-q", "-w", str(scratch), str(ROOT)]
    done = subprocess.run(build, capture_output=True, text=True, cwd=scratch)
    assert done.returncode == 0, done.stderr
    (wheel,) = scratch.glob("hf_vit-*.whl")
    target = scratch / "installed"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, cwd=scratch)
    assert done.returncode == 0, done.stderr
    return target


def test_the_installed_wheel_renders_cards_and_dry_runs_a_push(installed_wheel, tmp_path):
    torch = pytest.importorskip("torch")
    run_dir = tmp_path / "run"
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=10, id2label={i: str(i) for i in range(10)})
    ViTForImageClassification(config).save_pretrained(run_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(run_dir)
    (run_dir / "eval_results.json").write_text(json.dumps({"dataset": "digits", "test": {"accuracy": 0.5}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed_wheel), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import hf_vit; print(hf_vit.__file__)"], capture_output=True,
                           text=True, cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(str(installed_wheel))  # the installed copy, not the checkout
    command = str(installed_wheel / "bin" / "hf-vit")

    card = subprocess.run([sys.executable, command, "card", str(run_dir), "--repo-id", "you/vit-digits"],
                          capture_output=True, text=True, cwd=elsewhere, env=env)
    assert card.returncode == 0, card.stderr
    # The shipped digits card data was found (its data set description) and the template rendered.
    assert "scikit-learn" in card.stdout and "# vit-digits" in card.stdout and "50.00%" in card.stdout

    push = subprocess.run([sys.executable, command, "push", str(run_dir), "you/vit-digits", "--dry-run"],
                          capture_output=True, text=True, cwd=elsewhere, env=env)
    assert push.returncode == 0, push.stderr
    assert "dry run: nothing is sent" in push.stdout and "loads without hf_vit" in push.stdout
    assert "README.md" in push.stdout and "pipeline top label" in push.stdout
