"""Write an ImageNet-shaped image folder made only from what is on any machine offline: scikit-learn's two sample
photos (china.jpg, flower.jpg, 640x427), cut into random regions, scaled to typical photo sizes, mirrored,
colour-jittered, given sensor-like grain and saved as JPEGs of qualities 90-97, in class sub-folders:

    ROOT/train/class_000/00000.jpg ...    (ImageNet's layout: one folder per class)
    ROOT/val/class_000/...                (--val-fraction of the images)

Sizes follow ImageNet's mix roughly (most are 500 pixels on the long side: 500x375, 375x500, 500x333, ...; a few
larger), with a few grey-scale JPEGs. NOTE: images larger than the sources (800x600, 1024x768) are upscaled and so
smoother than real photos of that size: their JPEGs decode a little faster than real ones would.

    python bench/make_photo_folder.py /tmp/photos --images 5000 --classes 100

The folder is written where you say, never into the repository; an existing non-empty folder is refused.
"""

import argparse
import os
import sys

import numpy as np
import PIL.Image
import PIL.ImageEnhance


# (width, height, share in percent): ImageNet-like, most photos 500 pixels on the long side.
SIZES = (
    (500, 375, 45), (375, 500, 15), (500, 333, 15), (333, 500, 5), (500, 500, 5), (400, 300, 5),
    (640, 480, 5), (800, 600, 3), (1024, 768, 2),
)
GREY_SHARE = 0.02
# The sources are smooth (and JPEGs themselves): grain and high qualities bring the files near real photos' entropy
# (about 0.5 bytes per pixel here; ImageNet's training JPEGs average about 110 KB for about 180,000 pixels, 0.6).
NOISE_SIGMA = 8.0
QUALITY = (90, 97)


def _hue_shift(image: PIL.Image.Image, shift: float) -> PIL.Image.Image:
    """Rotate the hue by `shift` (a fraction of the colour circle)."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return PIL.Image.fromarray(hsv, "HSV").convert("RGB")


def make_photo(sources, width: int, height: int, rng) -> PIL.Image.Image:
    """One photo of `width` x `height` from a random region of a random source photo."""
    source = sources[rng.integers(len(sources))]
    sw, sh = source.size
    aspect = width / height
    # The largest region of the target's aspect ratio, then 45-100% of its area, placed at random.
    full_w, full_h = (sw, sw / aspect) if sw / sh <= aspect else (sh * aspect, sh)
    share = np.sqrt(rng.uniform(0.45, 1.0))
    region_w, region_h = full_w * share, full_h * share
    left, top = rng.uniform(0, sw - region_w), rng.uniform(0, sh - region_h)
    image = source.resize((width, height), PIL.Image.Resampling.BICUBIC,
                          box=(left, top, left + region_w, top + region_h))
    if rng.random() < 0.5:
        image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    image = PIL.ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = PIL.ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    image = PIL.ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
    image = _hue_shift(image, rng.uniform(-0.08, 0.08))
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0.0, NOISE_SIGMA, size=(height, width, 3))
    image = PIL.Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image.convert("L") if rng.random() < GREY_SHARE else image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="Folder to write (created; must be empty or absent)")
    parser.add_argument("--images", type=int, default=5000, help="Number of JPEGs in all")
    parser.add_argument("--classes", type=int, default=100, help="Number of class folders")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="Share of the images written to val/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < args.classes or args.classes < 2:
        parser.error(f"--images ({args.images}) must be at least --classes ({args.classes}), and --classes >= 2")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    root = os.path.abspath(args.root)
    repository = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    if os.path.commonpath([root, repository]) == repository:
        parser.error(f"{root} is inside the repository; write the folder elsewhere (e.g. /tmp/photos)")
    if os.path.isdir(root) and os.listdir(root):
        parser.error(f"{root} exists and is not empty")

    from sklearn.datasets import load_sample_images

    sources = [PIL.Image.fromarray(image) for image in load_sample_images().images]
    rng = np.random.default_rng(args.seed)
    sizes = np.array([(w, h) for w, h, _ in SIZES])
    shares = np.array([share for _, _, share in SIZES], dtype=np.float64)
    shares /= shares.sum()
    total_bytes = 0
    for index in range(args.images):
        split = "val" if rng.random() < args.val_fraction else "train"
        folder = os.path.join(root, split, f"class_{index % args.classes:03d}")
        os.makedirs(folder, exist_ok=True)
        width, height = sizes[rng.choice(len(sizes), p=shares)]
        image = make_photo(sources, int(width), int(height), rng)
        path = os.path.join(folder, f"{index:06d}.jpg")
        image.save(path, "JPEG", quality=int(rng.integers(QUALITY[0], QUALITY[1] + 1)))
        total_bytes += os.path.getsize(path)
        if (index + 1) % 1000 == 0:
            print(f"{index + 1} images written", flush=True)
    print(f"wrote {args.images} JPEGs ({total_bytes / args.images / 1024:.0f} KB on average) in {args.classes} "
          f"classes to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
