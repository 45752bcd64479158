"""Photo-scale training input pipelines side by side (issue 17, point 2): images/s of

- hf_vit: the recipes' own pipeline: `load_image_classification_data` (an image folder), the recipe's augmentation
  (`inception_crop_flip` for image folders: the crop cut from the decoded JPEG and resized once), the
  `ImageClassificationCollator` and the seeded, resumable loader (`build_train_loader`), as `run_recipe` builds them;
- timm: `timm.data.create_transform(S, is_training=True)` (colour jitter off, the same crop scale and ratio,
  bilinear) + `timm.data.ImageDataset` + a torch `DataLoader`;
- the transformers example (`examples/pytorch/image-classification`): `datasets` "imagefolder" + torchvision
  `Compose([RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize])` through `with_transform`;

on the same JPEG files (a folder made by bench/make_photo_folder.py), each ending in a normalised float32 batch
(B, 3, S, S) of the paper's random resized crop (8-100% of the area, aspect 3/4-4/3, bilinear, antialiased) and
horizontal flip, with the same mean and std. For each output size and number of DataLoader workers, the pipelines
are timed in interleaved rounds (rotating order; each round starts a fresh iterator and skips its first batches,
worker start-up), and the ratio hf_vit / peer is taken per round. Target: hf_vit >= 1.5x timm's images/s in every
setting.

Besides images/s, each pipeline's CPU time per image (this process and its DataLoader workers, over the timed
batches) is reported: on a machine shared with other jobs it varies far less than the wall time, and on an idle
machine images/s with all cores busy is about (cores / CPU time per image).

    python bench/make_photo_folder.py /tmp/photos
    python bench/bench_input_pipeline.py /tmp/photos --rounds 5
"""

import argparse
import os
import resource
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, markdown_table, median  # noqa: E402


MEAN = STD = (0.5, 0.5, 0.5)  # hf_vit's processor default (the paper's [-1, 1]); given to every pipeline
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
HEADERS = ["size", "workers", "pipeline", "images/s (median)", "/ timm (median, min-max)", "CPU ms / image",
           "timm CPU / CPU", "target", "result"]


def hf_vit_pipeline(root, size, workers, batch_size, seed, reduced_jpeg_decoding=False):
    """(loader, set_epoch) built the way `hf_vit.training.run.run_recipe` builds the training loader."""
    from hf_vit import ViTImageProcessor
    from hf_vit.data import (
        DataArguments, ImageClassificationCollator, build_train_loader, load_image_classification_data, training_rows,
    )
    from hf_vit.training import ClassificationRecipe, ModelArguments, TrainArguments

    data_args = DataArguments(dataset=root, validation_fraction=0.0, num_workers=workers, crop_scale=list(SCALE),
                              crop_ratio=list(RATIO), reduced_jpeg_decoding=reduced_jpeg_decoding)
    data = load_image_classification_data(data_args)
    processor = ViTImageProcessor(size=size, image_mean=list(MEAN), image_std=list(STD))
    recipe = ClassificationRecipe(ModelArguments(), data_args, TrainArguments(output_dir="unused"))
    _, augmentation = recipe.build_augmentation(data, processor)
    collate = ImageClassificationCollator(processor, augmentation, data.num_labels)  # = ClassificationTask's
    loader, sampler = build_train_loader(training_rows(data, data_args, processor), collate, batch_size, seed, 1, 0, 1,
                                         num_workers=workers)
    return loader, sampler.set_epoch, len(data.train)


def timm_pipeline(root, size, workers, batch_size, seed):
    import timm.data

    transform = timm.data.create_transform(size, is_training=True, scale=SCALE, ratio=RATIO, hflip=0.5,
                                           color_jitter=None, interpolation="bilinear", mean=MEAN, std=STD)
    dataset = timm.data.ImageDataset(os.path.join(root, "train"), transform=transform)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, generator=generator)
    return loader, None, len(dataset)


class _ExampleTransform:
    """The transformers example's `preprocess_train` (picklable for the workers)."""

    def __init__(self, size):
        from torchvision import transforms

        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(size, scale=SCALE, ratio=RATIO,
                                         interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])

    def __call__(self, batch):
        batch["pixel_values"] = [self.transform(image.convert("RGB")) for image in batch["image"]]
        return batch


def _example_collate(examples):
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["label"] for e in examples])}


def transformers_example_pipeline(root, size, workers, batch_size, seed):
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=root, split="train").with_transform(_ExampleTransform(size))
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=_example_collate, drop_last=True, generator=generator)
    return loader, None, len(dataset)


def _pixel_values(batch):
    if isinstance(batch, dict):
        return batch["pixel_values"]
    return batch[0]  # timm: (images, targets)


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have been busy since boot (Linux /proc/stat), or NaN."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a running process (Linux /proc), or NaN."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pipeline_cpu_seconds(batches) -> float:
    """CPU seconds so far of this process and of the iterator's DataLoader workers."""
    workers = getattr(batches, "_workers", [])
    return time.process_time() + sum(process_cpu_seconds(worker.pid) for worker in workers)


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the DataLoader workers of earlier iterators)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="Image folder with train/<class>/*.jpg (bench/make_photo_folder.py)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="Timed batches per pipeline per round")
    parser.add_argument("--skip", type=int, default=2, help="Batches skipped per round (worker start-up)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reduced-jpeg-decoding", action="store_true",
                        help="Also time hf_vit with reduced_jpeg_decoding=True (JPEGs decoded at 1/2-1/8 scale when "
                             "the crop allows)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default: torch's); DataLoader workers use 1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    builders = {
        "hf_vit": hf_vit_pipeline,
        "timm": timm_pipeline,
        "transformers example": transformers_example_pipeline,
    }
    if args.reduced_jpeg_decoding:
        builders["hf_vit (reduced JPEG decoding)"] = (
            lambda *a: hf_vit_pipeline(*a, reduced_jpeg_decoding=True))

    print(", ".join(f"{k}: {v}" for k, v in environment(["timm", "torchvision", "datasets", "pillow"]).items()))
    rows, results = [], {}
    busy_start, own_start, wall_start = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    load_start = os.getloadavg()
    for size in args.sizes:
        for workers in args.workers:
            pipelines = {name: build(args.root, size, workers, args.batch_size, args.seed)
                         for name, build in builders.items()}
            counts = {name: count for name, (_, _, count) in pipelines.items()}
            if len(set(counts.values())) != 1:
                raise SystemExit(f"the pipelines read different numbers of training images: {counts}")
            for name, (loader, _, _) in pipelines.items():
                if args.skip + args.batches > len(loader):
                    parser.error(f"--skip + --batches exceed the {len(loader)} batches of one epoch")
            speeds = {name: [] for name in pipelines}
            cpu = {name: [] for name in pipelines}  # CPU seconds per image (main process + workers)
            names = list(pipelines)
            for round_index in range(args.rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    loader, set_epoch, _ = pipelines[name]
                    if set_epoch is not None:
                        set_epoch(round_index)
                    batches = iter(loader)
                    for _ in range(args.skip):
                        next(batches)
                    start, cpu_start = time.perf_counter(), pipeline_cpu_seconds(batches)
                    for _ in range(args.batches):
                        pixel_values = _pixel_values(next(batches))
                    seconds = time.perf_counter() - start
                    cpu[name].append((pipeline_cpu_seconds(batches) - cpu_start) / (args.batches * args.batch_size))
                    del batches  # stops this pipeline's workers before the next one is timed
                    expected = (args.batch_size, 3, size, size)
                    if tuple(pixel_values.shape) != expected or pixel_values.dtype != torch.float32:
                        raise SystemExit(f"{name}: batch {tuple(pixel_values.shape)} {pixel_values.dtype}, expected "
                                         f"{expected} float32")
                    speeds[name].append(args.batches * args.batch_size / seconds)
            results[(size, workers)] = speeds
            for name in names:
                ratios = [own / peer for own, peer in zip(speeds["hf_vit"], speeds["timm"])]
                against_timm = [own / peer for own, peer in zip(speeds[name], speeds["timm"])]
                cell = (f"{median(against_timm):.2f}x ({min(against_timm):.2f}-{max(against_timm):.2f})"
                        if name != "timm" else "-")
                cpu_ratio = median(cpu["timm"]) / median(cpu[name])
                target = result = ""
                if name == "hf_vit":
                    target, result = ">= 1.5x", "PASS" if median(ratios) >= 1.5 else "MISS"
                rows.append([size, workers, name, f"{median(speeds[name]):.0f}", cell,
                             f"{median(cpu[name]) * 1e3:.2f}", f"{cpu_ratio:.2f}x" if name != "timm" else "-",
                             target, result])
            print(markdown_table(HEADERS, rows[-len(names):]), flush=True)

    wall = time.perf_counter() - wall_start
    others = (machine_busy_seconds() - busy_start) - (own_cpu_seconds() - own_start)
    print()
    print(markdown_table(HEADERS, rows))
    print(f"\nload average (1 min): {load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; other "
          f"processes kept {others / wall:.2f} of the {os.cpu_count()} cores busy on average during the "
          f"{wall:.0f} s run; batch {args.batch_size}, {args.rounds} rounds of {args.batches} batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
