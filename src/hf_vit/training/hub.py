"""Publishing a trained hf_vit model to the Hugging Face Hub: assemble, validate offline, then upload.

A run folder (what `hf_vit.training.run.save_run` writes) or any hf_vit model folder becomes a Hub repository:

    weights (safetensors), config.json, preprocessor_config.json, the remote-code .py files,
    README.md (the model card, see `cards.py`), eval_results.json and run_args.json (local paths stripped),
    ema/ (the EMA weights as their own loadable model, when the run has them)

Never uploaded: `checkpoints/` (resume state), `logs/` (trackers), anything else that is not part of a model.
Before anything leaves the machine the assembled folder must load in a fresh interpreter where hf_vit is *not*
importable (`trust_remote_code=True`), give the same logits there as hf_vit here, classify a real photo through
`pipeline("image-classification")`, and carry a card whose metadata passes huggingface_hub's parsing and the Hub's
rules that can be checked offline. The token comes from the environment (`HF_TOKEN`) or the login cache
(`hf auth login`) only, and is never printed, logged or written anywhere.

    from hf_vit.training.hub import publish_run
    publish_run("outputs/digits", "you/vit-digits", dry_run=True)   # prints files and card, sends nothing
    publish_run("outputs/digits", "you/vit-digits")                  # validates, then uploads
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from .cards import (
    check_model_card,
    local_path_markers,
    read_model_folder,
    render_model_card,
    strip_local_paths,
    weight_files,
)


# Entries of a run folder that never go to the Hub, and why (shown in the dry-run listing).
EXCLUDED = {
    "checkpoints": "resume state (optimiser, scheduler, RNG): large and private to the run",
    "logs": "training logs and tracker files",
}
EMA_SUBFOLDER = "ema"  # name of the EMA weights' subfolder in the Hub repository
_MODEL_FILES = ("config.json", "preprocessor_config.json")
_SIBLING_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", re.MULTILINE)
_TOKEN_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class HubPublishError(RuntimeError):
    """Publishing stopped: the message says at which step, why, and that the local folder is unchanged."""


@dataclass
class PushArguments:
    """`recipes/push_to_hub.py`: which folder goes to which Hub repository, and how."""

    run_dir: str = field(metadata={"help": "Run folder (from a recipe) or any hf_vit model folder."})
    repo_id: str = field(metadata={"help": "Hub repository, 'namespace/name' (created if missing)."})
    private: bool = field(default=False, metadata={"help": "Create the repository private (ignored if it exists)."})
    revision: str | None = field(
        default=None, metadata={"help": "Branch to commit to (created from main if missing)."})
    create_pr: bool = field(
        default=False, metadata={"help": "Open a pull request against main instead of committing."})
    commit_message: str | None = field(
        default=None, metadata={"help": "Commit title (default: names the model and its test accuracy)."})
    card_data: str | None = field(
        default=None, metadata={"help": "Card data YAML (default: model_cards/<dataset>.yaml when it exists)."})
    stage_dir: str | None = field(
        default=None, metadata={"help": "Keep the assembled repository here (a new or empty folder)."})
    dry_run: bool = field(
        default=False, metadata={"help": "Assemble and validate, print the files and the card, send nothing."})


@dataclass
class StagedFile:
    path_in_repo: str
    size: int
    source: str  # where it comes from, relative to the run folder, or "generated"


@dataclass
class PublishResult:
    repo_id: str
    files: list  # StagedFile
    skipped: dict  # entry of the run folder -> reason
    card: str
    validation: dict
    commit_url: str | None = None
    pr_url: str | None = None
    dry_run: bool = False


# ---------------------------------------------------------------------------------------------------------------------
# Assembling the repository


def _remote_code_files(folder: Path, config: dict) -> list[str]:
    """The .py files `auto_map` points at, plus their single-dot sibling imports (transitively)."""
    modules = {ref.split(".")[0] for ref in (config.get("auto_map") or {}).values() if isinstance(ref, str)}
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        with open(preprocessor) as f:
            auto_map = json.load(f).get("auto_map") or {}
        modules |= {ref.split(".")[0] for ref in auto_map.values() if isinstance(ref, str)}
    if not modules:
        raise ValueError(
            f"{folder.name}/config.json has no auto_map, so the model cannot load where hf_vit is not installed. "
            "Load it with hf_vit and save it again (save_pretrained copies the modeling files and writes auto_map)."
        )
    seen, todo = set(), sorted(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = folder / f"{name}.py"
        if not path.is_file():
            raise ValueError(
                f"{folder.name}: config.json's auto_map needs {name}.py, which is missing; save the model with "
                "hf_vit's save_pretrained (it copies the modeling files) before publishing."
            )
        todo.extend(m for m in _SIBLING_IMPORT.findall(path.read_text()) if m not in seen)
    return sorted(f"{name}.py" for name in seen)


_LINK_THRESHOLD = 64 << 20  # bytes


def _link_or_copy(source: Path, target: Path, link_large: bool = False) -> None:
    """Copy; large files are hard-linked into a temporary stage instead (no second copy of the weights on disk)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # NOTE: a hard link shares the run's bytes, so it is only used when the stage is hf_vit's own temporary folder,
    # which nothing edits; a user-chosen `stage_dir` always gets real copies.
    if link_large and source.stat().st_size >= _LINK_THRESHOLD:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def _stage_model(folder: Path, target: Path, prefix: str, fallback: Path | None = None,
                 link_large: bool = False) -> list[StagedFile]:
    """Weights, configs and remote code of one model folder into `target` (`fallback`: the main model, which lends
    its code files and any missing config)."""
    config_path = folder / "config.json"
    with open(config_path) as f:
        config = json.load(f)
    weights = weight_files(folder)
    if not weights:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        raise ValueError(
            f"{folder.name}: no model.safetensors (or safetensors shards + index)"
            + (f"; found {pickles}: hf_vit publishes safetensors only, re-save with save_pretrained" if pickles else "")
            + "."
        )
    staged = []
    names = [p.name for p in weights]
    if (folder / "model.safetensors.index.json").is_file() and len(weights) > 1:
        names.append("model.safetensors.index.json")
    names += [n for n in _MODEL_FILES if (folder / n).is_file()]
    for name in _MODEL_FILES:
        if not (folder / name).is_file() and fallback is not None and (fallback / name).is_file():
            _link_or_copy(fallback / name, target / name, link_large)
            staged.append(StagedFile(f"{prefix}{name}", (fallback / name).stat().st_size, "from the main model"))
    if not (folder / "preprocessor_config.json").is_file() and not (target / "preprocessor_config.json").is_file():
        raise ValueError(
            f"{folder.name}: no preprocessor_config.json, so pipeline() cannot use the model. Save the processor the "
            "model was trained with next to it, e.g. hf_vit.ViTImageProcessor(size={'height': H, 'width': W})"
            ".save_pretrained(folder)."
        )
    # NOTE: a subfolder model (ema/) gets the main model's code files: `from_pretrained(repo, subfolder="ema",
    # trust_remote_code=True)` imports the code at the repository root, so that is the code that must be checked.
    code_folder = fallback if fallback is not None else folder
    code = _remote_code_files(code_folder, config)
    for name in names:
        _link_or_copy(folder / name, target / name, link_large)
        staged.append(StagedFile(f"{prefix}{name}", (folder / name).stat().st_size, f"{prefix}{name}"))
    for name in code:
        _link_or_copy(code_folder / name, target / name, link_large)
        origin = f"{prefix}{name}" if fallback is None else "the main model's code"
        staged.append(StagedFile(f"{prefix}{name}", (code_folder / name).stat().st_size, origin))
    return staged


def assemble_repository(run_dir, stage_dir, repo_id: str, *, card_data=None, template_path=None,
                        link_large_files=False):
    """
    Build the Hub repository's content in `stage_dir` (new or empty) from a run folder. Returns
    (files, skipped entries with reasons, card text). `run_dir` is only read. `link_large_files`: hard-link weights
    of 64 MB and more instead of copying them (only for a stage nobody edits).
    """
    run = Path(run_dir).resolve()
    stage = Path(stage_dir).resolve()
    if stage == run or run in stage.parents:
        raise ValueError(f"stage_dir must be outside the run folder {run.name!r} (the run folder is never written).")
    if stage.exists() and any(stage.iterdir()):
        raise ValueError(f"stage_dir {stage.name!r} is not empty; give a new or empty folder.")
    facts = read_model_folder(run)
    stage.mkdir(parents=True, exist_ok=True)

    files = _stage_model(run, stage, "", link_large=link_large_files)
    skipped = {}
    for entry in sorted(run.iterdir()):
        if entry.name in EXCLUDED:
            skipped[entry.name + ("/" if entry.is_dir() else "")] = EXCLUDED[entry.name]
        elif entry.is_dir() and entry.name == facts.ema_folder:
            files += _stage_model(entry, stage / EMA_SUBFOLDER, f"{EMA_SUBFOLDER}/", fallback=run,
                                  link_large=link_large_files)
            if (entry / "eval_results.json").is_file():
                with open(entry / "eval_results.json") as f:
                    _write_json(stage / EMA_SUBFOLDER / "eval_results.json", strip_local_paths(json.load(f)))
                files.append(StagedFile(f"{EMA_SUBFOLDER}/eval_results.json",
                                        (stage / EMA_SUBFOLDER / "eval_results.json").stat().st_size,
                                        "the run's, local paths stripped"))

    # Results and resolved arguments: the run's own numbers, with local paths reduced to their last component.
    for name, data in (("eval_results.json", facts.eval_results), ("run_args.json", facts.run_args)):
        if data is not None:
            _write_json(stage / name, data)
            files.append(StagedFile(name, (stage / name).stat().st_size, "the run's, local paths stripped"))

    card = render_model_card(facts, repo_id, card_data=card_data, template_path=template_path)
    (stage / "README.md").write_text(card.content)
    files.append(StagedFile("README.md", (stage / "README.md").stat().st_size, "generated model card"))

    staged_names = {f.path_in_repo.split("/")[0] for f in files}
    for entry in sorted(run.iterdir()):
        key = entry.name + ("/" if entry.is_dir() else "")
        if entry.name not in staged_names and key not in skipped:
            skipped[key] = "another model folder: publish it on its own" if (entry / "config.json").is_file() \
                else "not part of a model repository"
    return sorted(files, key=lambda f: f.path_in_repo), skipped, card.content


# ---------------------------------------------------------------------------------------------------------------------
# Validation: load where hf_vit is not installed


# Prepended to a script run in a subprocess: any import of hf_vit fails and the source tree is off sys.path, so the
# script sees what someone without hf_vit sees (the tests use it too).
HIDE_HF_VIT = """
import importlib.abc, json, sys

class HideHfVit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_vit" or name.startswith("hf_vit."):
            raise ImportError("hf_vit is hidden in this interpreter")

sys.meta_path.insert(0, HideHfVit())
sys.path = [p for p in sys.path if not p.rstrip("/").endswith("src")]
try:
    import hf_vit  # noqa: F401
    raise SystemExit("hf_vit is importable: the check would prove nothing")
except ImportError:
    pass
"""

_REMOTE_CHECK = HIDE_HF_VIT + textwrap.dedent(
    """
    import torch, transformers
    from PIL import Image

    image = Image.open(sys.argv[1])
    report = {}
    for folder in sys.argv[2:]:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        processor = transformers.AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        with torch.no_grad():
            logits = model(**processor(image, return_tensors="pt")).logits
        classifier = transformers.pipeline("image-classification", model=folder, trust_remote_code=True, device="cpu")
        report[folder] = {
            "modules": [type(o).__module__ for o in (config, model, processor)],
            "logits": logits[0].tolist(),
            "pipeline": classifier(image, top_k=min(5, config.num_labels)),
        }
    print("HF_VIT_REMOTE_CHECK " + json.dumps(report))
    """
)


def sample_image(path) -> Path:
    """A real photo (scikit-learn's china.jpg) written to `path`, or a synthetic gradient when scikit-learn is absent."""
    from PIL import Image

    try:
        from sklearn.datasets import load_sample_images

        photos = load_sample_images()
        image = Image.fromarray(photos.images[0])
    except ImportError:
        import numpy as np

        y, x = np.mgrid[0:96, 0:128]
        image = Image.fromarray(np.stack([x * 2, y * 2, (x + y)], -1).astype("uint8"))
    image.save(path)
    return Path(path)


def _scrubbed_env(modules_cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _TOKEN_ENV_NAMES}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "PYTHONPATH": "",
                "HF_MODULES_CACHE": modules_cache,
                "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"})
    return env


def validate_repository(stage_dir, *, forbidden: tuple = (), timeout: float = 900.0) -> dict:
    """
    Check an assembled repository before upload; raise a ValueError listing every problem. Checks: the card
    (`cards.check_model_card`), that no `forbidden` string (token, local paths) is in any generated text file, and
    that every model in it (the root and ema/) loads with `trust_remote_code=True` in an interpreter where hf_vit is
    not importable, gives hf_vit's logits there (same weights, same code) and classifies a photo through `pipeline`.
    Returns {model folder: {"top_label", "max_abs_logit_diff"}}.
    """
    import torch

    from ..image_processing_hf_vit import ViTImageProcessor
    from ..modeling_hf_vit import ViTForImageClassification

    stage = Path(stage_dir)
    problems = [f"README.md: {p}" for p in check_model_card((stage / "README.md").read_text(), forbidden)]
    for path in sorted(stage.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".md", ".yaml", ".txt"):
            text = path.read_text(errors="replace")
            if any(s and s in text for s in forbidden):
                problems.append(f"{path.relative_to(stage)}: contains a token or a local absolute path")
    if problems:
        raise ValueError("The assembled repository is not ready to publish:\n- " + "\n- ".join(problems))

    models = ["."] + sorted(p.name for p in stage.iterdir() if p.is_dir() and (p / "config.json").is_file())
    with tempfile.TemporaryDirectory(prefix="hf_vit_check_") as scratch:
        image_path = sample_image(Path(scratch) / "photo.png")
        try:
            done = subprocess.run(
                [sys.executable, "-c", _REMOTE_CHECK, str(image_path)] + [str((stage / m).resolve()) for m in models],
                capture_output=True, text=True, env=_scrubbed_env(str(Path(scratch) / "modules")), cwd=scratch,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise ValueError(f"Loading the assembled repository without hf_vit took more than {timeout:.0f} s; "
                             "nothing was published.") from None
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise ValueError(
                "The assembled repository does not load where hf_vit is not installed (AutoModelForImageClassification"
                f" / pipeline with trust_remote_code=True):\n{strip_local_paths(tail)}"
            )
        line = next(l for l in done.stdout.splitlines() if l.startswith("HF_VIT_REMOTE_CHECK "))
        remote = json.loads(line[len("HF_VIT_REMOTE_CHECK "):])

        from PIL import Image

        image = Image.open(image_path)
        report = {}
        for name in models:
            folder = (stage / name).resolve()
            result = remote[str(folder)]
            if any(m.startswith("hf_vit") or not m.startswith("transformers_modules") for m in result["modules"]):
                problems.append(f"{name}: loaded {result['modules']} instead of the repository's remote code")
            model = ViTForImageClassification.from_pretrained(folder).eval()
            processor = ViTImageProcessor.from_pretrained(folder)
            with torch.no_grad():
                expected = model(**processor(image, return_tensors="pt")).logits[0]
            got = torch.tensor(result["logits"])
            diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
            if not diff <= 1e-4 * (1 + expected.abs().max().item()):
                problems.append(f"{name}: remote-code logits differ from hf_vit's by {diff:.3g} (tolerance 1e-4): the "
                                "published code would not reproduce the evaluated model")
            top = result["pipeline"][0]["label"] if result["pipeline"] else None
            if top != model.config.id2label[int(expected.argmax())]:
                problems.append(f"{name}: pipeline's top label {top!r} is not the model's argmax "
                                f"{model.config.id2label[int(expected.argmax())]!r}")
            report[name] = {"top_label": top, "max_abs_logit_diff": diff}
    if problems:
        raise ValueError("The assembled repository is not ready to publish:\n- " + "\n- ".join(problems))
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Upload


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubPublishError(
            "No Hugging Face token: set the HF_TOKEN environment variable or log in once with `hf auth login`. "
            "hf_vit never takes a token on the command line or in a file of its own."
        )
    return token


def _scrub(text: str, secrets: tuple) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def upload_repository(stage_dir, repo_id: str, *, private=False, revision=None, create_pr=False, commit_message=None,
                      token: str | None = None):
    """Create the repository if needed and commit every file of `stage_dir` in one commit (or one pull request)."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    token = token or _token()
    stage = Path(stage_dir)
    api = HfApi(endpoint=constants.ENDPOINT)
    step = "creating the repository"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        if revision and revision != "main":
            step = f"creating branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        step = "uploading and committing the files"
        operations = [CommitOperationAdd(path.relative_to(stage).as_posix(), str(path))
                      for path in sorted(stage.rglob("*")) if path.is_file()]
        return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision,
                                 create_pr=create_pr, token=token)
    except Exception as error:  # noqa: BLE001  (every failure becomes one clear message, without the token)
        atomic = " A Hub commit is all-or-nothing: the repository keeps its previous files." if "commit" in step else ""
        raise HubPublishError(
            f"Publishing to {repo_id!r} failed while {step}: {type(error).__name__}: "
            f"{_scrub(str(error), (token,))}.{atomic} Nothing in the local folder was changed; run the same command "
            "again to retry."
        ) from None


# ---------------------------------------------------------------------------------------------------------------------
# One call for recipes and the CLI


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part in EXCLUDED for part in path.relative_to(folder).parts):
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest() if path.stat().st_size < 1 << 30
                          else str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def _default_commit_message(stage: Path) -> str:
    from .cards import architecture_name

    with open(stage / "config.json") as f:
        message = f"Upload {architecture_name(json.load(f))} (hf_vit)"
    results = stage / "eval_results.json"
    if results.is_file():
        with open(results) as f:
            test = json.load(f).get("test")
        if isinstance(test, dict) and isinstance(test.get("accuracy"), (int, float)):
            message += f", test top-1 {100 * test['accuracy']:.2f}%"
    return message


def check_can_publish(repo_id: str, *, revision: str | None = None, create_pr: bool = False,
                      need_token: bool = True) -> str | None:
    """
    The checks that need no model: a valid repo id, `create_pr` without a branch, and a token (returned). Recipes
    call it before training, so that a run that is to be published does not find out hours later.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"`repo_id` {repo_id!r} is not a valid Hub repository id ('namespace/name'): {error}") from None
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"`create_pr` opens a pull request against main; do not combine it with `revision` {revision!r}.")
    return _token() if need_token else None


def publish_run(run_dir, repo_id: str, *, private: bool = False, revision: str | None = None, create_pr: bool = False,
                commit_message: str | None = None, dry_run: bool = False, card_data=None, stage_dir=None,
                template_path=None, log=print) -> PublishResult:
    """
    Publish a run folder (or any hf_vit model folder) as a Hub model repository, in one call:
    assemble (weights, configs, remote code, card, results; EMA in ema/; never checkpoints/ or logs/), validate
    offline (loads without hf_vit, same logits, pipeline on a photo, card metadata), then upload
    (`create_repo(exist_ok=True)`, optional branch `revision` or a pull request, one commit).
    `dry_run=True` prints the file list and the card and sends nothing. The token comes from `HF_TOKEN` or the
    login cache. `stage_dir` keeps the assembled repository (default: a temporary folder). `run_dir` is only read.
    """
    token = check_can_publish(repo_id, revision=revision, create_pr=create_pr, need_token=not dry_run)
    run = Path(run_dir)
    before = _folder_digest(run) if run.is_dir() else None
    secrets = tuple(local_path_markers(run)) + ((token,) if token else ())

    with tempfile.TemporaryDirectory(prefix="hf_vit_repo_") as scratch:
        stage = Path(stage_dir) if stage_dir else Path(scratch) / "repo"
        files, skipped, card = assemble_repository(run, stage, repo_id, card_data=card_data, template_path=template_path,
                                                   link_large_files=not stage_dir)
        log(f"Repository {repo_id} ({'dry run: nothing is sent' if dry_run else 'to upload'}):")
        for f in files:
            origin = "" if f.source == f.path_in_repo else f"  ({f.source})"
            log(f"  {f.path_in_repo:<36} {f.size:>13,} B{origin}")
        for name, reason in skipped.items():
            log(f"  not uploaded: {name} ({reason})")
        log("Validating: card metadata, then loading where hf_vit is not installed (trust_remote_code=True)...")
        report = validate_repository(stage, forbidden=secrets)
        for name, entry in report.items():
            log(f"  {name}: loads without hf_vit, logits match hf_vit (max diff {entry['max_abs_logit_diff']:.1e}), "
                f"pipeline top label {entry['top_label']!r}")
        result = PublishResult(repo_id, files, skipped, card, report, dry_run=dry_run)
        if dry_run:
            log("Model card (README.md):")
            log(card)
        else:
            message = commit_message or _default_commit_message(stage)
            info = upload_repository(stage, repo_id, private=private, revision=revision, create_pr=create_pr,
                                     commit_message=message, token=token)
            result.commit_url, result.pr_url = info.commit_url, info.pr_url
            log(f"Published: {info.commit_url}" + (f" (pull request: {info.pr_url})" if info.pr_url else ""))
    if before is not None and _folder_digest(run) != before:  # a guard on our own promise
        raise HubPublishError(f"The run folder {run.name!r} changed while publishing; this is a bug in hf_vit.")
    return result
