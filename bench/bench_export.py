"""Speed of hf_vit's ONNX export under ONNX Runtime against the same model in PyTorch, in one process, interleaved.

ViT-B/16 (the package default: tanh GELU) at 224x224, float32, CPU, random weights, a 1000-class head, exported with
`hf_vit.export.onnx.export_onnx` (opset 18, dynamic batch); one file serves every batch size. PyTorch runs the model
under `torch.inference_mode()` (sdpa attention, the class-token-only last block); ONNX Runtime runs the exported graph
with its CPU provider, default graph optimisations (ORT_ENABLE_ALL), and as many intra-op threads as torch uses.

Each round times both once (rotating order); the table reports images/s from the median step time and the median of
the per-round ratios ONNX Runtime / PyTorch (> 1: ONNX Runtime faster). Needs `pip install "hf-vit[export]"`.

    python bench/bench_export.py                         # B/16, batches 8 and 1, 7 rounds
    python bench/bench_export.py --variant S/16 --batches 1,8,32 --threads 1
"""

import argparse
import os
import sys
import tempfile


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from common import environment, interleaved_rounds, markdown_table, median, speed_ratios, spread, write_json  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="B/16", help="ViTConfig.from_variant name (default B/16)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", default="8,1", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads and ORT's intra-op threads")
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    import numpy as np
    import onnxruntime

    import hf_vit
    from hf_vit.export.onnx import ONNX_OPSET, check_onnx, export_onnx

    torch.manual_seed(0)
    config = hf_vit.ViTConfig.from_variant(args.variant, image_size=args.image_size, num_labels=1000)
    model = hf_vit.ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(std=0.02)  # off the zero-initialised head, so the logits differ

    env = environment(("onnx", "onnxruntime", "onnxscript", "hf-vit"))
    print("## Environment\n")
    for key, value in env.items():
        print(f"- {key}: {value}")
    print(f"- {args.variant} at {args.image_size}, float32, opset {ONNX_OPSET}, {args.rounds} rounds, "
          f"{threads} threads (torch and ONNX Runtime)\n", flush=True)

    rows, results = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        export_onnx(model, path)
        difference = check_onnx(model, path, threads=threads)
        print(f"max |ONNX Runtime - PyTorch| on random batches of 1 and 3: {difference:.3g}\n", flush=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for batch in batches:
            generator = torch.Generator().manual_seed(batch)
            pixel_values = torch.randn(batch, 3, args.image_size, args.image_size, generator=generator)
            feed = {"pixel_values": pixel_values.numpy()}

            def pytorch():
                with torch.inference_mode():
                    return model(pixel_values=pixel_values).logits

            def ort():
                return session.run(None, feed)[0]

            seconds = interleaved_rounds({"PyTorch": pytorch, "ONNX Runtime": ort}, rounds=args.rounds, warmup=args.warmup)
            ratios = speed_ratios(seconds["ONNX Runtime"], seconds["PyTorch"])
            agree = float(np.abs(ort() - pytorch().numpy()).max())
            for name in ("PyTorch", "ONNX Runtime"):
                rows.append([
                    args.variant, batch, name, f"{batch / median(seconds[name]):.2f}", f"{100 * spread(seconds[name]):.1f}%",
                    "-" if name == "PyTorch" else f"{median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})",
                    "-" if name == "PyTorch" else f"{agree:.2g}",
                ])
            results.append({"batch_size": batch, "seconds": seconds, "ratio_ort_over_pytorch": ratios, "max_abs_diff": agree})
            print(f"done: batch {batch}", file=sys.stderr, flush=True)

    print("## Results\n")
    print(markdown_table(
        ["model", "batch", "runtime", "images/s (median)", "time spread", "ORT/PyTorch speed (median, min-max)",
         "max abs diff"],
        rows,
    ))
    if args.json:
        write_json(args.json, {"environment": env, "settings": vars(args), "check_max_abs_diff": difference,
                               "results": results})


if __name__ == "__main__":
    sys.exit(main())
