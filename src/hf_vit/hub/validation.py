"""Checking an assembled repository before anything is sent: the card's metadata, no token or local path in any
text, and every model in it loads with `trust_remote_code=True` in an interpreter where hf_vit is not importable,
gives hf_vit's logits there and classifies a real photo through `pipeline("image-classification")`."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..image_processing_hf_vit import ViTImageProcessor
from ..modeling_hf_vit import ViTForImageClassification
from ..run_folder import CONFIG_NAME
from .cards import check_model_card, strip_local_paths


_TOKEN_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

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
    try:
        from sklearn.datasets import load_sample_images

        photos = load_sample_images()
        image = Image.fromarray(photos.images[0])
    except ImportError:
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
    stage = Path(stage_dir)
    problems = [f"README.md: {p}" for p in check_model_card((stage / "README.md").read_text(), forbidden)]
    for path in sorted(stage.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".md", ".yaml", ".txt"):
            text = path.read_text(errors="replace")
            if any(s and s in text for s in forbidden):
                problems.append(f"{path.relative_to(stage)}: contains a token or a local absolute path")
    if problems:
        raise ValueError("The assembled repository is not ready to publish:\n- " + "\n- ".join(problems))

    models = ["."] + sorted(p.name for p in stage.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())
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


