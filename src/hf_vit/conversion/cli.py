"""`hf-vit convert SRC OUT`: any supported checkpoint -> a complete hf_vit folder (or a transformers / timm folder).

The converted model is compared with the source framework (where it is installed) before anything is written, and
the written folder is loaded back and compared again; OUT appears only when everything succeeded.
"""

from __future__ import annotations

import json
import os
import sys


SOURCES = ("npz", "timm", "transformers", "hf_vit")
TARGETS = ("hf_vit", "transformers", "timm")
# --resample -> (position_embedding_interpolation, position_embedding_align_corners, position_embedding_antialias)
RESAMPLING = {
    "reference": ("bilinear", True, False),
    "timm": ("bilinear", False, False),
    "bicubic": ("bicubic", False, False),
    "bicubic_antialias": ("bicubic", False, True),
}


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="Convert a checkpoint (original JAX .npz, timm, transformers' ViT family) into an hf_vit folder.",
        description=__doc__,
    )
    parser.add_argument("source", metavar="SRC", help="An .npz file, a timm state dict / folder, or a model folder")
    parser.add_argument("output", metavar="OUT", help="Folder to create (must not exist or be empty)")
    parser.add_argument("--from", dest="source_format", choices=SOURCES, help="Format of SRC (default: detected)")
    parser.add_argument("--to", dest="target_format", choices=TARGETS, default="hf_vit", help="Format of OUT")
    parser.add_argument("--image-size", type=int, nargs="+", metavar="N",
                        help="Resolution of the converted model (one value, or height width); position embeddings "
                        "are resampled")
    parser.add_argument("--resample", choices=sorted(RESAMPLING), default=None,
                        help="How position embeddings are resampled: 'reference' (bilinear, corners aligned, as the "
                        "original code), 'timm' (bilinear, half-pixel), 'bicubic' (half-pixel) or 'bicubic_antialias' "
                        "(timm's default, DINOv2 with registers). Default: the source's own (transformers' DeiT, "
                        "ViT-MAE, DINOv2: their bicubic), else 'reference'")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--num-labels", type=int, metavar="K", help="New zero-initialised head with K classes")
    labels.add_argument("--id2label", metavar="FILE",
                        help="JSON file with the class names ({\"0\": \"cat\", ...} or a list)")
    parser.add_argument("--keep-pre-logits", action="store_true", help="With a new head, keep the tanh pre-logits layer")
    parser.add_argument("--source-image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="Resolution SRC was trained at (needed only for non-square grids)")
    parser.add_argument("--num-heads", type=int, help="Attention heads (timm state dicts of non-standard width only)")
    parser.add_argument("--allow-unused", action="store_true", help="Convert even if SRC holds arrays no rule uses")
    parser.add_argument("--allow-pickle", action="store_true", help="Allow reading .pth/.bin pickle checkpoints")
    parser.add_argument("--no-check", action="store_true", help="Skip the numerical checks (large models, low memory)")
    parser.add_argument("--max-shard-size", default="2GB", help="Safetensors shard size (default: 2GB)")
    parser.add_argument("--overwrite", action="store_true",
                        help="Write into a non-empty OUT: the files the conversion writes replace their namesakes "
                             "there once all of them are complete; other files in OUT are left as they are")
    parser.set_defaults(run=run)


def detect_format(path) -> str | None:
    """The source format `path` looks like ("npz", "timm", "transformers", "hf_vit"), or None."""
    from ..transformers_vit_format import SUPPORTED_MODEL_TYPES
    from .sources import describe_file

    if os.path.isdir(path):
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            return None
        try:
            with open(config_file) as f:
                config = json.load(f)
        except (OSError, json.JSONDecodeError):
            return None
        if config.get("model_type") in SUPPORTED_MODEL_TYPES:
            return "transformers"
        if config.get("model_type") == "hf_vit":
            return "hf_vit"
        if "architecture" in config:
            return "timm"
        return None
    kind = describe_file(path)
    if kind == "an .npz archive":
        return "npz"
    if kind == "a safetensors file" or "torch.save" in kind or "pickle" in kind:
        return "timm"
    return None


def _fail(message: str) -> int:
    print(f"hf-vit convert: error: {message}", file=sys.stderr)
    return 2


def _overrides(args) -> dict:
    overrides = {}
    if args.image_size:
        if len(args.image_size) > 2:
            raise ValueError(f"--image-size takes one or two values (height width), got {args.image_size}.")
        size = args.image_size
        overrides["image_size"] = size[0] if len(size) == 1 or size[0] == size[1] else list(size)
    if args.resample is not None:
        interpolation, align_corners, antialias = RESAMPLING[args.resample]
        overrides["position_embedding_interpolation"] = interpolation
        overrides["position_embedding_align_corners"] = align_corners
        overrides["position_embedding_antialias"] = antialias
    if args.num_labels is not None:
        if args.num_labels < 0:
            raise ValueError(f"--num-labels must be >= 0, got {args.num_labels}.")
        overrides["num_labels"] = args.num_labels
    if args.id2label:
        overrides["id2label"] = read_id2label(args.id2label)
    return overrides


def read_id2label(path) -> dict[int, str]:
    """{index: name} from a JSON object {"0": "cat", ...} or a JSON list ["cat", ...]."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--id2label {path}: cannot read it as JSON ({error}).") from None
    if isinstance(data, list):
        data = dict(enumerate(data))
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--id2label {path}: expected a non-empty JSON object {{\"0\": \"name\", ...}} or list.")
    try:
        mapping = {int(k): str(v) for k, v in data.items()}
    except ValueError:
        raise ValueError(f"--id2label {path}: keys must be class indices (\"0\", \"1\", ...).") from None
    if sorted(mapping) != list(range(len(mapping))):
        raise ValueError(
            f"--id2label {path}: indices must be 0..{len(mapping) - 1} without gaps, got {sorted(mapping)[:10]}."
        )
    return mapping


def _load(args, source_format, overrides):
    from . import ConversionReport, load_npz, load_timm
    from .transformers_format import load_transformers

    common = dict(
        check=not args.no_check, output_loading_info=True, strict=not args.allow_unused,
        source_image_size=args.source_image_size,
    )
    if source_format == "npz":
        return load_npz(args.source, keep_pre_logits=args.keep_pre_logits, **common, **overrides)
    if source_format == "timm":
        return load_timm(
            args.source, num_attention_heads=args.num_heads, allow_pickle=args.allow_pickle, **common, **overrides
        )
    if source_format == "transformers":
        return load_transformers(args.source, allow_pickle=args.allow_pickle, **common, **overrides)
    # An hf_vit folder, to export elsewhere (or at another resolution / with another head).
    from ..modeling_hf_vit import ViTForImageClassification

    image_size = overrides.pop("image_size", None)
    head = {k: overrides.pop(k) for k in ("num_labels", "id2label") if k in overrides}
    model = ViTForImageClassification.from_pretrained(args.source, **head, ignore_mismatched_sizes=bool(head), **overrides)
    report = ConversionReport(args.source, "hf_vit")
    if image_size is not None:
        old = tuple(model.config.grid_size)
        model.resize_position_embeddings(image_size)
        config = model.config
        how = f"{config.position_embedding_interpolation}, align_corners={config.position_embedding_align_corners}"
        report.resampled_position_embeddings = (old, tuple(model.config.grid_size), how)
    return model.eval(), report


def _processor(args, source_format, model):
    from ..image_processing_hf_vit import ViTImageProcessor

    mean = std = [0.5, 0.5, 0.5]  # the original checkpoints' [-1, 1] input
    note = None
    if os.path.isdir(args.source):
        processor_file = os.path.join(args.source, "preprocessor_config.json")
        config_file = os.path.join(args.source, "config.json")
        if os.path.isfile(processor_file):
            with open(processor_file) as f:
                saved = json.load(f)
            mean, std = saved.get("image_mean", mean), saved.get("image_std", std)
        elif source_format == "timm" and os.path.isfile(config_file):
            with open(config_file) as f:
                pretrained_cfg = json.load(f).get("pretrained_cfg") or {}
            mean, std = pretrained_cfg.get("mean", mean), pretrained_cfg.get("std", std)
    elif source_format == "timm":
        note = ("note: a bare timm state dict does not say how its inputs were normalised; the processor uses mean = "
                "std = 0.5 ([-1, 1]); edit preprocessor_config.json if the model expects ImageNet statistics")
    height, width = model.config.image_hw
    return ViTImageProcessor(size={"height": height, "width": width}, image_mean=list(mean), image_std=list(std)), note


def _save_transformers_processor(processor, folder) -> None:
    """preprocessor_config.json for transformers' own ViTImageProcessor (same resize and normalisation)."""
    settings = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": dict(processor.size),
        "resample": int(processor.resample),
        "do_rescale": True,
        "rescale_factor": processor.rescale_factor,
        "do_normalize": True,
        "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std),
        "do_convert_rgb": True,
    }
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(settings, f, indent=2)


def _verify_written(folder, target_format, model, report):
    """Load what was written with the framework that will read it and compare with the converted model."""
    import torch

    from .checks import compare, hf_vit_outputs, sample_images

    pixel_values = sample_images(model.config)
    ours = hf_vit_outputs(model, pixel_values)
    with torch.no_grad():
        if target_format == "hf_vit":
            from ..modeling_hf_vit import ViTForImageClassification

            again = ViTForImageClassification.from_pretrained(folder).eval()
            report.max_abs_difference["the written hf_vit folder"] = compare(
                ours, hf_vit_outputs(again, pixel_values), "the written folder", folder
            )
        elif target_format == "transformers":
            import transformers

            if model.config.num_labels > 0:
                written = transformers.ViTForImageClassification.from_pretrained(folder).eval()
                theirs = {"logits": written(pixel_values).logits.numpy()}
            else:
                written = transformers.ViTModel.from_pretrained(folder).eval()
                theirs = {"encoded": written(pixel_values).last_hidden_state.numpy()}
            report.max_abs_difference["the written transformers folder"] = compare(ours, theirs, "transformers", folder)
        else:
            from .checks import available

            if not available("timm"):
                report.notes.append("timm is not installed: the written timm folder was not loaded back")
                return
            import timm

            written = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            encoded = written.forward_features(pixel_values)
            theirs = {"encoded": encoded.numpy()}
            if model.config.num_labels > 0:
                theirs["logits"] = written.forward_head(encoded).numpy()
            report.max_abs_difference["the written timm folder"] = compare(ours, theirs, "timm", folder)


def run(args) -> int:
    from .keymap import ConversionError
    from .sources import describe_file
    from .timm_format import save_timm
    from .transformers_format import save_transformers_vit
    from .writing import atomic_folder, model_card

    import transformers

    transformers.utils.logging.disable_progress_bar()
    if not os.path.exists(args.source):
        return _fail(f"{args.source}: no such file or folder.")
    detected = detect_format(args.source)
    source_format = args.source_format or detected
    if source_format is None:
        return _fail(
            f"{args.source} is {describe_file(args.source)}; cannot tell its format. Supported: an .npz (--from npz), "
            "a timm state dict or folder (--from timm), a transformers ViT-family folder (--from transformers)."
        )
    if args.source_format and detected and detected != args.source_format:
        return _fail(
            f"{args.source} looks like a {detected} checkpoint ({describe_file(args.source)}), not --from "
            f"{args.source_format}. Pass --from {detected}, or leave --from out."
        )
    try:
        overrides = _overrides(args)
        model, report = _load(args, source_format, overrides)
        processor, note = _processor(args, source_format, model)
        if note:
            report.notes.append(note)
        with atomic_folder(args.output, overwrite=args.overwrite) as folder:
            if args.target_format == "hf_vit":
                model.save_pretrained(folder, max_shard_size=args.max_shard_size)
                processor.save_pretrained(folder)
            elif args.target_format == "transformers":
                save_transformers_vit(model, folder, max_shard_size=args.max_shard_size)
                _save_transformers_processor(processor, folder)
            else:
                save_timm(model, folder, processor)  # timm keeps the preprocessing in config.json
            if not args.no_check:
                _verify_written(folder, args.target_format, model, report)
            with open(os.path.join(folder, "README.md"), "w") as f:
                f.write(model_card(model, report, args.source, args.target_format))
    except (ConversionError, ValueError, OSError) as error:
        return _fail(str(error))
    print(report.summary())
    print(f"wrote {args.output} ({args.target_format})")
    return 0


__all__ = ["add_subcommand", "detect_format", "read_id2label", "run"]
