"""bf16 against float32 on this CPU, for a recipe config's model: what `mixed_precision: auto` decides from.

A training step (forward with the loss, backward, AdamW) of the config's classification model, at its image size and
batch, in float32 and under torch's CPU bf16 autocast (what `mixed_precision: bf16` runs), in interleaved rounds
(bench/common.py); and an inference forward pass with float32 and with bf16 weights. Prints whether the CPU has bf16
instructions (`hf_vit.export.native_bf16`), images/s and bf16's speed over float32 (the median of per-round ratios).
On a CPU with AVX512-BF16 or AMX bf16 is the faster format; without them torch emulates it.

    python bench/bench_cpu_precision.py recipes/configs/fashion_mnist.yaml
    python bench/bench_cpu_precision.py recipes/configs/fashion_mnist_vit.yaml --threads 1 --batch 64
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, interleaved_rounds, markdown_table, median, ratio_cell  # noqa: E402

from hf_vit import ViTForImageClassification  # noqa: E402
from hf_vit.data import DataArguments  # noqa: E402
from hf_vit.export import native_bf16  # noqa: E402
from hf_vit.training import ModelArguments, TrainArguments, parse_recipe_args  # noqa: E402
from hf_vit.training.models import build_model, label_fields  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a recipe config (YAML); its model fields, image size and batch are used")
    parser.add_argument("--batch", type=int, help="default: the config's batch_size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parsed = parse_recipe_args((ModelArguments, DataArguments, TrainArguments), [args.config])
    model_args, data_args, train_args = parsed
    labels = data_args.label_names or [str(i) for i in range(10)]
    torch.manual_seed(0)
    model = build_model(model_args, ViTForImageClassification, label_fields(labels))
    batch = args.batch or train_args.batch_size
    height, width = model.config.image_hw
    pixels = torch.randn(batch, model.config.num_channels, height, width, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, len(labels), (batch,), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    served = {"float32": model, "bfloat16": None}

    def train_step(bf16: bool):
        def step():
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(pixel_values=pixels, labels=targets).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def infer(dtype: str):
        def step():
            if served[dtype] is None:
                import copy

                served[dtype] = copy.deepcopy(model).to(torch.bfloat16)
            net = served[dtype].eval()
            with torch.inference_mode():
                net(pixel_values=pixels.to(next(net.parameters()).dtype))

        return step

    runners = {"train float32": train_step(False), "train bf16 autocast": train_step(True),
               "infer float32": infer("float32"), "infer bf16 weights": infer("bfloat16")}
    seconds = interleaved_rounds(runners, args.rounds, args.iters, warmup=1)
    rows = []
    for mode in ("train", "infer"):
        names = [name for name in seconds if name.startswith(mode)]
        reference = seconds[names[0]]
        for name in names:
            rows.append([name, f"{batch / median(seconds[name]):.1f}", ratio_cell(seconds[name], reference)])
    env = environment()
    print(f"{args.config}: batch {batch} at {height}x{width}; torch {env['torch']} ({env['torch_threads']} threads), "
          f"{env['cpu']}, bf16 instructions: {'yes' if native_bf16('cpu') else 'no'}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(markdown_table(["step", "images/s", "vs float32 (median, range)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
