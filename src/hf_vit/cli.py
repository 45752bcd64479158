"""`hf-vit`: command-line entry points.

`predict` and `info` live here; every other subcommand lives with the subpackage it drives and is registered through
`SUBCOMMAND_MODULES`: each such module defines `add_subcommand(subparsers)`, which adds its parser and sets
`run=<function(args) -> int>` as a default. Imports stay lazy so that `hf-vit --help` is quick.
"""

import importlib
import json
import sys

from .cli_support import (
    DEBUG_FLAG,
    ArgumentParser,
    USER_ERRORS,
    check_model_location,
    debug_requested,
    describe_error,
    report_user_error,
)

# Modules that contribute subcommands (each defines `add_subcommand(subparsers)`).
SUBCOMMAND_MODULES: list[str] = [
    "hf_vit.analysis.cli", "hf_vit.hub.cli", "hf_vit.conversion.cli", "hf_vit.evaluation.cli", "hf_vit.export.cli",
]


def _predict(args) -> int:
    import transformers
    from PIL import Image

    import hf_vit  # noqa: F401  (registers the Auto classes)

    from .export import load_for_inference

    location = check_model_location(args.model)
    model = load_for_inference(transformers.AutoModelForImageClassification, location, args.dtype, args.device)
    processor = transformers.AutoImageProcessor.from_pretrained(location)
    classifier = transformers.pipeline(
        "image-classification", model=model, image_processor=processor, device=next(model.parameters()).device
    )
    failures = 0
    for path in args.images:  # an unreadable image is reported and skipped; the others are still classified
        try:
            image = Image.open(path)
            image.load()
        except (OSError, ValueError) as error:
            print(f"hf-vit predict: {path}: cannot read this image ({describe_error(error)})", file=sys.stderr)
            failures += 1
            continue
        predictions = classifier(image, top_k=args.top_k)
        if args.json:
            print(json.dumps({"image": path, "predictions": predictions}))
        else:
            print(f"{path}: " + ", ".join(f"{p['label']} ({p['score']:.3f})" for p in predictions))
    if failures:
        print(f"hf-vit predict: {failures} of {len(args.images)} image(s) could not be read", file=sys.stderr)
        return 2
    return 0


def _info(args) -> int:
    import torch
    from transformers import AutoConfig

    from . import modeling_hf_vit

    config = AutoConfig.from_pretrained(check_model_location(args.model))
    # The saved class (config.architectures), so that the count is that of the saved weights, head included.
    name = (getattr(config, "architectures", None) or ["ViTModel"])[0]
    model_class = getattr(modeling_hf_vit, name, None) if config.model_type == "hf_vit" else None
    if model_class is None:
        raise ValueError(f"{args.model}: `hf-vit info` describes hf_vit models; this one is a {config.model_type!r} "
                         f"{name} (convert it with `hf-vit convert` first).")
    with torch.device("meta"):
        model = model_class(config)
    base = getattr(model, model.base_model_prefix, model)
    fields = {
        "model_type": config.model_type,
        "class": name,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "pooling": getattr(config, "pooling", "cls"),
        "num_labels": config.num_labels,
        "parameters": sum(p.numel() for p in model.parameters()),  # the whole saved model, head included
        "encoder_parameters": sum(p.numel() for p in base.parameters()),  # without the head
    }
    print(json.dumps(fields, indent=2))
    return 0


def build_parser() -> ArgumentParser:
    from . import __version__
    from .export.precision import add_precision_arguments

    parser = ArgumentParser(prog="hf-vit", description="The Vision Transformer, Hugging Face-compatible.",
                            epilog=f"User errors are one line and exit code 2; {DEBUG_FLAG} (anywhere) shows the traceback.")
    parser.add_argument("--version", action="version", version=f"hf-vit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="Classify images with a saved model folder (or Hub id).")
    predict.add_argument("model", help="Model folder or Hub id with a preprocessor_config.json")
    predict.add_argument("images", nargs="+", help="Image files")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--json", action="store_true", help="One JSON line per image")
    add_precision_arguments(predict)
    predict.set_defaults(run=_predict)

    info = commands.add_parser("info", help="Architecture and parameter count (whole model and encoder) of a model folder.")
    info.add_argument("model")
    info.set_defaults(run=_info)

    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(commands)
    return parser


def main(argv=None) -> int:
    """`hf-vit ...`: a user error is one message on stderr and exit code 2 (see `cli_support.run_command`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    args = build_parser().parse_args(argv)
    if debug:
        return args.run(args)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        return report_user_error(f"hf-vit {args.command}", error)


if __name__ == "__main__":
    sys.exit(main())
