"""The figure of docs/training.md, "Augmentation on the decoded image": one crop box of a real photo (scikit-learn's
china.jpg, 640x427) taken the way the recipes take it now (cut from the decoded photo, resized once to 224x224) and
the way they took it before issue 17 (cut from the photo already resized to 224x224, then stretched back).

    python docs/figures/crops/make_crop_figure.py        # writes docs/figures/crops/crop_before_after_resize.png
"""

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from hf_vit import ViTImageProcessor  # noqa: E402
from hf_vit.data import BatchAugmentation, crop_resize_batch  # noqa: E402


SIZE = 224
# (top, left, height, width) in the 427 x 640 photo: 8% of its area (the smallest crop the paper's augmentation
# draws), aspect 4/3, over the temple.
BOX = (105, 120, 128, 171)


class FixedBox(BatchAugmentation):
    """The recipes' augmentation with one given box (the figure compares ways of cutting the same box)."""

    def crop_box(self, height, width, draws):
        return BOX


def to_image(pixel_values: torch.Tensor) -> np.ndarray:
    """Normalised (3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((pixel_values.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def main() -> int:
    photo = Image.fromarray(load_sample_images().images[0])  # china.jpg, 640 x 427
    processor = ViTImageProcessor(size=SIZE)
    augmentation = FixedBox("inception_crop_flip", processor.image_mean, processor.image_std)
    draws = augmentation.draw_crops(1)
    draws[:, -1] = 1.0  # no flip
    now = crop_resize_batch([photo], processor, augmentation, draws)[0]

    # Before: the processor's 224 x 224 image (the whole photo squeezed to the model size), the same box in it, resized
    # back up to 224 x 224.
    resized = processor(photo)["pixel_values"]  # (1, 3, 224, 224)
    top, left, height, width = BOX
    fy, fx = SIZE / photo.height, SIZE / photo.width
    small = resized[:, :, round(top * fy) : round((top + height) * fy), round(left * fx) : round((left + width) * fx)]
    before = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]

    figure, axes = plt.subplots(1, 3, figsize=(12, 4.8))
    axes[0].imshow(np.asarray(photo))
    axes[0].add_patch(patches.Rectangle((left, top), width, height, fill=False, edgecolor="yellow", linewidth=2))
    axes[0].set_title(f"the photo ({photo.width}x{photo.height}) and one crop box (8% of it)")
    axes[1].imshow(to_image(before))
    axes[1].set_title(f"before: cut from the {SIZE}x{SIZE} image\n({small.shape[-1]}x{small.shape[-2]} pixels stretched back)")
    axes[2].imshow(to_image(now))
    axes[2].set_title(f"now: cut from the decoded photo\n({width}x{height} pixels, resized once)")
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crop_before_after_resize.png")
    figure.savefig(out, dpi=80)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
