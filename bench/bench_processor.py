"""Throughput of hf_vit's ViTImageProcessor against transformers' ViT image processors, in one process.

Peers: transformers' PIL-backed `ViTImageProcessorPil`, and its torchvision-backed `ViTImageProcessor` (skipped, with
the reason printed, where torchvision does not import). Images: real 500x375 RGB photos (crops of scikit-learn's
sample photos china.jpg / flower.jpg at varied offsets), as PIL images. Same settings for all: 224x224 bilinear,
rescale 1/255, normalize with mean = std = 0.5, return_tensors="pt"; one call processes the whole list.

Each round times every processor once on the same images (rotating order, see common.py); the table reports the
median images/s per processor and the median of the per-round ratios hf_vit / peer (> 1: hf_vit is faster).
Targets are printed, not asserted: >= 2.5x ViTImageProcessorPil, >= 1.0x the torchvision-backed ViTImageProcessor.

    python bench/bench_processor.py                 # 64 images, 7 rounds
    python bench/bench_processor.py --quick         # smoke run: 8 images, 2 rounds
    python bench/bench_processor.py --images 256 --rounds 11 --json processor.json
"""

import argparse
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    environment,
    interleaved_rounds,
    markdown_table,
    median,
    speed_ratios,
    spread,
    write_json,
)
from sklearn.datasets import load_sample_images  # noqa: E402
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil  # noqa: E402

from hf_vit import ViTImageProcessor  # noqa: E402


WIDTH, HEIGHT = 500, 375
SETTINGS = {"size": {"height": 224, "width": 224}, "resample": PIL.Image.Resampling.BILINEAR,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # fmt: skip
OURS = "hf_vit ViTImageProcessor"
PIL_PEER = "transformers ViTImageProcessorPil"
TV_PEER = "transformers ViTImageProcessor"  # torchvision-backed
TARGETS = {PIL_PEER: 2.5, TV_PEER: 1.0}


def make_photos(count: int, seed: int = 0) -> list[PIL.Image.Image]:
    """`count` distinct 500x375 RGB crops of the two 640x427 sample photos."""
    photos = [PIL.Image.fromarray(array) for array in load_sample_images().images]
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        left = int(rng.integers(0, photo.width - WIDTH + 1))
        top = int(rng.integers(0, photo.height - HEIGHT + 1))
        images.append(photo.crop((left, top, left + WIDTH, top + HEIGHT)))
    return images


def build_processors() -> tuple[dict, str | None]:
    """The processors to compare, and why the torchvision-backed one is missing (None when it is there)."""
    processors = {OURS: ViTImageProcessor(**SETTINGS), PIL_PEER: ViTImageProcessorPil(**SETTINGS)}
    try:
        import torchvision  # noqa: F401
        from transformers.models.vit.image_processing_vit import ViTImageProcessor as TorchvisionViTImageProcessor
    except Exception as error:  # ImportError, or torchvision built for another torch (RuntimeError at import)
        return processors, f"torchvision does not import ({type(error).__name__}: {error})"
    processors[TV_PEER] = TorchvisionViTImageProcessor(**SETTINGS)
    return processors, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per call")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the medians are over these)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 images, 2 rounds")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every round's timings here")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 8, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    env = environment(("transformers", "torchvision", "pillow", "numpy", "hf-vit"))
    env["load_average"] = [round(value, 2) for value in os.getloadavg()]
    print("## Environment\n")
    for key, value in env.items():
        print(f"- {key}: {value}")
    processors, skipped = build_processors()
    if skipped:
        print(f"- {TV_PEER} (torchvision-backed) skipped: {skipped}")

    images = make_photos(args.images)
    # Everyone computes the same thing: compare with the PIL peer once, before timing.
    outputs = {name: proc(images, return_tensors="pt")["pixel_values"] for name, proc in processors.items()}
    print(f"\n## Agreement with {PIL_PEER}\n")
    for name, pixel_values in outputs.items():
        diff = (pixel_values - outputs[PIL_PEER]).abs()
        print(f"- {name}: {tuple(pixel_values.shape)}, max |diff| {diff.max():.4f}, mean |diff| {diff.mean():.1e}")

    runners = {name: (lambda proc=proc: proc(images, return_tensors="pt")) for name, proc in processors.items()}
    seconds = interleaved_rounds(runners, rounds=args.rounds)

    headers = ["processor", "images/s (median)", "rounds' spread", "hf_vit / peer (median of rounds)", "target"]
    rows = []
    for name, values in seconds.items():
        ratio = median(speed_ratios(seconds[OURS], values))
        target = ""
        if name in TARGETS:
            target = f">= {TARGETS[name]:.1f}x ({'met' if ratio >= TARGETS[name] else 'NOT met'})"
        rows.append(
            [
                name,
                f"{args.images / median(values):.0f}",
                f"{spread(values):.0%}",
                "" if name == OURS else f"{ratio:.2f}x",
                target,
            ]
        )
    print(
        f"\n## Results\n\n{args.images} RGB PIL photos {WIDTH}x{HEIGHT} -> 224x224, {args.rounds} interleaved rounds, "
        f"{torch.get_num_threads()} torch threads\n"
    )
    print(markdown_table(headers, rows))
    print(f"\nload average after the run: {', '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    if args.json:
        write_json(args.json, {"environment": env, "torchvision_skipped": skipped, "settings": vars(args),
                               "seconds": seconds})  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
