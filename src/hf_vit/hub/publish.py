"""Publishing a trained hf_vit model to the Hugging Face Hub: assemble, validate offline, then upload.

A run folder (`hf_vit.run_folder`) or any hf_vit model folder becomes a Hub repository:

    weights (safetensors), config.json, preprocessor_config.json, the remote-code .py files,
    README.md (the model card, see `cards.py`), eval_results.json and run_args.json (local paths stripped),
    ema/ (the EMA weights as their own loadable model, when the run has them)

Never uploaded: `checkpoints/` (resume state), `logs/` (trackers), anything else that is not part of a model.
Before anything leaves the machine the assembled folder must load in a fresh interpreter where hf_vit is *not*
importable (`trust_remote_code=True`), give the same logits there as hf_vit here, classify a real photo through
`pipeline("image-classification")`, and carry a card whose metadata passes huggingface_hub's parsing and the Hub's
rules that can be checked offline. The token comes from the environment (`HF_TOKEN`) or the login cache
(`hf auth login`) only, and is never printed, logged or written anywhere.

    from hf_vit.hub import publish_run
    publish_run("outputs/digits", "you/vit-digits", dry_run=True)   # prints files and card, sends nothing
    publish_run("outputs/digits", "you/vit-digits")                  # validates, then uploads
"""

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..run_folder import CONFIG_NAME, EVAL_RESULTS_NAME, read_json
from .cards import architecture_name, local_path_markers
from .options import PublishOptions, PushArguments
from .repository import EXCLUDED, assemble_repository
from .validation import validate_repository


class HubPublishError(RuntimeError):
    """Publishing stopped: the message says at which step, why, and that the local folder is unchanged."""



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
# Upload


def _token() -> str:
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


def upload_repository(stage_dir, repo_id: str, *, token: str | None = None, **options):
    """
    Create the repository if needed and commit every file of `stage_dir` in one commit (or one pull request).
    `options`: `PublishOptions` fields (`private`, `revision`, `create_pr`, `commit_message`).
    """
    options = PublishOptions(**options)
    private, revision, create_pr = options.private, options.revision, options.create_pr
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
        return api.create_commit(repo_id, operations, commit_message=options.commit_message, revision=revision,
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
    message = f"Upload {architecture_name(read_json(stage / CONFIG_NAME, 'model configuration'))} (hf_vit)"
    results = stage / EVAL_RESULTS_NAME
    if results.is_file():
        test = read_json(results, "evaluation results").get("test")
        if isinstance(test, dict) and isinstance(test.get("accuracy"), (int, float)):
            message += f", test top-1 {100 * test['accuracy']:.2f}%"
    return message


def check_can_publish(repo_id: str, *, revision: str | None = None, create_pr: bool = False,
                      need_token: bool = True) -> str | None:
    """
    The checks that need no model: a valid repo id, `create_pr` without a branch, and a token (returned). Recipes
    call it before training, so that a run that is to be published does not find out hours later.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"`repo_id` {repo_id!r} is not a valid Hub repository id ('namespace/name'): {error}") from None
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"`create_pr` opens a pull request against main; do not combine it with `revision` {revision!r}.")
    return _token() if need_token else None


def publish_run(run_dir, repo_id: str, *, dry_run: bool = False, stage_dir=None, template_path=None, log=print,
                **options) -> PublishResult:
    """
    Publish a run folder (or any hf_vit model folder) as a Hub model repository, in one call:
    assemble (weights, configs, remote code, card, results; EMA in ema/; never checkpoints/ or logs/), validate
    offline (loads without hf_vit, same logits, pipeline on a photo, card metadata), then upload
    (`create_repo(exist_ok=True)`, optional branch `revision` or a pull request, one commit).
    `options` are the `PublishOptions` fields (`private`, `revision`, `create_pr`, `commit_message`, `card_data`).
    `dry_run=True` prints the file list and the card and sends nothing. The token comes from `HF_TOKEN` or the
    login cache. `stage_dir` keeps the assembled repository (default: a temporary folder). `run_dir` is only read.
    """
    options = PublishOptions(**options)
    token = check_can_publish(repo_id, revision=options.revision, create_pr=options.create_pr, need_token=not dry_run)
    run = Path(run_dir)
    before = _folder_digest(run) if run.is_dir() else None
    secrets = tuple(local_path_markers(run)) + ((token,) if token else ())

    with tempfile.TemporaryDirectory(prefix="hf_vit_repo_") as scratch:
        stage = Path(stage_dir) if stage_dir else Path(scratch) / "repo"
        files, skipped, card = assemble_repository(run, stage, repo_id, card_data=options.card_data,
                                                   template_path=template_path, link_large_files=not stage_dir)
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
            message = options.commit_message or _default_commit_message(stage)
            info = upload_repository(stage, repo_id, token=token,
                                     **{**dataclasses.asdict(options), "commit_message": message})
            result.commit_url, result.pr_url = info.commit_url, info.pr_url
            log(f"Published: {info.commit_url}" + (f" (pull request: {info.pr_url})" if info.pr_url else ""))
    if before is not None and _folder_digest(run) != before:  # a guard on our own promise
        raise HubPublishError(f"The run folder {run.name!r} changed while publishing; this is a bug in hf_vit.")
    return result



def push(arguments: PushArguments, log=print) -> PublishResult:
    """`publish_run` for a `PushArguments` (what `hf-vit push` and `recipes/push_to_hub.py` parse)."""
    options = {f.name: getattr(arguments, f.name) for f in dataclasses.fields(PublishOptions)}
    return publish_run(arguments.run_dir, arguments.repo_id, dry_run=arguments.dry_run, stage_dir=arguments.stage_dir,
                       log=log, **options)
