"""`hf-vit`: command-line entry points.

`predict` and `info` live here; every other subcommand lives with the subpackage it drives and is registered through
`SUBCOMMAND_MODULES`: each such module defines `add_subcommand(subparsers)`, which adds its parser and sets
`run=<function(args) -> int>` as a default. Imports stay lazy so that `hf-vit --help` is quick.
"""

import argparse
import importlib
import json
import sys

# Modules that contribute subcommands (each defines `add_subcommand(subparsers)`).
SUBCOMMAND_MODULES: list[str] = [
    "hf_vit.analysis.cli", "hf_vit.training.hub_cli", "hf_vit.conversion.cli", "hf_vit.evaluation.cli",
    "hf_vit.export.cli",
]


def _predict(args) -> int:
    import transformers
    from PIL import Image

    import hf_vit  # noqa: F401  (registers the Auto classes)
    from hf_vit.export import load_for_inference

    try:
        model = load_for_inference(transformers.AutoModelForImageClassification, args.model, args.dtype, args.device)
        processor = transformers.AutoImageProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        print(f"hf-vit predict: {error}", file=sys.stderr)
        return 2
    classifier = transformers.pipeline(
        "image-classification", model=model, image_processor=processor, device=next(model.parameters()).device
    )
    for path in args.images:
        try:
            image = Image.open(path)
        except (OSError, ValueError) as error:
            print(f"{path}: cannot read this image ({error})", file=sys.stderr)
            return 2
        predictions = classifier(image, top_k=args.top_k)
        if args.json:
            print(json.dumps({"image": path, "predictions": predictions}))
        else:
            print(f"{path}: " + ", ".join(f"{p['label']} ({p['score']:.3f})" for p in predictions))
    return 0


def _info(args) -> int:
    import torch

    import hf_vit  # noqa: F401
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(args.model)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    fields = {
        "model_type": config.model_type,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "pooling": getattr(config, "pooling", "cls"),
        "num_labels": config.num_labels,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    print(json.dumps(fields, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .export.precision import add_precision_arguments

    parser = argparse.ArgumentParser(prog="hf-vit", description="The Vision Transformer, Hugging Face-compatible.")
    parser.add_argument("--version", action="version", version=f"hf-vit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="Classify images with a saved model folder (or Hub id).")
    predict.add_argument("model", help="Model folder or Hub id with a preprocessor_config.json")
    predict.add_argument("images", nargs="+", help="Image files")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--json", action="store_true", help="One JSON line per image")
    add_precision_arguments(predict)
    predict.set_defaults(run=_predict)

    info = commands.add_parser("info", help="Architecture and parameter count of a model folder.")
    info.add_argument("model")
    info.set_defaults(run=_info)

    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
