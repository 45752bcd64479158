"""A time-budgeted CNN baseline for the Fashion-MNIST time-to-accuracy targets: 4 convolutions with batch norm,
AdamW, the same data (the IDX files the recipes read, the same held-out test set) and the same wall-time budget.

The number of optimiser steps is fitted to the budget: a short timed warm-up measures this machine's step rate, then
a one-cycle schedule (linear warm-up, cosine decay) runs for as many steps as the remaining budget allows; the whole
command (data loading and the test evaluation included) is timed. The test accuracy is one view (no flip averaging),
as the ViT configs' targets count it.

    python bench/bench_cnn_baseline.py --minutes 8
    python bench/bench_cnn_baseline.py --minutes 15 --dataset /usr/share/datasets/fashion-mnist --seed 1
"""

import argparse
import contextlib
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment  # noqa: E402


def conv_block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


class FourConvNet(nn.Module):
    """conv-BN-ReLU x2, max-pool, conv-BN-ReLU x2, max-pool, then a 256-wide hidden layer: (B, 1, 28, 28) -> (B, 10)."""

    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(1, width), conv_block(width, width), nn.MaxPool2d(2),
            conv_block(width, 2 * width), conv_block(2 * width, 2 * width), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * width * 7 * 7, 256),
                                  nn.ReLU(inplace=True), nn.Dropout(0.25), nn.Linear(256, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def load_split(folder: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 28, 28) float images normalised to mean 0.5 / std 0.5 (the ViT processor's), (N,) labels."""
    from hf_vit.data.idx import find_idx_files, load_idx_split

    images, labels = load_idx_split(*find_idx_files(folder)[split])
    x = torch.from_numpy(images).float().div_(255.0).sub_(0.5).div_(0.5).unsqueeze(1)
    return x, torch.from_numpy(labels)


def augment(x: torch.Tensor, generator) -> torch.Tensor:
    """Pad-and-crop by up to 2 pixels and a horizontal flip, per image, as the ViT configs' `crop_flip`."""
    batch = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)  # black after the normalisation
    top = torch.randint(0, 5, (batch,), generator=generator)
    left = torch.randint(0, 5, (batch,), generator=generator)
    rows = (top[:, None] + torch.arange(28))[:, None, :, None]
    cols = (left[:, None] + torch.arange(28))[:, None, None, :]
    out = padded[torch.arange(batch)[:, None, None, None], torch.zeros(1, 1, 1, 1, dtype=torch.long), rows, cols]
    flips = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flips[:, None, None, None], out.flip(-1), out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-time budget of the whole command")
    parser.add_argument("--dataset", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="bf16: CPU autocast, channels-last (the fastest for the CNN on a CPU with bf16 "
                        "instructions); auto: bf16 on such a CPU, else fp32, as the recipes' `mixed_precision: auto`")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.precision == "auto":
        from hf_vit.export import native_bf16

        args.precision = "bf16" if native_bf16("cpu") else "fp32"
    started = time.perf_counter()
    budget = 60.0 * args.minutes
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_x, train_y = load_split(args.dataset, "train")
    test_x, test_y = load_split(args.dataset, "test")
    model = FourConvNet(args.width)
    if args.precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)

    def batches():
        while True:
            order = torch.randperm(len(train_x), generator=generator)
            for start in range(0, len(order) - args.batch + 1, args.batch):
                index = order[start : start + args.batch]
                yield augment(train_x[index], generator), train_y[index]

    def step(x, y, lr):
        for group in optimizer.param_groups:
            group["lr"] = lr
        if args.precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
        with precision():
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=args.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        correct = 0
        for start in range(0, len(test_x), 1000):
            x = test_x[start : start + 1000]
            if args.precision == "bf16":
                x = x.contiguous(memory_format=torch.channels_last)
            with precision():
                correct += int((model(x).argmax(-1) == test_y[start : start + 1000]).sum())
        model.train()
        return correct / len(test_x)

    # Measure this machine's step rate, then fit the schedule to what is left of the budget (minus the evaluation).
    stream = batches()
    model.train()
    probe_steps, probe_start = 30, time.perf_counter()
    for _ in range(probe_steps):
        step(*next(stream), args.lr * 0.1)
    step_seconds = (time.perf_counter() - probe_start) / probe_steps
    eval_start = time.perf_counter()
    evaluate()
    eval_seconds = time.perf_counter() - eval_start
    remaining = budget - (time.perf_counter() - started) - eval_seconds - 5.0  # 5 s of slack for the end
    total = max(1, int(remaining / step_seconds))
    warmup = max(1, total // 20)
    for index in range(total):
        progress = index / total
        lr = args.lr * ((index + 1) / warmup if index < warmup else 0.5 * (1 + math.cos(math.pi * progress)))
        loss = step(*next(stream), lr)
    accuracy = evaluate()
    wall = time.perf_counter() - started
    env = environment()
    print(f"CNN baseline: 4 conv + BN (width {args.width}), AdamW lr {args.lr}, batch {args.batch}, {args.precision}, "
          f"seed {args.seed}; {env['torch_threads']} threads, torch {env['torch']}, {env['cpu']}")
    print(f"{total + probe_steps} steps ({(total + probe_steps) * args.batch / len(train_x):.1f} epochs), last loss "
          f"{loss:.4f}; test accuracy (one view) {accuracy:.4f} on {len(test_x)} images; wall {wall / 60:.2f} min "
          f"(budget {args.minutes:g} min); load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
