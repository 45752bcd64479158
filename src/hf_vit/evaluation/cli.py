"""`hf-vit evaluate MODEL --dataset ...`: accuracy (top-1/top-5, confusion matrix) and few-shot linear accuracy of a
saved model on any data source the recipes take (ViT paper, section 4.1)."""

import json
import sys

from ..export.precision import add_precision_arguments
from .tta import TEST_TIME_AUGMENTATIONS


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Accuracy and few-shot linear accuracy of a model folder on a data set.",
        description=(
            "Evaluate a model folder (hf_vit or transformers ViT) on a data set: 'digits', a folder of IDX files, an "
            "image folder or a Hub dataset id. Reports top-1/top-5 accuracy and the confusion matrix on the test "
            "split, and with --fewshot the paper's few-shot linear accuracy (frozen representation, closed-form "
            "ridge regression to {-1,1}^K, shots drawn from the training split)."
        ),
    )
    parser.add_argument("model", help="Model folder (or Hub id) with config.json and weights")
    parser.add_argument("--dataset", required=True, help="'digits', an IDX or image folder, or a Hub dataset id")
    parser.add_argument("--dataset-config", default=None, help="Hub dataset configuration name")
    parser.add_argument("--split", default="auto", help="Split to evaluate on (default: test, else validation, else a held-out part of train)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="Held-out share when the data set has no test split")
    parser.add_argument("--split-seed", type=int, default=0, help="Seed of that held-out split (0 = the recipes')")
    parser.add_argument("--label-names", nargs="+", default=None, help="Class names in label order (IDX files carry none)")
    parser.add_argument("--max-examples", type=int, default=0, help="Evaluate on the first N examples only (0 = all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--tta", choices=TEST_TIME_AUGMENTATIONS, default="none",
                        help="Test-time augmentation: 'flip' averages each image's and its mirror image's class "
                             "probabilities (for data whose labels survive a flip; default: one view)")
    parser.add_argument("--fewshot", action="store_true", help="Also run few-shot linear evaluation")
    parser.add_argument("--fewshot-only", action="store_true", help="Only few-shot (models without a matching head)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 25], help="Shots per class")
    parser.add_argument("--holdout-per-class", type=int, default=10,
                        help="Training images per class held out to choose the ridge regulariser")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the few-shot draws")
    parser.add_argument("--on-bad-image", choices=["skip", "fail"], default="skip")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text")
    add_precision_arguments(parser)
    parser.set_defaults(run=_run)


def _run(args) -> int:
    import torch
    from torch.utils.data import DataLoader

    from ..data import DataArguments, ImageClassificationCollator, load_image_classification_data
    from ..export import load_for_inference
    from ..image_processing_hf_vit import ViTImageProcessor
    from ..modeling_hf_vit import ViTForImageClassification

    from .fewshot import FewShotEvaluator
    from .metrics import StreamingClassificationMetrics
    from .tta import classify

    data_args = DataArguments(
        dataset=args.dataset, dataset_config=args.dataset_config, test_split=args.split,
        test_fraction=args.test_fraction, validation_fraction=0.0, split_seed=args.split_seed,
        label_names=args.label_names, max_eval_examples=args.max_examples, on_bad_image=args.on_bad_image,
        num_workers=args.num_workers,
    )
    try:
        data = load_image_classification_data(data_args)
        model = load_for_inference(ViTForImageClassification, args.model, args.dtype, args.device)
    except (OSError, ValueError) as error:
        print(f"hf-vit evaluate: {error}", file=sys.stderr)
        return 2
    if data.test is None:
        print("hf-vit evaluate: the data set has no split to evaluate on (--split).", file=sys.stderr)
        return 2
    try:
        processor = ViTImageProcessor.from_pretrained(args.model)
    except (OSError, ValueError):
        processor = ViTImageProcessor()
    device = next(model.parameters()).device
    height, width = model.config.image_hw
    processor.size = {"height": height, "width": width}
    collate = ImageClassificationCollator(processor)
    report = {"model": args.model, "dataset": data.name, "num_examples": len(data.test), "label_names": data.label_names,
              "dtype": args.dtype, "device": str(device)}

    if not args.fewshot_only:
        if model.config.num_labels != data.num_labels:
            print(
                f"hf-vit evaluate: the model has {model.config.num_labels} output classes but {args.dataset} has "
                f"{data.num_labels}; accuracy needs a head for these classes (use --fewshot-only for few-shot).",
                file=sys.stderr,
            )
            return 2
        # Counted batch by batch: memory does not grow with the number of images (nor, beyond
        # CONFUSION_MATRIX_MAX_CLASSES classes, with the square of the classes).
        metrics = StreamingClassificationMetrics(model.config.num_labels, with_confusion_matrix=True)
        with torch.no_grad():
            for batch in DataLoader(data.test, batch_size=args.batch_size, collate_fn=collate, num_workers=args.num_workers):
                logits = classify(model, batch["pixel_values"].to(device), args.tta).cpu()
                metrics.update(**metrics.per_example(logits, batch["labels"]))
        report["test"] = metrics.compute()
        report["test_time_augmentation"] = args.tta
    if args.fewshot or args.fewshot_only:
        try:
            evaluator = FewShotEvaluator(data.train, data.test, collate, shots=args.shots, seed=args.seed,
                                         holdout_per_class=args.holdout_per_class, batch_size=args.batch_size)
            report["fewshot"] = evaluator(model)
        except ValueError as error:
            print(f"hf-vit evaluate: {error}", file=sys.stderr)
            return 2

    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.model} on {data.name} ({len(data.test)} examples; {args.dtype} on {device})")
    if "test" in report:
        test = report["test"]
        views = "" if args.tta == "none" else f"   ({args.tta} test-time augmentation)"
        print(f"top-1 accuracy {test['accuracy']:.4f}   top-5 accuracy {test['top5_accuracy']:.4f}   "
              f"loss {test['loss']:.4f}{views}")
        if "confusion_matrix" in test and len(data.label_names) <= 30:  # readable on a terminal; --json has it all
            names = [name[:10] for name in data.label_names]
            width = max(6, *(len(n) for n in names))
            print("confusion matrix (rows: true class, columns: predicted class)")
            print(" " * width + " " + " ".join(f"{i:>6d}" for i in range(len(names))))
            for i, row in enumerate(test["confusion_matrix"]):
                print(f"{names[i]:>{width}s} " + " ".join(f"{v:>6d}" for v in row))
    for key, value in report.get("fewshot", {}).items():
        if key.endswith("accuracy"):
            print(f"{key.split('/')[-1].replace('_accuracy', '')} linear accuracy {value:.4f}")
    return 0
