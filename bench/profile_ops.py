"""Where an inference forward pass spends its time: torch.profiler's self CPU time per op, for hf_vit and its peers.

ViT-B/16 (exact GELU, eps 1e-6, as in bench_models.py) at 224x224, random weights, a 1000-class head, in the chosen
weights' format; each model runs `--warmup` untimed forward passes, then `--steps` profiled ones. Ops are grouped
into the few kinds that matter (GEMMs, attention, softmax, GELU, LayerNorm, copies, adds, the patch convolution) and
shown as a share of the model's total self CPU time, with ms per forward pass.

    python bench/profile_ops.py --dtype bfloat16                  # hf_vit, transformers, timm
    python bench/profile_ops.py --dtype int8 --models hf_vit --threads 1 --ops 20
"""

import argparse
import os
import sys
from collections import defaultdict


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from bench_models import DTYPES, build_models, in_dtype, make_runner, timm_or_reason  # noqa: E402
from common import markdown_table  # noqa: E402


# op-name prefix -> kind (first match wins)
KINDS = (
    ("mkldnn::_linear_pointwise", "GEMMs (linear layers)"),
    ("aten::addmm", "GEMMs (linear layers)"),
    ("aten::mm", "GEMMs (linear layers)"),
    ("quantized::linear_dynamic", "GEMMs (linear layers)"),
    ("aten::_scaled_dot_product", "fused attention (sdpa)"),
    ("aten::baddbmm", "attention matmuls"),
    ("aten::bmm", "attention matmuls"),
    ("aten::_softmax", "softmax"),
    ("aten::gelu", "GELU"),
    ("aten::native_layer_norm", "LayerNorm"),
    ("aten::copy_", "copies"),
    ("aten::add", "adds"),
    ("aten::mul", "scaling"),
    ("aten::mkldnn_convolution", "patch convolution"),
)


def kind_of(name: str) -> str:
    for prefix, kind in KINDS:
        if name.startswith(prefix):
            return kind
    return "other"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--models", default="hf_vit,transformers,timm")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ops", type=int, default=0, help="also list the N ops with the most self CPU time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile

    timm, _ = timm_or_reason()
    torch.manual_seed(0)
    built = in_dtype(build_models("B/16", timm), args.dtype)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"B/16 at 224, batch {args.batch}, {args.dtype} weights, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.steps} profiled forward passes each\n")
    shares, per_step = {}, {}
    for name in wanted:
        if name not in built:
            print(f"- {name}: not available here, skipped")
            continue
        run = make_runner(name, built[name], "infer", args.batch, dtype=args.dtype)
        for _ in range(args.warmup):
            run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                run()
        events = prof.key_averages()
        totals = defaultdict(float)
        for event in events:
            totals[kind_of(event.key)] += event.self_cpu_time_total
        whole = sum(totals.values())
        shares[name] = {kind: value / whole for kind, value in totals.items()}
        per_step[name] = {kind: value / args.steps / 1e3 for kind, value in totals.items()}
        per_step[name]["total"] = whole / args.steps / 1e3
        if args.ops:
            print(f"### {name}\n")
            print(events.table(sort_by="self_cpu_time_total", row_limit=args.ops))
    kinds = sorted({kind for table in shares.values() for kind in table}, key=lambda k: -max(s.get(k, 0) for s in shares.values()))
    rows = [[kind] + [f"{100 * shares[n].get(kind, 0):.1f}% ({per_step[n].get(kind, 0):.1f})" for n in shares] for kind in kinds]
    rows.append(["total (ms per forward)"] + [f"{per_step[n]['total']:.1f}" for n in shares])
    print(markdown_table(["op kind"] + [f"{n}: share (ms / forward)" for n in shares], rows))


if __name__ == "__main__":
    sys.exit(main())
