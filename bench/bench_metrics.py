"""Evaluation metrics at scale: time and peak memory of counting top-1/top-5/loss (and the confusion matrix where it
is kept) the old way (every logit gathered, then `evaluate`'s modules) and the streaming way
(`hf_vit.evaluation.StreamingClassificationMetrics`, batch by batch).

Each measurement runs in a fresh subprocess, so that its peak resident memory (ru_maxrss, minus what the process held
before the work began) is its own.

    python bench/bench_metrics.py                              # 50,000 x 1,000 logits in batches of 256
    python bench/bench_metrics.py --examples 8738 --classes 21843
    # `hf-vit evaluate` end to end on a 21,843-class image folder (one 8x8 image per class, 8,738 evaluated), with
    # this checkout and, for the "before" row, the src/ folder of another checkout (the 21,843 images, 40% held out):
    python bench/bench_metrics.py --evaluate-folder /tmp/in21k --before-src /tmp/old-checkout/src
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(kind: str, examples: int, classes: int, batch: int) -> dict:
    """In this process: produce `examples` logits batch by batch (as an evaluation loop does) and count them."""
    import torch

    from hf_vit.evaluation import StreamingClassificationMetrics, load_metric

    generator = torch.Generator().manual_seed(0)
    load_metric("top_k_accuracy"), load_metric("confusion_matrix")  # module loading is not part of the work
    before = _peak_mib()
    started = time.perf_counter()
    if kind == "streaming":
        metrics = StreamingClassificationMetrics(classes, with_confusion_matrix=True)
        for start in range(0, examples, batch):
            count = min(batch, examples - start)
            logits = torch.randn(count, classes, generator=generator)
            labels = torch.randint(0, classes, (count,), generator=generator)
            metrics.update(**metrics.per_example(logits, labels))
        result = metrics.compute()
    else:  # what the recipes and hf-vit evaluate did before: gather everything, then the evaluate modules
        logits, labels = [], []
        for start in range(0, examples, batch):
            count = min(batch, examples - start)
            logits.append(torch.randn(count, classes, generator=generator))
            labels.append(torch.randint(0, classes, (count,), generator=generator))
        logits, labels = torch.cat(logits), torch.cat(labels)
        accuracies = load_metric("top_k_accuracy").compute(predictions=logits.numpy(), references=labels.numpy(),
                                                          k=[1, 5])
        matrix = load_metric("confusion_matrix").compute(predictions=logits.argmax(-1).numpy(),
                                                         references=labels.numpy(), num_labels=classes)
        result = {"accuracy": accuracies["top1_accuracy"], "top5_accuracy": accuracies["top5_accuracy"],
                  "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
                  "confusion_matrix": matrix["confusion_matrix"]}
    seconds = time.perf_counter() - started
    return {"kind": kind, "seconds": seconds, "peak_mib": _peak_mib() - before,
            "accuracy": result["accuracy"], "top5_accuracy": result["top5_accuracy"],
            "confusion_matrix": "confusion_matrix" in result}


def make_many_class_folder(root, classes: int):
    """An image folder with one tiny image per class (class folders c00000, c00001, ...); reused when present."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    if (root / f"c{classes - 1:05d}" / "0.png").is_file():
        return root
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c:05d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"c{c:05d}" / "0.png")
    return root


def evaluate_command(folder, model_dir, examples: int, src: str) -> dict:
    """`hf-vit evaluate` in a subprocess with `src` first on the path: wall time and the child's peak memory."""
    import os

    env = dict(os.environ, PYTHONPATH=src, HF_HUB_OFFLINE="1")
    # One image per class: a held-out share of 0.4 of the 21,843 images is 8,738 of them.
    command = [sys.executable, "-m", "hf_vit.cli", "evaluate", str(model_dir), "--dataset", str(folder),
               "--test-fraction", "0.4", "--json"]
    # A wrapper process of its own per measurement: RUSAGE_CHILDREN's peak is then this command's alone.
    wrapper = ("import json, resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
               "print(json.dumps({'code': done.returncode, "
               "'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    measured = json.loads(done.stderr.strip().splitlines()[-1])
    if measured["code"] != 0:
        raise SystemExit(f"hf-vit evaluate failed with {src}:\n{done.stderr[-2000:]}")
    peak = measured["peak_kib"] / 1024
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_mib": peak, "accuracy": report["test"]["accuracy"],
            "confusion_matrix": "confusion_matrix" in report["test"], "num_examples": report["test"]["num_examples"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--case", choices=["gathered", "streaming"], help=argparse.SUPPRESS)
    parser.add_argument("--evaluate-folder", help="Run `hf-vit evaluate` on a 21,843-class image folder made here")
    parser.add_argument("--before-src", help="With --evaluate-folder: another checkout's src/ for the 'before' row")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.examples, args.classes, args.batch)))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import markdown_table

    if args.evaluate_folder:
        import torch

        from hf_vit import ViTConfig, ViTForImageClassification, ViTImageProcessor

        classes = 21_843
        folder = make_many_class_folder(Path(args.evaluate_folder) / "images", classes)
        model_dir = Path(args.evaluate_folder) / "model"
        torch.manual_seed(0)
        names = sorted(p.name for p in folder.iterdir())
        config = ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, num_labels=classes, id2label=dict(enumerate(names)))
        ViTForImageClassification(config).save_pretrained(model_dir)
        ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(model_dir)
        rows = []
        here = str(Path(__file__).resolve().parents[1] / "src")
        for label, src in (("before", args.before_src), ("after", here)):
            if src:
                result = evaluate_command(folder, model_dir, 8738, src)
                rows.append([label, f"{result['seconds']:.0f}", f"{result['peak_mib'] / 1024:.2f}",
                             result["num_examples"], "yes" if result["confusion_matrix"] else "no"])
        print(f"hf-vit evaluate, {classes:,}-class model, 8,738 images of a {classes:,}-class image folder")
        print(markdown_table(["code", "seconds", "peak memory (GiB)", "images", "confusion matrix"], rows))
        return 0

    rows = []
    for kind in ("gathered", "streaming"):
        done = subprocess.run([sys.executable, __file__, "--case", kind, "--examples", str(args.examples),
                               "--classes", str(args.classes), "--batch", str(args.batch)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{kind}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append([kind, f"{result['seconds']:.2f}", f"{result['peak_mib']:.0f}", f"{result['accuracy']:.5f}",
                     f"{result['top5_accuracy']:.5f}", "yes" if result["confusion_matrix"] else "no"])
    print(f"{args.examples:,} examples x {args.classes:,} classes, batches of {args.batch}")
    print(markdown_table(["metrics", "seconds", "peak memory (MiB)", "top-1", "top-5", "confusion matrix"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
