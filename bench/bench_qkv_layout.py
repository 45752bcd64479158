"""hf_vit's fused qkv projection against three separate ones (transformers' and MAE's layout), one attention block.

The same parameters both ways: hf_vit's `ViTSelfAttention` (one (3D, D) GEMM, q, k and v read as strided views of
its output) against q, k and v each from its own (D, D) slice of that weight (three GEMMs, three contiguous outputs),
both through torch's sdpa and the output projection. Training (forward and backward into the input and the weights)
and inference, interleaved rounds (bench/common.py); the table gives the fused layout's speed over the split one.
The shapes are the MAE encoder's (49 kept patches and the class token) and decoder's (197 tokens) at S/16 and B/16.

    python bench/bench_qkv_layout.py                 # one thread
    python bench/bench_qkv_layout.py --threads 2
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, interleaved_rounds, markdown_table, median, ratio_cell  # noqa: E402

from bench_mae import SIZES  # noqa: E402

from hf_vit import ViTConfig  # noqa: E402
from hf_vit.modeling_hf_vit import ViTSelfAttention  # noqa: E402


def mae_shapes(mask_ratio: float = 0.75) -> dict[str, tuple[int, int, int, int]]:
    """name -> (batch, tokens, width, heads): bench_mae.py's encoders on the kept patches and the class token, its
    decoders on every patch and the class token, and B/16's encoder on every patch (the plain ViT)."""
    shapes = {}
    for size, label in (("small", "S/16"), ("b16", "B/16")):
        encoder, (width, _, heads, _), image_size, batch = SIZES[size]
        patches = (image_size // encoder["patch_size"]) ** 2
        kept = max(1, int(patches * (1 - mask_ratio)))
        hidden, encoder_heads = encoder["hidden_size"], encoder["num_attention_heads"]
        shapes[f"{label} MAE encoder"] = (batch, kept + 1, hidden, encoder_heads)
        shapes[f"{label} MAE decoder"] = (batch, patches + 1, width, heads)
    shapes["B/16 every patch"] = (batch, patches + 1, hidden, encoder_heads)
    return shapes


def split_attention(attention: ViTSelfAttention, hidden_states: torch.Tensor) -> torch.Tensor:
    """The same block with q, k and v from three GEMMs on the fused weight's slices."""
    batch, length, width = hidden_states.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    weights, biases = attention.qkv.weight.split(width), attention.qkv.bias.split(width)
    query, key, value = (F.linear(hidden_states, w, b).view(batch, length, heads, head_dim).transpose(1, 2)
                         for w, b in zip(weights, biases))
    output = F.scaled_dot_product_attention(query, key, value, scale=attention.scaling)
    return attention.o_proj(output.transpose(1, 2).reshape(batch, length, width))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, (batch, length, width, heads) in mae_shapes().items():
        torch.manual_seed(0)
        config = ViTConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=4 * width,
                           attn_implementation="sdpa")
        attention = ViTSelfAttention(config).train()
        hidden = torch.randn(batch, length, width, requires_grad=True)
        grad = torch.randn(batch, length, width)
        torch.testing.assert_close(attention(hidden)[0], split_attention(attention, hidden), rtol=1e-4, atol=1e-5)

        def step(forward, train):
            def run():
                with torch.set_grad_enabled(train):
                    output = forward(hidden)
                    if train:
                        output.backward(grad)
            return run

        for mode, train in (("train", True), ("infer", False)):
            seconds = interleaved_rounds({"fused": step(lambda h: attention(h)[0], train),
                                          "split": step(lambda h: split_attention(attention, h), train)},
                                         args.rounds, args.iters, warmup=2)
            rows.append([name, (batch, length, width, heads), mode, f"{1e3 * median(seconds['fused']):.1f}",
                         f"{1e3 * median(seconds['split']):.1f}", ratio_cell(seconds["fused"], seconds["split"])])
    env = environment()
    print(f"One attention block (qkv, sdpa, output projection), fp32; torch {env['torch']}, threads: "
          f"{env['torch_threads']}, {env['cpu']}; {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    print(markdown_table(["shape", "(B, N, D, H)", "mode", "fused ms", "split ms", "fused / split (median, range)"],
                         rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
