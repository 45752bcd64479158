"""Does the data pipeline keep up with training? Loader images/s against the model's training images/s, for a recipe
config (default: the Fashion-MNIST one).

The loader is the recipes' own: the seeded batch sampler, the data set's rows decoded (or read from memory with
`cache_decoded_images`), `ViTImageProcessor`, the config's augmentation (and mixup / cutmix), in the config's
`num_workers` worker processes. The model step is the loop's: forward, loss, backward, clipping, AdamW step, at the
config's per-device batch. The two are timed in alternating phases (never at once, so neither steals the other's
cores); each loader phase starts a fresh iterator and skips its first batches (worker start-up). Target (issue 5):
loader >= 3x the model's training images/s.

    python bench/bench_data.py                                         # recipes/configs/fashion_mnist.yaml
    python bench/bench_data.py recipes/configs/digits.yaml --rounds 5 --threads 1
"""

import argparse
import contextlib
import os
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, markdown_table, median  # noqa: E402


DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "configs", "fashion_mnist.yaml")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    parser.add_argument("--rounds", type=int, default=3, help="Alternating loader / model phases")
    parser.add_argument("--batches", type=int, default=30, help="Timed batches (or steps) per phase")
    parser.add_argument("--skip", type=int, default=4, help="Loader batches skipped per phase (worker start-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the model (default: torch's)")
    parser.add_argument("--load-average", action="store_true", help="Print the 1-minute load average before and after")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from accelerate.utils import set_seed

    from hf_vit.data import DataArguments, build_train_loader, load_image_classification_data, training_rows
    from hf_vit.training import (
        ClassificationRecipe, ClassificationTask, ModelArguments, TrainArguments, build_processor, parse_recipe_args,
    )
    from hf_vit.training.loop import batch_plan
    from hf_vit.training.optim import build_optimizer

    model_args, data_args, train_args = parse_recipe_args((ModelArguments, DataArguments, TrainArguments), [args.config])
    set_seed(train_args.seed)
    data = load_image_classification_data(data_args)
    recipe = ClassificationRecipe(model_args, data_args, train_args)  # the recipe's own model and augmentation
    model = recipe.build_model(data)
    processor = build_processor(model_args, model)
    name, augmentation = recipe.build_augmentation(data, processor)
    task = ClassificationTask(model, processor, augmentation, train_args.label_smoothing, data_args.mixup_alpha,
                              data_args.cutmix_alpha)
    batch_size, _ = batch_plan(train_args.batch_size, 1, train_args.max_device_batch_size)
    loader, sampler = build_train_loader(training_rows(data, data_args, processor), task.train_collator(), batch_size,
                                         train_args.seed, 1, 0, 1, num_workers=data_args.num_workers)
    if args.skip + args.batches > len(loader):
        parser.error(f"--skip {args.skip} + --batches {args.batches} exceed the {len(loader)} batches of one "
                     f"epoch of {args.config} (batch {batch_size}): lower them")
    optimizer = build_optimizer(model, train_args)
    fixed = next(iter(loader))
    # The recipe's mixed precision, as Accelerate applies it on CPU (autocast around the forward pass).
    precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train_args.mixed_precision)

    def forward_precision():
        return torch.autocast("cpu", dtype=precision) if precision is not None else contextlib.nullcontext()

    def loader_phase() -> float:
        sampler.set_epoch(0)
        batches = iter(loader)
        for _ in range(args.skip):
            next(batches)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(batches)
        seconds = time.perf_counter() - start
        del batches
        return args.batches * batch_size / seconds

    def model_phase() -> float:
        model.train()
        start = time.perf_counter()
        for _ in range(args.batches):
            with forward_precision():
                loss, _ = task.step(fixed)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return args.batches * batch_size / (time.perf_counter() - start)

    load_before = os.getloadavg()[0]
    model_phase()  # warm-up
    loader_speeds, model_speeds = [], []
    for _ in range(args.rounds):
        loader_speeds.append(loader_phase())
        model_speeds.append(model_phase())
    ratios = [l / m for l, m in zip(loader_speeds, model_speeds)]
    if args.load_average:
        print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    ratio = median(ratios)

    print(", ".join(f"{k}: {v}" for k, v in environment(["transformers", "datasets", "accelerate"]).items()))
    print(f"config: {os.path.relpath(args.config)}; data: {data.name}, augmentation: {name}, workers: "
          f"{data_args.num_workers}, batch {batch_size}; model threads: {torch.get_num_threads()}")
    print(markdown_table(
        ["loader images/s (median)", "model training images/s (median)", "loader / model (median, min-max)",
         "target", "result"],
        [[f"{median(loader_speeds):.0f}", f"{median(model_speeds):.0f}",
          f"{ratio:.1f}x ({min(ratios):.1f}-{max(ratios):.1f})", ">= 3.0x", "PASS" if ratio >= 3.0 else "MISS"]],
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
