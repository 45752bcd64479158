"""Token dropping (`ViTConfig.patch_drop_rate`): training-step speed against the drop rate, side by side in one process.

Each rate is the same model with another `patch_drop_rate`, trained for whole steps (forward, loss, backward, AdamW)
in interleaved rounds; the table gives images/s and the speed-up over rate 0 (the median of per-round ratios).

    python bench/bench_token_dropping.py                                  # S/16 at 224, batch 16
    python bench/bench_token_dropping.py --variant Ti/4 --image-size 28 --hidden-size 96 --layers 4 --heads 3 \
        --mlp 384 --batch 128 --pooling gap --position sincos_2d --bf16     # the Fashion-MNIST plain ViT's shape
"""

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, interleaved_rounds, markdown_table, median, ratio_cell  # noqa: E402

from hf_vit import ViTConfig, ViTForImageClassification  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="S/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--mlp", type=int)
    parser.add_argument("--pooling", default="cls")
    parser.add_argument("--position", default="learned_1d")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rates", default="0,0.25,0.5,0.75")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--bf16", action="store_true", help="forward passes under CPU bf16 autocast")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = {"hidden_size": args.hidden_size, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
             "intermediate_size": args.mlp}
    overrides = {k: v for k, v in sizes.items() if v is not None}
    rates = [float(r) for r in args.rates.split(",")]
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    runners, descriptions = {}, {}
    for rate in rates:
        torch.manual_seed(0)
        config = ViTConfig.from_variant(args.variant, image_size=args.image_size, num_labels=10, pooling=args.pooling,
                                        position_embedding_type=args.position, patch_drop_rate=rate,
                                        hidden_act="gelu", **overrides)
        model = ViTForImageClassification(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, optimizer=optimizer):
            with precision():
                loss = torch.nn.functional.cross_entropy(model(pixel_values).logits.float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        name = f"rate {rate:g}"
        runners[name] = step
        kept = config.num_patches - round(rate * config.num_patches)
        descriptions[name] = f"{kept + config.num_prefix_tokens} of {config.num_patches + config.num_prefix_tokens}"
    seconds = interleaved_rounds(runners, args.rounds, args.iters, warmup=1)
    base = seconds[f"rate {rates[0]:g}"]
    rows = []
    for name, values in seconds.items():
        rows.append([name, descriptions[name], f"{args.batch / median(values):.1f}",
                     ratio_cell(values, base, digits=2)])
    env = environment()
    print(f"{args.variant} at {args.image_size}px, batch {args.batch}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{env['torch_threads']} threads, torch {env['torch']}, {env['cpu']}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(markdown_table(["patch_drop_rate", "tokens per image in training", "training images/s",
                          "speed-up over rate 0 (median, min-max)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
