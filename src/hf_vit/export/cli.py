"""`hf-vit export MODEL OUT --format onnx`: a saved model folder -> a deployable file, checked against PyTorch.

The file is written only when ONNX Runtime's outputs on random batches agree with PyTorch's within --atol; an existing
OUT is replaced only with --overwrite. Needs `pip install "hf-vit[export]"`.
"""

import sys


FORMATS = ("onnx",)
TASKS = ("auto", "image-classification", "feature-extraction")


def add_subcommand(subparsers) -> None:
    from .onnx import DEFAULT_ATOL, MIN_OPSET, ONNX_OPSET

    parser = subparsers.add_parser(
        "export",
        help="Export a model folder to ONNX (dynamic batch), checked against PyTorch before it is kept.",
        description=__doc__,
    )
    parser.add_argument("model", metavar="MODEL", help="Model folder or Hub id (hf_vit or transformers ViT)")
    parser.add_argument("output", metavar="OUT", help="File to write, e.g. model.onnx")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="Output format (default: onnx)")
    parser.add_argument(
        "--task", choices=TASKS, default="auto",
        help="What the graph outputs: 'image-classification' (logits) or 'feature-extraction' (last_hidden_state, "
        "pooler_output); default: from the folder's `architectures`",
    )
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET}, >= {MIN_OPSET})")
    parser.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL,
        help=f"Largest max |ONNX Runtime - PyTorch| accepted on the check batches (default {DEFAULT_ATOL:g})",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace OUT if it exists")
    parser.set_defaults(run=run)


def _task_of(model_name: str, requested: str) -> str:
    if requested != "auto":
        return requested
    from transformers import AutoConfig

    import hf_vit  # noqa: F401  (registers the Auto classes)

    architectures = AutoConfig.from_pretrained(model_name).architectures or []
    if any(name.endswith("ForImageClassification") for name in architectures):
        return "image-classification"
    return "feature-extraction"


def run(args) -> int:
    from .onnx import (
        EXPORT_TASKS,
        MIN_OPSET,
        MissingExportDependencies,
        OnnxMismatchError,
        export_and_check,
        require_export_dependencies,
    )

    def fail(message: str) -> int:
        print(f"hf-vit export: {message}", file=sys.stderr)
        return 2

    try:
        require_export_dependencies()
    except MissingExportDependencies as error:
        return fail(str(error))
    if args.opset < MIN_OPSET:
        return fail(f"--opset must be >= {MIN_OPSET} (LayerNormalization), got {args.opset}.")
    if not args.atol >= 0:
        return fail(f"--atol must be >= 0, got {args.atol}.")
    import os

    if os.path.exists(args.output) and not args.overwrite:
        return fail(f"{args.output} exists; pass --overwrite to replace it.")

    import hf_vit

    try:
        task = _task_of(args.model, args.task)
        model_class = getattr(hf_vit, EXPORT_TASKS[task][0])
        model = model_class.from_pretrained(args.model).eval()
    except (OSError, ValueError) as error:
        return fail(str(error))
    try:
        result = export_and_check(model, args.output, atol=args.atol, opset=args.opset, overwrite=args.overwrite)
    except (OnnxMismatchError, FileExistsError, FileNotFoundError) as error:
        return fail(str(error))
    print(
        f"wrote {result.path} (ONNX opset {result.opset}, input pixel_values (batch, {model.config.num_channels}, "
        f"{model.config.image_hw[0]}, {model.config.image_hw[1]}) with a dynamic batch, outputs "
        f"{', '.join(result.outputs)}); ONNX Runtime vs PyTorch on random batches: max abs difference "
        f"{result.max_abs_diff:.3g} (tolerance {result.atol:g})"
    )
    return 0
