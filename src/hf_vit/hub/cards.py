"""Model cards for hf_vit models: metadata (with a model-index) and a README rendered from model_cards/template.md.

Everything on the card comes from the model folder itself: `config.json` (architecture), the safetensors headers
(parameter count), `run_args.json` (the run's resolved arguments: data and procedure) and `eval_results.json`
(top-1/top-5, few-shot), plus optional per-data-set prose from `model_cards/<dataset>.yaml`. What a folder does not
record, the card says is unknown. Local absolute paths are reduced to their last component before anything is shown.

    card = render_model_card("outputs/digits", repo_id="you/vit-digits")
    print(card.content)
"""

import json
import math
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..configuration_hf_vit import VIT_VARIANTS, as_pair
from ..run_folder import CONFIG_NAME, read_eval_results, read_json, read_run_args, weight_files


TEMPLATE_NAME = "template.md"


def model_cards_dir() -> Path:
    """
    Where the card template and the per-data-set card data are: `hf_vit/hub/model_cards/` in an installed package
    (the build copies the repository's top-level `model_cards/` there), else the checkout's `model_cards/` (a source
    tree or an editable install, where the top-level folder is the one to edit).
    """
    packaged = Path(__file__).resolve().parent / "model_cards"
    if (packaged / TEMPLATE_NAME).is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[3] / "model_cards"
    if (checkout / TEMPLATE_NAME).is_file():
        return checkout
    raise FileNotFoundError(
        f"hf_vit's model card template ({TEMPLATE_NAME}) is missing from this installation (looked in "
        f"hf_vit/hub/model_cards/ and the source checkout's model_cards/); reinstall hf_vit or pass a template path."
    )

PAPER_BIBTEX = """@inproceedings{dosovitskiy2021image,
  title     = {An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  author    = {Alexey Dosovitskiy and Lucas Beyer and Alexander Kolesnikov and Dirk Weissenborn and Xiaohua Zhai and
               Thomas Unterthiner and Mostafa Dehghani and Matthias Minderer and Georg Heigold and Sylvain Gelly and
               Jakob Uszkoreit and Neil Houlsby},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2021},
  url       = {https://openreview.net/forum?id=YicbFdNTTy}
}"""

# Keys a model_cards/<name>.yaml may hold (and, under `dataset`, its sub-keys).
CARD_DATA_KEYS = ("title", "summary", "dataset", "tags", "license", "intended_uses", "limitations", "hardware",
                  "base_model", "language")
DATASET_KEYS = ("name", "type", "hub_ids", "description", "url")

# An EMA / Polyak copy of the weights inside a run folder: a subfolder named like this.
EMA_FOLDER_PATTERN = re.compile(r"(^|[_\-.])(ema|polyak)($|[_\-.])", re.IGNORECASE)

# The run arguments shown on the card, in this order, with their labels (all of them are in run_args.json).
_TRAINING_ROWS = (
    ("model_name_or_path", "initialisation"),
    ("variant", "variant argument"),
    ("optimizer", "optimiser"),
    ("learning_rate", "peak learning rate"),
    ("weight_decay", "weight decay (decoupled)"),
    ("adam_beta1", "Adam beta1"),
    ("adam_beta2", "Adam beta2"),
    ("momentum", "SGD momentum"),
    ("batch_size", "global batch size"),
    ("num_epochs", "epochs"),
    ("max_steps", "max steps"),
    ("warmup_steps", "warm-up steps"),
    ("warmup_ratio", "warm-up share"),
    ("lr_decay", "decay after warm-up"),
    ("max_grad_norm", "gradient clipping (global norm)"),
    ("label_smoothing", "label smoothing"),
    ("augmentation", "augmentation"),
    ("randaugment_num_ops", "RandAugment operations"),
    ("randaugment_magnitude", "RandAugment magnitude"),
    ("mixup_alpha", "mixup alpha"),
    ("cutmix_alpha", "cutmix alpha"),
    ("drop_path_rate", "stochastic depth"),
    ("ema_decay", "EMA decay"),
    ("layer_decay", "layer-wise lr decay"),
    ("mixed_precision", "mixed precision"),
    ("seed", "seed"),
)


# ---------------------------------------------------------------------------------------------------------------------
# Paths


_EMBEDDED_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~\\-])(?:~|[A-Za-z]:)?[/\\][^\s'\"]+")


def _last_component(path: str) -> str:
    name = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
    return name or "."


def strip_local_paths(value):
    """Recursively replace local absolute paths (`/a/b/run`, `~/x`, `C:\\x`) inside strings by their last component."""
    if isinstance(value, dict):
        return {k: strip_local_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_local_paths(v) for v in value]
    if isinstance(value, str):
        return _EMBEDDED_ABSOLUTE_PATH.sub(lambda m: _last_component(m.group(0)), value)
    return value


def local_path_markers(*folders) -> list[str]:
    """Strings that would reveal this machine's layout: the given folders, the working, home and temp directories."""
    candidates = set()
    for folder in folders:
        if folder:
            candidates.update({os.path.abspath(folder), os.path.realpath(folder)})
    candidates.update({os.getcwd(), os.path.expanduser("~"), tempfile.gettempdir()})
    # Skip "/" and one-level roots such as "/tmp" or "/root" alone only when they are too short to be telling.
    return sorted(c for c in candidates if len(c.strip("/\\")) >= 3 and c not in ("/", "\\"))


# ---------------------------------------------------------------------------------------------------------------------
# What a model folder records


@dataclass
class ModelFolder:
    """The facts the card is made of. `run_args` / `eval_results` are None when the folder has no such file."""

    path: Path
    config: dict
    num_parameters: int | None
    run_args: dict | None
    eval_results: dict | None
    ema_folder: str | None  # name of the EMA subfolder, if any
    start_checkpoint: str | None = None  # run_args' model_name_or_path as written (to tell a Hub id from a path)

    @property
    def dataset(self) -> str | None:
        for source in (self.eval_results, self.run_args):
            if source and isinstance(source.get("dataset"), str):
                return source["dataset"]
        return None


def count_parameters(files) -> int:
    """Sum of tensor sizes, read from the safetensors headers only (no weights are loaded)."""
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def is_ema_folder(path: Path) -> bool:
    return path.is_dir() and bool(EMA_FOLDER_PATTERN.search(path.name)) and (path / "config.json").is_file()


def read_model_folder(folder) -> ModelFolder:
    """Read a run folder (or any hf_vit model folder); raise a ValueError naming the file when it is not one."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{folder}: not a folder; expected a run folder or an hf_vit model folder (config.json, "
                         "model.safetensors, ...).")
    if not (path / CONFIG_NAME).is_file():
        raise ValueError(f"{path.name}: no {CONFIG_NAME}; expected a run folder or an hf_vit model folder.")
    config = read_json(path / CONFIG_NAME, "model configuration")
    if config.get("model_type") != "hf_vit":
        raise ValueError(f"{path.name}/config.json: model_type is {config.get('model_type')!r}; only hf_vit models "
                         "('hf_vit') are published here. Convert the checkpoint with hf_vit first.")
    files = weight_files(path)
    run_args, results = read_run_args(path), read_eval_results(path)
    ema = sorted(p.name for p in path.iterdir() if is_ema_folder(p))
    return ModelFolder(
        path=path,
        config=config,
        num_parameters=count_parameters(files) if files else None,
        run_args=strip_local_paths(run_args) if run_args is not None else None,
        eval_results=strip_local_paths(results) if results is not None else None,
        ema_folder=ema[0] if ema else None,
        start_checkpoint=(run_args or {}).get("model_name_or_path") or None,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Per-data-set card data (model_cards/<name>.yaml)


def _normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", _last_component(name).lower()).strip("_")


def load_card_data(card_data=None, dataset: str | None = None) -> dict:
    """
    The prose and metadata that a model folder cannot know. `card_data` is a YAML path or a dict; without it,
    `model_cards/<dataset>.yaml` is used when it exists (dataset names are compared lower-cased, punctuation as "_",
    a path by its last component). Unknown keys are an error naming the key, the file and the allowed keys.
    """
    source = "card data"
    if card_data is None and dataset:
        candidate = model_cards_dir() / f"{_normalise_name(dataset)}.yaml"
        card_data = candidate if candidate.is_file() else None
    if card_data is None:
        return {}
    if isinstance(card_data, (str, os.PathLike)):
        source = Path(card_data).name
        if not os.path.isfile(card_data):
            raise FileNotFoundError(f"Card data file {source!r} does not exist.")
        with open(card_data) as f:
            card_data = yaml.safe_load(f) or {}
    if not isinstance(card_data, dict):
        raise ValueError(f"{source}: expected a mapping of card fields, got {type(card_data).__name__}.")
    unknown = sorted(set(card_data) - set(CARD_DATA_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown card field(s) {unknown}; allowed are {list(CARD_DATA_KEYS)}.")
    dataset_info = card_data.get("dataset") or {}
    if not isinstance(dataset_info, dict):
        raise ValueError(f"{source}: `dataset` must be a mapping with keys {list(DATASET_KEYS)}.")
    unknown = sorted(set(dataset_info) - set(DATASET_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown `dataset` field(s) {unknown}; allowed are {list(DATASET_KEYS)}.")
    return strip_local_paths(card_data)


# ---------------------------------------------------------------------------------------------------------------------
# Describing the model


def architecture_name(config: dict) -> str:
    """The paper's notation when the sizes match Table 1 ("ViT-B/16", "R50+ViT-B/16"), else "ViT/4, custom size"."""
    sizes = (config.get("num_hidden_layers"), config.get("hidden_size"), config.get("intermediate_size"),
             config.get("num_attention_heads"))
    ph, pw = as_pair(config.get("patch_size", 16))
    patch = str(ph) if ph == pw else f"{ph}x{pw}"
    prefix = ""
    depths = config.get("backbone_depths")
    if depths is not None:
        prefix = f"R{3 * sum(depths) + 2}+" if depths else "R(stem)+"
    for size, table in VIT_VARIANTS.items():
        if tuple(table) == sizes:
            return f"{prefix}ViT-{size}/{patch}"
    return f"{prefix}ViT/{patch}, custom size"


def _percent(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "–"
    return str(value).replace("|", "\\|")


def _looks_like_hub_id(name: str) -> bool:
    if os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def base_model_of(facts: ModelFolder, card_data: dict) -> tuple[str | None, str]:
    """(Hub id for the `base_model` metadata or None, a sentence for the card)."""
    if card_data.get("base_model"):
        base = card_data["base_model"]
        return base, f"fine-tuned from [{base}](https://huggingface.co/{base})"
    if facts.run_args is None:
        return None, "unknown (no run_args.json)"
    start = facts.start_checkpoint
    if not start:
        return None, "from scratch (random initialisation)"
    if _looks_like_hub_id(start):
        return start, f"fine-tuned from [{start}](https://huggingface.co/{start})"
    return None, f"fine-tuned from a local checkpoint (`{_last_component(start)}`, not on the Hub)"


def collect_metrics(results: dict | None) -> list[tuple[str, dict]]:
    """(split label, metrics) for every object in eval_results.json that has an `accuracy`, test first."""
    found = []

    def visit(label, value):
        if isinstance(value, dict):
            if isinstance(value.get("accuracy"), (int, float)):
                found.append((label, value))
            else:
                for key, sub in value.items():
                    visit(f"{label} {key}".strip(), sub)

    for key, value in (results or {}).items():
        if not re.search(r"few.?shot", key, re.IGNORECASE):
            visit(key, value)
    order = {"test": 0, "validation": 1}
    return sorted(found, key=lambda item: (order.get(item[0], 2), item[0]))


_FLAT_FEW_SHOT = re.compile(r"^few.?shot[\W_]*(\d+)[\W_]*shots?[\W_]*accuracy$", re.IGNORECASE)


def collect_few_shot(results: dict | None) -> list[tuple[int, float, str | None]]:
    """
    (shots, accuracy, split) of the few-shot linear evaluation, from either form:
    flat keys as the training loop's evaluator writes them, inside the split they were measured on
    (`"validation": {"fewshot/5shot_accuracy": 0.71, ...}`), or a top-level `few_shot` / `fewshot` entry
    (`{"5": 0.71}` or `{"5shot": {"accuracy": 0.71}}`; split unknown: None).
    """
    rows = {}
    for key, value in (results or {}).items():
        if re.fullmatch(r"few.?shot", key, re.IGNORECASE) and isinstance(value, dict):
            for shots_key, entry in value.items():
                match = re.search(r"\d+", str(shots_key))
                accuracy = entry.get("accuracy") if isinstance(entry, dict) else entry
                if match and _is_number(accuracy):
                    rows[(int(match.group(0)), None)] = float(accuracy)
        elif isinstance(value, dict):
            for flat_key, accuracy in value.items():
                match = _FLAT_FEW_SHOT.match(str(flat_key))
                if match and _is_number(accuracy):
                    rows[(int(match.group(1)), key)] = float(accuracy)
        else:
            match = _FLAT_FEW_SHOT.match(key)
            if match and _is_number(value):
                rows[(int(match.group(1)), None)] = float(value)
    return sorted((shots, accuracy, split) for (shots, split), accuracy in rows.items())


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split_label(label: str) -> str:
    return " ".join("EMA" if word == "ema" else word for word in label.replace("_", " ").split())


# ---------------------------------------------------------------------------------------------------------------------
# The card, section by section


def _metadata(facts, card_data, model_name, dataset_type, dataset_name, base_model):
    """ModelCardData with a model-index from the headline split (test, else validation) and the few-shot results."""
    metrics = collect_metrics(facts.eval_results)
    headline = next(((label, m) for label, m in metrics if label in ("test", "validation")), None)
    eval_results = []
    if headline and dataset_type:
        split, m = headline
        common = dict(task_type="image-classification", task_name="Image Classification", dataset_type=dataset_type,
                      dataset_name=dataset_name, dataset_split=split)
        eval_results.append(EvalResult(metric_type="accuracy", metric_name="Top-1 accuracy",
                                       metric_value=m["accuracy"], **common))
        if _is_number(m.get("top5_accuracy")):
            eval_results.append(EvalResult(metric_type="accuracy", metric_name="Top-5 accuracy", metric_config="top5",
                                           metric_value=m["top5_accuracy"], **common))
        for shots, value, few_shot_split in collect_few_shot(facts.eval_results):
            eval_results.append(EvalResult(metric_type="accuracy", metric_name=f"{shots}-shot linear accuracy",
                                           metric_config=f"{shots}-shot-linear", metric_value=value,
                                           **{**common, "dataset_split": few_shot_split or split}))
    tags = ["hf_vit", "vision-transformer", "vit", "image-classification"]
    tags += [t for t in card_data.get("tags") or [] if t not in tags]
    return ModelCardData(
        # NOTE: library_name "transformers": the repository loads with transformers' Auto classes and pipeline
        # (remote code), and the Hub shows the matching snippet; hf_vit itself is named in the tags.
        library_name="transformers",
        pipeline_tag="image-classification",
        license=card_data.get("license") or "apache-2.0",
        language=card_data.get("language"),
        tags=tags,
        datasets=list((card_data.get("dataset") or {}).get("hub_ids") or []) or None,
        base_model=base_model,
        metrics=["accuracy"] if eval_results else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )


def _details(config, facts, arch, labels, start_text, license_id) -> list[tuple[str, str]]:
    height, width = as_pair(config.get("image_size", 224))
    ph, pw = as_pair(config.get("patch_size", 16))
    pooling = config.get("pooling", "cls")
    class_token = " + class token" if config.get("use_class_token", pooling == "cls") else ""
    representation = config.get("representation_size")
    hybrid = config.get("backbone_depths")
    architecture = (f"{arch}: {config.get('num_hidden_layers')} pre-LN Transformer blocks, width "
                    f"{config.get('hidden_size')}, MLP {config.get('intermediate_size')}, "
                    f"{config.get('num_attention_heads')} attention heads")
    if hybrid is not None:
        architecture += f"; hybrid: BiT ResNet stem, stage depths {hybrid}"
    parameters = facts.num_parameters
    aligned = " (corners aligned, as the reference code)" if config.get("position_embedding_align_corners", True) else ""
    return [
        ("Architecture", architecture),
        ("Input", f"{height}x{width} pixels, {config.get('num_channels', 3)} channels; {ph}x{pw} patches "
                  f"({(height // ph) * (width // pw)} patch tokens{class_token})"),
        ("Parameters", f"{parameters / 1e6:.2f}M ({parameters:,})" if parameters else "unknown"),
        ("Pooling", {"cls": "class token",
                     "gap": "global average of the patch tokens (after the final LayerNorm)"}.get(pooling, pooling)),
        ("Head", f"tanh pre-logits layer of width {representation}, then linear (the paper's pre-training head)"
                 if representation else "one linear layer (the paper's fine-tuning head)"),
        ("Position embeddings", f"{config.get('position_embedding_type', 'learned_1d')}; resampled to other "
                                f"resolutions with {config.get('position_embedding_interpolation', 'bilinear')} "
                                f"interpolation{aligned}"),
        ("Activation, LayerNorm eps", f"{config.get('hidden_act')}, {config.get('layer_norm_eps')}"),
        ("Classes", f"{len(labels)}: " + ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")),
        ("Initialisation", start_text),
        ("License", license_id),
        ("Paper", "[arXiv:2010.11929](https://arxiv.org/abs/2010.11929)"),
    ]


def _summary(facts, arch, num_labels, start_text, dataset_name) -> str:
    if facts.run_args is None and facts.eval_results is None:
        return (f"A Vision Transformer ({arch}) image classifier with {num_labels} classes, in hf_vit's format. The "
                "folder it was published from records neither its training run nor an evaluation: the training "
                "data, procedure and accuracy below are unknown.")
    how = "trained from scratch" if start_text.startswith("from scratch") else start_text
    summary = (f"A Vision Transformer ({arch}) image classifier with {num_labels} classes, {how} on "
               f"{dataset_name or 'an unrecorded data set'} with hf_vit.")
    headline = next(((s, m) for s, m in collect_metrics(facts.eval_results) if s in ("test", "validation")), None)
    if headline:
        split, m = headline
        summary += f" Held-out {split} accuracy: {_percent(m['accuracy'])} top-1"
        if _is_number(m.get("top5_accuracy")):
            summary += f", {_percent(m['top5_accuracy'])} top-5"
        summary += f" on {m['num_examples']:,} images" if isinstance(m.get("num_examples"), int) else ""
        views = (facts.run_args or {}).get("test_time_augmentation", "none")
        single = (facts.eval_results or {}).get(f"{split}_single_view") or {}
        if views not in (None, "none"):
            summary += f", with {views} test-time augmentation"
            if _is_number(single.get("accuracy")):
                summary += f" (one view: {_percent(single['accuracy'])})"
        summary += "."
    return summary


def _training_data(facts, dataset_info, dataset_key) -> str:
    if dataset_info.get("description"):
        text = dataset_info["description"].strip()
        if dataset_info.get("url"):
            text += f" Source: <{dataset_info['url']}>."
    elif dataset_key:
        text = f"`{_last_component(dataset_key)}` (no description of this data set was provided)."
    else:
        return "Unknown: the folder this model was published from has no run_args.json or eval_results.json."
    split_keys = [k for k in ("test_fraction", "validation_fraction", "split_seed") if k in (facts.run_args or {})]
    if split_keys:
        text += ("\n\nSplits: " + ", ".join(f"`{k}` = {_fmt(facts.run_args[k])}" for k in split_keys)
                 + " (a fixed, stratified split where the data set has no test split of its own).")
    sizes = [f"{m['num_examples']:,} {label}" for label, m in collect_metrics(facts.eval_results)
             if label in ("test", "validation") and isinstance(m.get("num_examples"), int)]
    if sizes:
        text += " Evaluation images: " + ", ".join(sizes) + "."
    return text


def _training_procedure(facts, start_text) -> tuple[str, list]:
    args = facts.run_args
    if args is None:
        return "Unknown: the folder this model was published from has no run_args.json.", []
    intro = ("The run's resolved arguments (after its YAML config and command line) are in `run_args.json` in this "
             "repository; local paths in it are reduced to their last component.")
    hidden = {"model_name_or_path"}  # shown as "initialisation"
    optimizer = str(args.get("optimizer", "")).lower()
    if optimizer.startswith("adam"):
        hidden.add("momentum")
    elif optimizer:
        hidden.update({"adam_beta1", "adam_beta2"})
    hidden.add("num_epochs" if (args.get("max_steps") or 0) > 0 else "max_steps")
    hidden.add("warmup_ratio" if (args.get("warmup_steps") or 0) > 0 else "warmup_steps")
    rows = [("initialisation", start_text)]
    # Options that are off (0 / None) are left out; label smoothing 0 is kept, as the paper states it.
    optional = {"randaugment_num_ops", "randaugment_magnitude", "mixup_alpha", "cutmix_alpha", "drop_path_rate",
                "ema_decay", "layer_decay"}
    if not args.get("randaugment_num_ops"):
        hidden.add("randaugment_magnitude")
    if args.get("layer_decay") == 1:  # 1 = no layer-wise decay
        hidden.add("layer_decay")
    rows += [(label, _fmt(args[key])) for key, label in _TRAINING_ROWS
             if key in args and key not in hidden and not (key in optional and not args[key])]
    if facts.eval_results and isinstance(facts.eval_results.get("global_step"), int):
        rows.append(("optimiser steps done", f"{facts.eval_results['global_step']:,}"))
    return intro, rows


def _evaluation(facts) -> tuple[str, list, list]:
    rows = []
    for label, m in collect_metrics(facts.eval_results):
        images = f"{m['num_examples']:,}" if isinstance(m.get("num_examples"), int) else "–"
        loss = f"{m['loss']:.4f}" if _is_number(m.get("loss")) else "–"
        rows.append([_split_label(label), images, _percent(m.get("accuracy")), _percent(m.get("top5_accuracy")), loss])
    if rows:
        intro = ("From the run's `eval_results.json` (included in this repository), computed by hf_vit's evaluation "
                 "loop on the held-out splits after training.")
    else:
        intro = ("Unknown: the folder this model was published from has no evaluation results (eval_results.json). "
                 "Measure the accuracy on your data before relying on it.")
    few_shot = [(shots, _split_label(split) if split else "–", _percent(value))
                for shots, value, split in collect_few_shot(facts.eval_results)]
    return intro, rows, few_shot


def _hardware(facts, card_data) -> str:
    results = facts.eval_results
    if results is None:
        return "Unknown: the folder this model was published from records no training run."
    lines = []
    recorded = results.get("hardware") or card_data.get("hardware")
    lines.append(f"- Hardware: {recorded if isinstance(recorded, str) else json.dumps(recorded)}" if recorded
                 else "- Hardware: not recorded by this run.")
    if _is_number(results.get("train_seconds")):
        seconds = results["train_seconds"]
        line = f"- Training time: {seconds / 60:.1f} min ({seconds:.0f} s)" if seconds >= 60 \
            else f"- Training time: {seconds:.0f} s"
        if isinstance(results.get("global_step"), int):
            line += f" for {results['global_step']:,} optimiser steps"
        if _is_number(results.get("images_per_second")):
            line += f", {results['images_per_second']:.0f} images/s"
        lines.append(line)
    # What the run used (eval_results.json, since `mixed_precision: auto`), else what it asked for when that says it.
    precision = results.get("mixed_precision") or (facts.run_args or {}).get("mixed_precision")
    if precision and precision != "auto":
        lines.append(f"- Precision: {precision} mixed precision" if precision != "no" else "- Precision: float32")
    return "\n".join(lines)


def build_card(facts: ModelFolder, repo_id: str, card_data: dict | None = None):
    """(ModelCardData, template variables) for a model folder."""
    card_data = card_data or {}
    config = facts.config
    dataset_info = card_data.get("dataset") or {}
    dataset_key = facts.dataset
    dataset_name = dataset_info.get("name") or (_last_component(dataset_key) if dataset_key else None)
    dataset_type = dataset_info.get("type") or (_normalise_name(dataset_key) if dataset_key else None)
    model_name = repo_id.split("/")[-1]
    arch = architecture_name(config)
    height, width = as_pair(config.get("image_size", 224))
    id2label = config.get("id2label") or {}
    labels = [id2label.get(str(i), str(i)) for i in range(len(id2label))]
    num_labels = len(labels) or config.get("num_labels")
    base_model, start_text = base_model_of(facts, card_data)
    metadata = _metadata(facts, card_data, model_name, dataset_type, dataset_name, base_model)
    training_intro, training_rows = _training_procedure(facts, start_text)
    evaluation_intro, evaluation_rows, few_shot_rows = _evaluation(facts)
    pooling = config.get("pooling", "cls")
    limitations = card_data.get("limitations") or (
        "The training data is not described for this model: check that your images resemble it before relying on "
        "the predictions. The classifier always answers with one of its classes, also for images that show none.")
    variables = dict(
        title=card_data.get("title") or model_name,
        summary=(card_data.get("summary") or _summary(facts, arch, num_labels, start_text, dataset_name)).strip(),
        details=_details(config, facts, arch, labels, start_text, metadata.license),
        pooling_sentence={
            "cls": "the final LayerNorm's output at the class token feeds the classification head.",
            "gap": "the patch tokens are averaged after the final LayerNorm (global average pooling) and feed the head.",
        }.get(pooling, f"the tokens are pooled with `{pooling}` and feed the classification head."),
        intended_uses=(card_data.get("intended_uses") or (
            f"Image classification into the {num_labels} classes listed above, on images like the training data, "
            "and as a starting point for fine-tuning (replace the head; the encoder is `AutoModel`).")).strip(),
        limitations=limitations.strip() + (
            " A ViT trained from scratch on a small data set lacks the inductive biases of a CNN and generalises "
            "less well off-distribution (section 4.3 of the paper)."),
        repo_id=repo_id,
        example_label=labels[0] if labels else "LABEL_0",
        height=height,
        width=width,
        num_labels=num_labels,
        hidden_size=config.get("hidden_size"),
        ema_subfolder="ema" if facts.ema_folder else None,
        training_data=_training_data(facts, dataset_info, dataset_key),
        training_intro=training_intro,
        training_rows=training_rows,
        evaluation_intro=evaluation_intro,
        evaluation_rows=evaluation_rows,
        few_shot_rows=few_shot_rows,
        hardware=_hardware(facts, card_data),
        bibtex=PAPER_BIBTEX,
    )
    return metadata, variables


def render_model_card(folder, repo_id: str, *, card_data=None, template_path=None):
    """
    The `huggingface_hub.ModelCard` for a run folder or hf_vit model folder, rendered with `ModelCard.from_template`
    from `model_cards/template.md` (or `template_path`). `card_data`: a YAML path or dict (see `load_card_data`).
    """
    facts = folder if isinstance(folder, ModelFolder) else read_model_folder(folder)
    template = Path(template_path) if template_path else model_cards_dir() / TEMPLATE_NAME
    if not template.is_file():
        raise FileNotFoundError(f"Card template {template.name!r} does not exist; pass the path of a template file.")
    metadata, variables = build_card(facts, repo_id, load_card_data(card_data, facts.dataset))
    return ModelCard.from_template(metadata, template_path=str(template), **variables)


# ---------------------------------------------------------------------------------------------------------------------
# Local checks of a card (the Hub validates again on push: POST /api/validate-yaml)


def check_model_card(text: str, forbidden: tuple = ()) -> list[str]:
    """
    Problems with a rendered card, checked offline: the metadata parses with huggingface_hub's own `ModelCard` /
    `ModelCardData` (strict model-index parsing), has the fields the Hub needs for an image classifier, names valid
    repo ids, holds finite accuracies in [0, 1]; and no `forbidden` string (a token, a local path) appears anywhere.
    An empty list means the card is fine.
    """
    problems = []
    for secret in forbidden:
        if secret and secret in text:
            problems.append("the card contains a forbidden string (a token or a local path)")
            break
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as error:  # noqa: BLE001  (any parse failure is a problem to report)
        return problems + [f"metadata does not parse: {type(error).__name__}: {error}"]
    data = card.data
    if not card.content.startswith("---\n") or not card.text.strip():
        problems.append("the card needs a metadata block and a body")
    if data.pipeline_tag != "image-classification":
        problems.append(f"pipeline_tag is {data.pipeline_tag!r}, expected 'image-classification'")
    if not data.library_name:
        problems.append("library_name is missing")
    license_id = data.license
    if not isinstance(license_id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", license_id):
        problems.append(f"license {license_id!r} is not a Hub license id (e.g. 'apache-2.0', 'mit', 'other')")
    elif license_id == "other" and not (data.get("license_name") and data.get("license_link")):
        problems.append("license 'other' needs license_name and license_link")
    if not isinstance(data.tags, list) or not all(isinstance(t, str) and t for t in data.tags):
        problems.append("tags must be a list of non-empty strings")
    for field_name in ("datasets", "base_model"):
        value = data.get(field_name)
        for repo_id in ([value] if isinstance(value, str) else value or []):
            try:
                validate_repo_id(repo_id)
            except HFValidationError as error:
                problems.append(f"{field_name} entry {repo_id!r} is not a valid Hub id: {error}")
    for result in data.eval_results or []:
        value = result.metric_value
        in_range = _is_number(value) and math.isfinite(value) and 0 <= value <= 1
        if result.metric_type == "accuracy" and not in_range:
            name = result.metric_name or result.metric_type
            problems.append(f"model-index {name} = {value!r} is not an accuracy in [0, 1]")
    return problems
