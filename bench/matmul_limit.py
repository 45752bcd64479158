"""The matmul-only limit of a ViT's inference: the model's own GEMM shapes run back to back, nothing else.

A forward pass of a plain ViT is, by arithmetic, almost only matrix products; everything else (LayerNorm, GELU,
softmax, residual adds, bias adds, copies) is memory-bound and small. Running exactly the model's products, in the
model's dtype, with preallocated operands and no other op in between, gives a ceiling on its images/s that no
implementation of the same arithmetic on the same matmul library can beat; an implementation's distance from it is
its overhead. The products of one forward pass (batch B, T = prefix + N tokens, width D, H heads of d = D / H, MLP
width I, K classes):

  patch embedding  (B*N, C*P*P) @ (C*P*P, D)        the P x P stride-P convolution as the GEMM it is
  per block        qkv   (B*T, D) @ (D, 3D)
                   score (B*H: T x d) @ (d x T)      batched
                   value (B*H: T x T) @ (T x d)      batched
                   proj  (B*T, D) @ (D, D)
                   fc1   (B*T, D) @ (D, I)
                   fc2   (B*T, I) @ (I, D)
  head             (B, D) @ (D, K)                   (and (B, D) @ (D, R) for a pre-logits layer)

hf_vit's classifier with class-token pooling runs its last block's queries, projection and MLP on the class token
only (`ViTModel(pooled_only=True)`): there, qkv becomes kv (B*T, D) @ (D, 2D) plus q (B, D) @ (D, D), the attention
has one query row and proj / fc1 / fc2 have B rows. `class_token_only=True` gives those shapes (hf_vit's own),
`False` the full last block (transformers' and timm's).

The products run as torch.mm / torch.bmm, the calls every nn.Linear-based implementation makes. In bf16 a second
limit uses oneDNN's linear on weights laid out in its blocked format beforehand (what hf_vit does after
`hf_vit.export.pack_linear_weights`): torch.mm lets oneDNN reorder each weight at every call.

    python bench/matmul_limit.py                          # B/16 at 224, batch 8, bf16, hf_vit's and the full shapes
    python bench/matmul_limit.py --dtype float32 --batch 1
    python bench/matmul_limit.py --variant S/16 --rounds 9 --table   # time of every product, per round median

`bench_models.py --dtype bfloat16 --matmul-limit` runs the limit interleaved with the models (the ratio to read).
"""

import argparse
import os
import sys
from dataclasses import dataclass


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from common import interleaved_rounds, markdown_table, median  # noqa: E402


@dataclass(frozen=True)
class Gemm:
    """One product of a forward pass: `count` times (batch x) (m, k) @ (k, n)."""

    name: str
    m: int
    k: int
    n: int
    batch: int = 1  # > 1: a batched product (torch.bmm), as the attention's
    count: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n * self.count


def vit_gemms(config, batch_size: int, class_token_only: bool = True) -> list[Gemm]:
    """The GEMMs of one inference forward pass of a plain (non-hybrid) hf_vit `ViTForImageClassification`."""
    if config.is_hybrid:
        raise ValueError("vit_gemms covers plain ViTs only: a hybrid's ResNet convolutions are not GEMMs of this list.")
    ph, pw = config.patch_hw
    rows, cols = config.grid_size
    patches = rows * cols
    tokens = config.num_prefix_tokens + patches
    width, mlp, heads, head_dim = config.hidden_size, config.intermediate_size, config.num_attention_heads, config.head_dim
    layers = config.num_hidden_layers
    class_token_only = class_token_only and config.pooling == "cls"
    full_blocks = layers - 1 if class_token_only else layers
    rows_all = batch_size * tokens
    gemms = [Gemm("patch embedding", batch_size * patches, config.num_channels * ph * pw, width)]
    gemms += [
        Gemm("qkv", rows_all, width, 3 * width, count=full_blocks),
        Gemm("attention scores", tokens, head_dim, tokens, batch=batch_size * heads, count=full_blocks),
        Gemm("attention values", tokens, tokens, head_dim, batch=batch_size * heads, count=full_blocks),
        Gemm("proj", rows_all, width, width, count=full_blocks),
        Gemm("fc1", rows_all, width, mlp, count=full_blocks),
        Gemm("fc2", rows_all, mlp, width, count=full_blocks),
    ]
    if class_token_only:
        gemms += [
            Gemm("last block kv", rows_all, width, 2 * width),
            Gemm("last block q", batch_size, width, width),
            Gemm("last block scores", 1, head_dim, tokens, batch=batch_size * heads),
            Gemm("last block values", 1, tokens, head_dim, batch=batch_size * heads),
            Gemm("last block proj", batch_size, width, width),
            Gemm("last block fc1", batch_size, width, mlp),
            Gemm("last block fc2", batch_size, mlp, width),
        ]
    if config.representation_size is not None:
        gemms.append(Gemm("pre-logits", batch_size, width, config.representation_size))
        width = config.representation_size
    if config.num_labels > 0:
        gemms.append(Gemm("head", batch_size, width, config.num_labels))
    return gemms


def _packed_product(a, packed_weight, out=None):
    return torch.ops.mkldnn._linear_pointwise(a, packed_weight, None, "none", [], "")


def gemm_runner(gemms: list[Gemm], dtype: torch.dtype, seed: int = 0, packed: bool = False):
    """A zero-argument callable running every product of `gemms` once, in order, on preallocated operands.

    Weights are laid out as nn.Linear keeps them ((n, k), used transposed), activations (m, k); the attention's
    batched products take (batch, m, k) @ (batch, k, n). Outputs are written into preallocated tensors (`out=`), so
    nothing but the products runs. With `packed` (bf16), the weight products are oneDNN's linear on weights laid out
    in its blocked format beforehand (`hf_vit.export.pack_linear_weights`); torch.mm reorders a plain weight at every
    call."""
    generator = torch.Generator().manual_seed(seed)

    def operand(*shape):
        return (torch.randn(*shape, generator=generator) * 0.1).to(dtype)

    steps = []
    for gemm in gemms:
        if gemm.batch > 1:
            a, b = operand(gemm.batch, gemm.m, gemm.k), operand(gemm.batch, gemm.k, gemm.n)
            out = torch.empty(gemm.batch, gemm.m, gemm.n, dtype=dtype)
            steps += [(torch.bmm, a, b, out)] * gemm.count
        elif packed:
            a, weight = operand(gemm.m, gemm.k), operand(gemm.n, gemm.k)
            steps += [(_packed_product, a, torch.ops.mkldnn._reorder_linear_weight(weight, gemm.m), None)] * gemm.count
        else:
            a, weight = operand(gemm.m, gemm.k), operand(gemm.n, gemm.k)
            out = torch.empty(gemm.m, gemm.n, dtype=dtype)
            steps += [(torch.mm, a, weight.t(), out)] * gemm.count

    def run():
        with torch.inference_mode():
            for product, a, b, out in steps:
                product(a, b, out=out)

    return run


def limit_runner(config, batch_size: int, dtype: torch.dtype, class_token_only: bool = True, packed: bool = False):
    """The matmul-only limit of one batch as a zero-argument callable (see `gemm_runner`)."""
    return gemm_runner(vit_gemms(config, batch_size, class_token_only), dtype, packed=packed)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="B/16", help="a plain ViT variant (ViTConfig.from_variant), e.g. S/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-labels", type=int, default=1000)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--table", action="store_true", help="also time every product on its own")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import hf_vit

    config = hf_vit.ViTConfig.from_variant(args.variant, image_size=args.image_size, num_labels=args.num_labels)
    dtype = DTYPES[args.dtype]
    variants = {
        "hf_vit shapes (class-token-only last block)": (True, False),
        "full last block (transformers, timm)": (False, False),
    }
    if args.dtype == "bfloat16":
        variants["hf_vit shapes, oneDNN pre-packed weights"] = (True, True)
    runners = {name: limit_runner(config, args.batch, dtype, *options) for name, options in variants.items()}
    seconds = interleaved_rounds(runners, rounds=args.rounds, warmup=args.warmup)
    print(f"{args.variant} at {args.image_size}, batch {args.batch}, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds\n")
    rows = []
    for name, (cls_only, _) in variants.items():
        flops = sum(g.flops for g in vit_gemms(config, args.batch, cls_only))
        step = median(seconds[name])
        rows.append([name, f"{flops / 1e9:.1f}", f"{1e3 * step:.1f}", f"{args.batch / step:.2f}", f"{flops / step / 1e9:.0f}"])
    print(markdown_table(["shapes", "GFLOP / batch", "ms / batch", "images/s ceiling", "GFLOP/s"], rows))
    if args.table:
        gemms = vit_gemms(config, args.batch, True)
        single = {g.name: gemm_runner([Gemm(g.name, g.m, g.k, g.n, g.batch, 1)], dtype) for g in gemms}
        times = interleaved_rounds(single, rounds=args.rounds, warmup=args.warmup)
        table = [
            [g.name, f"{g.batch}x" if g.batch > 1 else "", f"({g.m}, {g.k}) @ ({g.k}, {g.n})", g.count,
             f"{1e3 * median(times[g.name]):.2f}", f"{2 * g.batch * g.m * g.k * g.n / median(times[g.name]) / 1e9:.0f}"]
            for g in gemms
        ]
        print()
        print(markdown_table(["product", "batch", "shape", "per forward", "ms each", "GFLOP/s"], table))


if __name__ == "__main__":
    sys.exit(main())
