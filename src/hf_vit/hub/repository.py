"""Assembling a Hub model repository from a run folder: weights, configs, remote code, the model card, the run's
records (local paths stripped) and the EMA model in `ema/`; never the resume state or the logs. The run folder is
only read."""

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..run_folder import (
    CHECKPOINTS_SUBFOLDER,
    CONFIG_NAME,
    EMA_SUBFOLDER,
    EVAL_RESULTS_NAME,
    LOGS_SUBFOLDER,
    PROCESSOR_CONFIG_NAME,
    RUN_ARGS_NAME,
    WEIGHTS_INDEX_NAME,
    read_json,
    weight_files,
    write_json,
)
from .cards import read_model_folder, render_model_card, strip_local_paths


# Entries of a run folder that never go to the Hub, and why (shown in the dry-run listing).
EXCLUDED = {
    CHECKPOINTS_SUBFOLDER: "resume state (optimiser, scheduler, RNG): large and private to the run",
    LOGS_SUBFOLDER: "training logs and tracker files",
}
_MODEL_FILES = (CONFIG_NAME, PROCESSOR_CONFIG_NAME)
_SIBLING_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", re.MULTILINE)


@dataclass
class StagedFile:
    path_in_repo: str
    size: int
    source: str  # where it comes from, relative to the run folder, or "generated"


def _remote_code_files(folder: Path, config: dict) -> list[str]:
    """The .py files `auto_map` points at, plus their single-dot sibling imports (transitively)."""
    modules = {ref.split(".")[0] for ref in (config.get("auto_map") or {}).values() if isinstance(ref, str)}
    preprocessor = folder / PROCESSOR_CONFIG_NAME
    if preprocessor.is_file():
        auto_map = read_json(preprocessor, "image processor configuration").get("auto_map") or {}
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


def _stage_model(folder: Path, target: Path, prefix: str, fallback: Path | None = None,
                 link_large: bool = False) -> list[StagedFile]:
    """Weights, configs and remote code of one model folder into `target` (`fallback`: the main model, which lends
    its code files and any missing config)."""
    config = read_json(folder / CONFIG_NAME, "model configuration")
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
    if (folder / WEIGHTS_INDEX_NAME).is_file() and len(weights) > 1:
        names.append(WEIGHTS_INDEX_NAME)
    names += [n for n in _MODEL_FILES if (folder / n).is_file()]
    for name in _MODEL_FILES:
        if not (folder / name).is_file() and fallback is not None and (fallback / name).is_file():
            _link_or_copy(fallback / name, target / name, link_large)
            staged.append(StagedFile(f"{prefix}{name}", (fallback / name).stat().st_size, "from the main model"))
    if not (folder / PROCESSOR_CONFIG_NAME).is_file() and not (target / PROCESSOR_CONFIG_NAME).is_file():
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
            if (entry / EVAL_RESULTS_NAME).is_file():
                write_json(stage / EMA_SUBFOLDER / EVAL_RESULTS_NAME,
                           strip_local_paths(read_json(entry / EVAL_RESULTS_NAME, "evaluation results")))
                files.append(StagedFile(f"{EMA_SUBFOLDER}/{EVAL_RESULTS_NAME}",
                                        (stage / EMA_SUBFOLDER / EVAL_RESULTS_NAME).stat().st_size,
                                        "the run's, local paths stripped"))

    # Results and resolved arguments: the run's own numbers, with local paths reduced to their last component.
    for name, data in ((EVAL_RESULTS_NAME, facts.eval_results), (RUN_ARGS_NAME, facts.run_args)):
        if data is not None:
            write_json(stage / name, data)
            files.append(StagedFile(name, (stage / name).stat().st_size, "the run's, local paths stripped"))

    card = render_model_card(facts, repo_id, card_data=card_data, template_path=template_path)
    (stage / "README.md").write_text(card.content)
    files.append(StagedFile("README.md", (stage / "README.md").stat().st_size, "generated model card"))

    staged_names = {f.path_in_repo.split("/")[0] for f in files}
    for entry in sorted(run.iterdir()):
        key = entry.name + ("/" if entry.is_dir() else "")
        if entry.name not in staged_names and key not in skipped:
            skipped[key] = "another model folder: publish it on its own" if (entry / CONFIG_NAME).is_file() \
                else "not part of a model repository"
    return sorted(files, key=lambda f: f.path_in_repo), skipped, card.content


