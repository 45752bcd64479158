"""Accuracy of one saved classifier in float32, bf16 and int8 on the same test images, and how many predictions change.

What `hf-vit evaluate MODEL --dataset D --dtype X` reports for each X, in one table, from one load of the data:
one-view top-1 accuracy, the change against float32 in points, and the number of test images whose predicted class
differs from float32's. int8 is torch's dynamic quantization of every `nn.Linear` (`hf_vit.export.quantize_dynamic_int8`)
in its two schemes: one scale per weight matrix (torch's default, what `--dtype int8` runs) and one per output feature.
Activations are quantized per call over the whole batch, so int8's figures depend a little on --batch-size (the
evaluate command's default, 256, here too).

    python bench/accuracy_by_dtype.py outputs/fashion_mnist_vit --dataset /usr/share/datasets/fashion-mnist
    python bench/accuracy_by_dtype.py MODEL --dataset digits --max-examples 500 --json results.json
"""

import argparse
import os
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from common import environment, markdown_table, write_json  # noqa: E402


# row name -> (inference dtype, int8 scheme)
ROWS = {
    "float32": ("float32", None),
    "bfloat16": ("bfloat16", None),
    "int8 (per-tensor weights, --dtype int8)": ("int8", "per_tensor"),
    "int8 (per-channel weights)": ("int8", "per_channel"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a saved classifier folder (hf_vit or transformers ViT)")
    parser.add_argument("--dataset", required=True, help="'digits', an IDX or image folder, or a Hub dataset id")
    parser.add_argument("--max-examples", type=int, default=0, help="first N test images only (0: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch.utils.data import DataLoader

    from hf_vit import ViTForImageClassification, ViTImageProcessor
    from hf_vit.export import prepare_for_inference, quantize_dynamic_int8
    from hf_vit.data import DataArguments
    from hf_vit.data import ImageClassificationCollator, load_image_classification_data

    data = load_image_classification_data(
        DataArguments(dataset=args.dataset, validation_fraction=0.0, max_eval_examples=args.max_examples)
    )
    model32 = ViTForImageClassification.from_pretrained(args.model).eval()
    try:
        processor = ViTImageProcessor.from_pretrained(args.model)
    except (OSError, ValueError):
        processor = ViTImageProcessor()
    height, width = model32.config.image_hw
    processor.size = {"height": height, "width": width}
    batches = list(DataLoader(data.test, batch_size=args.batch_size, collate_fn=ImageClassificationCollator(processor)))
    labels = torch.cat([batch["labels"] for batch in batches])

    env = environment(("transformers", "hf-vit"))
    print(f"{args.model} on {data.name}: {len(labels)} test images, batch {args.batch_size}, torch {env['torch']}, "
          f"{env['torch_threads']} threads\n", flush=True)
    predictions, rows, results = {}, [], []
    for name, (dtype, scheme) in ROWS.items():
        if scheme is not None:
            model = quantize_dynamic_int8(model32, scheme=scheme)
        else:
            import copy

            model = prepare_for_inference(copy.deepcopy(model32), dtype, "cpu")
        start = time.perf_counter()
        with torch.inference_mode():
            predicted = torch.cat([model(pixel_values=b["pixel_values"]).logits.float().argmax(-1) for b in batches])
        seconds = time.perf_counter() - start
        predictions[name] = predicted
        accuracy = (predicted == labels).double().mean().item()
        reference = predictions["float32"]
        base = (reference == labels).double().mean().item()
        changed = int((predicted != reference).sum())
        rows.append([name, f"{100 * accuracy:.2f}", "-" if name == "float32" else f"{100 * (accuracy - base):+.2f}",
                     "-" if name == "float32" else changed, f"{len(labels) / seconds:.0f}"])
        results.append({"row": name, "dtype": dtype, "scheme": scheme, "accuracy": accuracy,
                        "change_points": 100 * (accuracy - base), "changed_predictions": changed,
                        "images_per_s": len(labels) / seconds})
        print(f"done: {name}", file=sys.stderr, flush=True)
        del model
    print(markdown_table(["format", "top-1 accuracy (%)", "change vs float32 (points)", "predictions changed",
                          "images/s (this pass)"], rows))
    if args.json:
        write_json(args.json, {"environment": env, "settings": vars(args), "results": results})


if __name__ == "__main__":
    sys.exit(main())
