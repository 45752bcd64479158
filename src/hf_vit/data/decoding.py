"""The random resized crop on the decoded image (ViT paper, section 4.1 and appendix B: the reference's inception crop,
torchvision's `RandomResizedCrop`): each image's box is drawn in its original size, cut from the decoded image and
resized once, antialiased, to the model size; then scaled and normalised as `ViTImageProcessor` does, written into
one float32 batch.

    rows ({"bytes", "path"}, PIL images, arrays) + draws (B, CROP_DRAWS)
      -> per image: open (header only) -> box in the upright image -> decode (JPEG: at a reduced DCT scale where the box
         stays at least the model size) -> the processor's conversion (EXIF, alpha on white, grey, 16-bit)
         -> crop -> one antialiased resize (the processor's kernel and filter) -> flip -> (x * scale + bias) into
         pixel_values[i]
      -> pixel_values (B, C, H, W) float32

Images of a batch are decoded in a small thread pool (PIL's decoders and torch's kernels release the GIL): the draws
are made before any decoding, so the batch does not depend on the number of threads or on their timing.
"""

import io
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import torch

from ..image_processing_hf_vit import _CONFIG_KEYS, HfViTImageProcessor, _PixelValuesWriter, _resize
from .augmentation import crop_is_flipped


_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_MAX_AUTO_THREADS = 8


def open_image(value):
    """A row's image ready to decode: an undecoded {"bytes", "path"} value is opened (header read, pixels not yet
    decoded, so that a JPEG can still be decoded at a reduced scale); PIL images and arrays are returned as they are."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        return PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    return value


def _upright_size(image: PIL.Image.Image) -> tuple[int, int]:
    """(height, width) of a PIL image once turned upright from its EXIF orientation (as the processor shows it)."""
    width, height = image.size
    if image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return height, width


def _array_size(data, layout: str) -> tuple[int, int]:
    return tuple(data.shape[:2]) if layout == "hwc" else tuple(data.shape[1:3])


def _dct_scale(crop_h: int, crop_w: int, out_h: int, out_w: int) -> int:
    """The largest JPEG DCT scale (8, 4, 2 or 1) at which the crop box still covers at least the output size."""
    for scale in (8, 4, 2):
        if crop_h >= scale * out_h and crop_w >= scale * out_w:
            return scale
    return 1


def default_decode_threads() -> int:
    """Threads per collator: the CPUs this process may use, shared between the DataLoader workers and the processes
    on this machine (torchrun's LOCAL_WORLD_SIZE), at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    info = torch.utils.data.get_worker_info()
    workers = info.num_workers if info is not None else 1
    return max(1, min(_MAX_AUTO_THREADS, cpus // (processes * workers)))


def _one_torch_thread():
    # Each pool thread runs small per-image kernels; torch would otherwise give each thread its own full team of
    # intra-op threads (oversubscribing the cores). The same as the DataLoader's pin-memory thread does.
    torch.set_num_threads(1)


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _thread_pool(num_threads: int) -> ThreadPoolExecutor:
    """One pool per process and size (keyed by process id: a forked DataLoader worker makes its own)."""
    key = (os.getpid(), num_threads)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(num_threads, thread_name_prefix="hf_vit-decode",
                                                    initializer=_one_torch_thread)
        return pool


class _OutputPlan:
    """What the processor would make of a batch, read off its settings: output size, filter, channels, affine."""

    def __init__(self, image_processor):
        settings = {key: getattr(image_processor, key, None) for key in _CONFIG_KEYS}
        defaults = HfViTImageProcessor()
        settings = {key: getattr(defaults, key) if value is None else value for key, value in settings.items()}
        self.settings = settings = HfViTImageProcessor._resolve(settings)
        # A crop is always resized: to the centre crop's size when the processor crops (the model's input), else to
        # the resize size (also when do_resize is off: a random box has no fixed size of its own).
        size = settings["crop_size"] if settings["do_center_crop"] else settings["size"]
        self.height, self.width = size["height"], size["width"]
        self.resample = settings["resample"]
        self.convert_rgb = settings["do_convert_rgb"]
        self._writer = _PixelValuesWriter(1, settings)
        self._affines = {}

    def affine(self, channels: int, is_uint8: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, bias), each (C, 1, 1) float32: the processor's fused rescale + normalisation."""
        key = (channels, is_uint8)
        if key not in self._affines:
            self._writer._check_channels(channels)
            scale, bias = self._writer._affine(channels, is_uint8)
            self._affines[key] = (scale[0], bias[0])
        return self._affines[key]


def _decode_crop(value, index: int, draws, augmentation, plan: _OutputPlan, reduced_jpeg_decoding: bool):
    """One image -> its crop resized to the output size, (1, C, H, W) uint8 or float32, mirrored if drawn so."""
    image = open_image(value)
    if isinstance(image, PIL.Image.Image):
        height, width = _upright_size(image)
        top, left, crop_h, crop_w = augmentation.crop_box(height, width, draws)
        if reduced_jpeg_decoding:
            scale = _dct_scale(crop_h, crop_w, plan.height, plan.width)
            if scale > 1:  # a no-op for formats other than JPEG and for images already decoded
                image.draft(image.mode, (max(1, image.size[0] // scale), max(1, image.size[1] // scale)))
        data, layout = HfViTImageProcessor._decode(image, index, plan.convert_rgb, None)
        decoded_h, decoded_w = _array_size(data, layout)
        if (decoded_h, decoded_w) != (height, width):
            # Decoded at a reduced scale: the box in the reduced image's pixels. NOTE: its edges snap to that grid,
            # a shift of less than one output pixel (the box spans at least `scale` original pixels per output pixel).
            fy, fx = decoded_h / height, decoded_w / width
            bottom, right = min(decoded_h, round((top + crop_h) * fy)), min(decoded_w, round((left + crop_w) * fx))
            top, left = min(round(top * fy), bottom - 1), min(round(left * fx), right - 1)
            crop_h, crop_w = bottom - top, right - left
    else:
        data, layout = HfViTImageProcessor._decode(image, index, plan.convert_rgb, None)
        height, width = _array_size(data, layout)
        top, left, crop_h, crop_w = augmentation.crop_box(height, width, draws)
    if layout == "hwc":
        crop = data[top : top + crop_h, left : left + crop_w]
    else:
        crop = data[:, top : top + crop_h, left : left + crop_w]
    # A contiguous copy of the crop only (smaller than the image; the layout torch's uint8 resize kernel is fast on;
    # writable, unlike the array PIL gives).
    crop = crop.contiguous() if isinstance(crop, torch.Tensor) else torch.from_numpy(np.array(crop, order="C"))
    if crop.dtype != torch.uint8:
        crop = crop.float()
    crop = crop.permute(2, 0, 1)[None] if layout == "hwc" else crop[None]  # (1, C, h, w)
    resized = _resize(crop, plan.height, plan.width, plan.resample)
    return resized.flip(-1) if crop_is_flipped(draws) else resized


def crop_resize_batch(
    images, image_processor, augmentation, draws: torch.Tensor, num_threads: int | None = None,
    reduced_jpeg_decoding: bool = False,
) -> torch.Tensor:
    """
    Random resized crops of the decoded images -> normalised `pixel_values` (B, C, H, W) float32, as the processor
    would make of the crops (its conversion, resize filter, rescale and normalisation; the output size is the
    processor's `crop_size` with `do_center_crop`, else its `size`).

    Args:
        images: the rows' images: undecoded {"bytes", "path"} values (best: JPEGs can then be decoded at a reduced
            scale), PIL images, or arrays / tensors as the processor takes them (e.g. `DecodedImages`' arrays).
        augmentation: draws the boxes (`crop_box(height, width, draws)`; a `BatchAugmentation`).
        draws: (B, CROP_DRAWS) from `augmentation.draw_crops`, one row per image.
        num_threads: images decoded at once (None: `default_decode_threads()`; 1: in the calling thread).
        reduced_jpeg_decoding: decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when the crop box at
            that scale still covers the output size. NOTE: off by default: the crop's pixels then come from a
            DCT-domain reduction followed by the resize instead of the resize alone (a different antialiasing
            filter, of at most a few 8-bit levels), so they differ from torchvision's and from the same images held
            decoded in memory (`cache_decoded_images`).
    """
    plan = _OutputPlan(image_processor)
    batch = len(images)
    if batch == 0:
        raise ValueError("crop_resize_batch: the batch has no images.")
    if draws.shape[0] != batch:
        raise ValueError(f"crop_resize_batch: {draws.shape[0]} rows of draws for {batch} images.")
    draw_rows = draws.tolist()

    def crop(index):
        return _decode_crop(images[index], index, draw_rows[index], augmentation, plan, reduced_jpeg_decoding)

    num_threads = default_decode_threads() if num_threads is None else num_threads
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be >= 1 (or None for the default), got {num_threads}.")
    pool = _thread_pool(min(num_threads, batch)) if num_threads > 1 and batch > 1 else None
    # Without do_convert_rgb the channel count (1 or 3) is the first image's: decode it before the others.
    first = crop(0) if not plan.convert_rgb else None
    channels = first.shape[1] if first is not None else 3
    pixel_values = torch.empty((batch, channels, plan.height, plan.width), dtype=torch.float32)

    def write(index, resized=None):
        resized = crop(index) if resized is None else resized
        if resized.shape[1] not in (1, channels):
            raise ValueError(
                f"Images with different channel counts ({channels} and {resized.shape[1]}) cannot be batched; "
                "set do_convert_rgb=True to make every image RGB."
            )
        scale, bias = plan.affine(channels, resized.dtype == torch.uint8)
        target = pixel_values[index]
        target.copy_(resized[0])  # (C, H, W); a grey image's one channel broadcast to three
        target.mul_(scale).add_(bias)

    if first is not None:
        write(0, first)
    rest = range(1 if first is not None else 0, batch)
    if pool is None:
        for index in rest:
            write(index)
    else:
        for future in [pool.submit(write, index) for index in rest]:
            future.result()
    return pixel_values


__all__ = ["crop_resize_batch", "default_decode_threads", "open_image"]
