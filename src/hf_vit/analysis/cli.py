"""`hf-vit analyze MODEL --images DIR_OR_FILES --out DIR`: the paper's analysis figures (section 4.5) for a model."""

import os
import re
import sys


def _load_model(name: str, attn_implementation: str | None):
    """
    A model from a folder or Hub id, as the hf_vit class it was saved as (transformers' "vit" checkpoints are
    translated on load). Only a name of the form `owner/model` is looked up on the Hub; anything else that does not
    exist is reported at once as a missing folder.
    """
    import hf_vit

    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise FileNotFoundError(f"{name}: not a saved model (the folder has no config.json).")
    if not os.path.exists(name) and not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise FileNotFoundError(f"{name}: no such model folder.")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name)
        architectures = getattr(config, "architectures", None) or []
        model_class = next(
            (getattr(hf_vit, a) for a in architectures if isinstance(getattr(hf_vit, a, None), type)), hf_vit.ViTModel
        )
        return model_class.from_pretrained(name, **kwargs)
    except OSError as error:
        where = "cannot load this model folder" if os.path.isdir(name) else "no such model folder, and no Hub model"
        raise FileNotFoundError(f"{name}: {where} ({error}).") from error


def _load_processor(name: str, config):
    """The model's saved image processor, or one at the model's resolution with the paper's [-1, 1] inputs."""
    from hf_vit import ViTImageProcessor

    height, width = config.image_hw
    try:
        processor = ViTImageProcessor.from_pretrained(name)
    except (OSError, ValueError):
        processor = ViTImageProcessor(size={"height": height, "width": width})
    if config.num_channels == 1:
        # A greyscale model: the images are opened as "L"; one mean/std entry.
        settings = {**processor.to_dict(), "do_convert_rgb": False}
        settings.update(image_mean=list(processor.image_mean)[:1], image_std=list(processor.image_std)[:1])
        processor = ViTImageProcessor(**settings)
    return processor


def run(args) -> int:
    from .report import analyze_images, find_images

    try:
        paths = find_images(args.images)
        model = _load_model(args.model, args.attn_implementation)
        processor = _load_processor(args.model, model.config)
        if args.max_images is not None:
            paths = paths[: args.max_images]
        result = analyze_images(
            model,
            processor,
            paths,
            args.out,
            batch_size=args.batch_size,
            num_overlays=args.num_overlays,
            head_fusion=args.head_fusion,
            overlay_style=args.overlay_style,
            sum_filter_channels=args.sum_filter_channels,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as error:  # bad model or images: the message names the file or field
        print(f"hf-vit analyze: {error}", file=sys.stderr)
        return 2
    for key, name in result["figures"].items():
        print(os.path.join(args.out, name))
    print(os.path.join(args.out, "analysis.json"))
    for key, reason in result["skipped"].items():
        print(f"skipped {key}: {reason}", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_subcommand(subparsers) -> None:
    from .attention import HEAD_FUSIONS

    parser = subparsers.add_parser(
        "analyze",
        help="The paper's analysis figures (attention rollout, attention distance, position embeddings, filters).",
        description="Attention rollout and maps, mean attention distance per layer and head, position-embedding "
        "similarity and patch-embedding filters of a model over a set of images (ViT paper, section 4.5). "
        "Writes PNGs and analysis.json into --out.",
    )
    parser.add_argument("model", help="Model folder or Hub id")
    parser.add_argument("--images", nargs="+", required=True, help="Image files and/or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="Output folder for the PNGs and analysis.json")
    parser.add_argument("--max-images", type=_positive_int, default=None, help="Use the first N images (sorted)")
    parser.add_argument("--batch-size", type=_positive_int, default=8)
    parser.add_argument("--num-overlays", type=_positive_int, default=6, help="Images shown in the rollout figure")
    parser.add_argument("--head-fusion", choices=HEAD_FUSIONS, default="mean", help="How rollout fuses the heads")
    parser.add_argument("--overlay-style", choices=("heatmap", "mask"), default="heatmap")
    parser.add_argument(
        "--sum-filter-channels",
        action="store_true",
        help="Show the patch-embedding filters summed over the colour channels (for a model trained on greyscale "
        "images replicated to RGB: only that sum is learned)",
    )
    parser.add_argument(
        "--attn-implementation",
        default=None,
        help="Load the model with this attention backend (sdpa by default); the weights are exact under any backend",
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bar")
    parser.set_defaults(run=run)
