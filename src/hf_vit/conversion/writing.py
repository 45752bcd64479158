"""Writing a converted model: a complete folder, all or nothing.

Everything goes to a temporary folder beside OUT first (same file system), is checked there, and only then renamed to
OUT; on any error the temporary folder is removed and OUT is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_folder(out_dir, overwrite: bool = False):
    """Yield a temporary folder beside `out_dir`; when the block ends without error its files go to `out_dir`.

    A new `out_dir` is the temporary folder renamed. An existing non-empty `out_dir` is an error unless `overwrite`;
    then only the files this conversion wrote replace their namesakes there, one atomic rename each, once the new
    folder is complete; other files in `out_dir` are left as they are."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    exists = os.path.lexists(out_dir)
    if exists and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output path.")
    if exists and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another output folder or pass --overwrite "
                              "(it replaces only the files the conversion writes).")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        yield tmp
        if exists:
            for folder, _, files in os.walk(tmp):
                target = os.path.join(out_dir, os.path.relpath(folder, tmp))
                os.makedirs(target, exist_ok=True)
                for name in files:
                    os.replace(os.path.join(folder, name), os.path.join(target, name))
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# How to load the written folder, per target format.
_USAGE = {
    "hf_vit": [
        "import hf_vit  # or pass trust_remote_code=True where hf_vit is not installed",
        "from transformers import pipeline",
        'classifier = pipeline("image-classification", model="<this folder>")',
    ],
    "transformers": [
        "from transformers import pipeline  # stock transformers' ViT",
        'classifier = pipeline("image-classification", model="<this folder>")',
    ],
    "timm": [
        "import timm",
        'model = timm.create_model("local-dir:<this folder>", pretrained=True)',
    ],
}


def model_card(model, report, source_name: str, target: str = "hf_vit") -> str:
    """A short README.md stub naming the source of the weights and how the conversion was checked."""
    config = model.config
    height, width = config.image_hw
    patch = "x".join(str(p) for p in dict.fromkeys(config.patch_hw))
    labels = f"{config.num_labels} classes" if config.num_labels else "no classifier (features)"
    lines = [
        "---",
        f"library_name: {'timm' if target == 'timm' else 'transformers'}",
        "pipeline_tag: image-classification" if config.num_labels else "pipeline_tag: image-feature-extraction",
        "tags:",
        f"- {target}",
        "- vision-transformer",
        "- converted",
        "---",
        "",
        f"# {os.path.basename(source_name.rstrip('/'))} (hf_vit)",
        "",
        f"A Vision Transformer converted with `hf-vit convert` ({target} format) from "
        f"`{os.path.basename(source_name.rstrip('/'))}` "
        f"({report.format}{', ' + report.layout if report.layout else ''}). The weights are the source's; their "
        "license and citation are the source's too.",
        "",
        f"- architecture: {config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} "
        f"heads, MLP {config.intermediate_size}, patch {patch}, pooling `{config.pooling}`"
        + (f", pre-logits {config.representation_size}" if config.representation_size else ""),
        f"- input: {height}x{width}; {labels}; activation `{config.hidden_act}`, LayerNorm eps {config.layer_norm_eps}",
    ]
    if report.resampled_position_embeddings is not None:
        old, new, how = report.resampled_position_embeddings
        lines.append(f"- position embeddings resampled from a {old[0]}x{old[1]} to a {new[0]}x{new[1]} grid ({how})")
    if report.dropped_keys:
        lines.append(f"- source head dropped, new zero-initialised classifier ({len(report.dropped_keys)} arrays dropped)")
    for name, value in report.max_abs_difference.items():
        lines.append(f"- max abs difference vs {name}: {value:.3g}")
    lines += ["", "```python", *_USAGE[target], "```", ""]
    return "\n".join(lines)


__all__ = ["atomic_folder", "model_card"]
