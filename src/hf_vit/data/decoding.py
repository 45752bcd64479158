"""The random resized crop on the decoded image (ViT paper, section 4.1 and appendix B: the reference's inception crop,
torchvision's `RandomResizedCrop`): each image's box is drawn in its original size, cut from the decoded image and
resized once, antialiased, to the model size; then scaled and normalised as `ViTImageProcessor` does, written into
one float32 batch.

    rows ({"bytes", "path"}, PIL images, arrays) + draws (B, CROP_DRAWS)
      -> per image: open (header only) -> box in the upright image -> decode (a JPEG only down to the box's last
         rows; optionally at a reduced DCT scale) -> the processor's conversion (EXIF, alpha on white, grey, 16-bit)
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
from typing import NamedTuple

import numpy as np
import PIL.Image
import pyarrow
import torch

from ..image_processing_hf_vit import _CONFIG_KEYS, HfViTImageProcessor, _PixelValuesWriter, _resize
from .augmentation import crop_is_flipped


_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# Where Pillow's getexif() looks for an orientation: without any of these, an image is upright.
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
_MAX_AUTO_THREADS = 8
# JPEG start-of-frame markers (SOF0-SOF15 except DHT, JPG and DAC): their header holds the image height.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _read(value) -> bytes | None:
    """The file bytes of an undecoded {"bytes", "path"} value (read whole: one read), else None."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            return value["bytes"]
        with open(value["path"], "rb") as f:
            return f.read()
    return None


def _orientation(image: PIL.Image.Image) -> int:
    if not any(key in image.info for key in _ORIENTATION_SOURCES) and not hasattr(image, "tag_v2"):
        return 1  # no metadata to read it from (reading it is a noticeable part of a small image's cost)
    return image.getexif().get(_EXIF_ORIENTATION, 1)


def _upright_size(image: PIL.Image.Image, orientation: int) -> tuple[int, int]:
    """(height, width) of a PIL image once turned upright from its EXIF orientation (as the processor shows it)."""
    width, height = image.size
    return (width, height) if orientation in _TRANSPOSED_ORIENTATIONS else (height, width)


def _is_plain(image: PIL.Image.Image, orientation: int) -> bool:
    """Whether the processor takes the image's pixels as they are: upright 8-bit RGB or grey, no transparency."""
    return orientation == 1 and image.mode in ("RGB", "L") and "transparency" not in image.info


class _JpegFrame(NamedTuple):
    height_offset: int  # where the frame header's 2-byte height is
    height: int
    width: int
    block_rows: int  # pixel rows per row of blocks (8 x the largest vertical sampling factor)
    components: int


def _jpeg_frame(data: bytes) -> _JpegFrame | None:
    """
    The frame header of a JPEG that PIL reads as an upright 8-bit "L" or "RGB" image (1 or 3 components, no EXIF or
    XMP segment that could turn it), else None (the general path then handles it).
    """
    if data[:2] != b"\xff\xd8":
        return None
    index, end = 2, len(data)
    while index + 4 <= end:
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            index += 2
        elif marker == 0xE1:  # APP1: EXIF or XMP, which may hold an orientation
            return None
        elif marker in _SOF_MARKERS:
            # FF Cn, length (2), precision (1), height (2), width (2), components (1), then 3 bytes per component:
            # id, sampling factors (horizontal << 4 | vertical), quantisation table.
            if index + 10 > end:
                return None
            precision, components = data[index + 4], data[index + 9]
            height, width = data[index + 5] << 8 | data[index + 6], data[index + 7] << 8 | data[index + 8]
            if precision != 8 or components not in (1, 3) or not (height and width):
                return None
            if index + 10 + 3 * components > end:
                return None
            vertical = max(data[index + 11 + 3 * k] & 0x0F for k in range(components))
            return _JpegFrame(index + 5, height, width, 8 * vertical, components)
        elif marker == 0xDA:  # a scan before any frame header
            return None
        else:
            index += 2 + (data[index + 2] << 8 | data[index + 3])
    return None


def _jpeg_down_to(data: bytes, frame: _JpegFrame, bottom: int) -> bytes:
    """
    The JPEG `data` changed so that only its rows above `bottom` (plus the block rows the decoder needs below them)
    are decoded: its frame header's height is lowered, and libjpeg then stops after those rows and skips the rest of
    the scan. The rows above `bottom` are the full decode's, exactly (tests/test_crops.py): one extra row of blocks
    keeps the chroma upsampling of the last needed rows unchanged. `data` itself when that saves no row of blocks.
    """
    block = frame.block_rows
    rows = ((bottom + block - 1) // block + 1) * block
    if rows > frame.height - block:
        return data
    patched = bytearray(data)
    patched[frame.height_offset : frame.height_offset + 2] = rows.to_bytes(2, "big")
    return bytes(patched)


def _pil_pixels(image: PIL.Image.Image) -> torch.Tensor:
    """
    An "RGB" or "L" PIL image -> (1, C, h, w) uint8, channels-last. RGB comes as 4 channels, PIL's own RGBX memory
    without a copy (through Pillow's Arrow export, 11.2 and later; `_decode_crop` drops the padding channel after
    resizing: resizing 4 channels costs torch's uint8 kernel what 3 do); else, and for "L", a copy.
    """
    width, height = image.size
    if image.mode == "RGB":
        try:
            values = pyarrow.array(image).values  # (h * w * 4,) uint8, sharing PIL's memory
            return torch.from_dlpack(values).view(1, height, width, 4).permute(0, 3, 1, 2)
        except (AttributeError, TypeError, ValueError, pyarrow.ArrowException, RuntimeError):
            pass  # older Pillow, or an image stored in several memory blocks
    pixels = torch.from_numpy(np.array(image))  # (h, w, 3) or (h, w)
    return pixels.permute(2, 0, 1)[None] if pixels.ndim == 3 else pixels[None, None]


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


def _jpeg_crop(data: bytes, frame: _JpegFrame, draws, augmentation, plan: _OutputPlan, reduced_jpeg_decoding: bool):
    """An upright RGB / grey JPEG's crop box, decoded only as far down as the box reaches (or, with
    `reduced_jpeg_decoding`, at a reduced DCT scale when the box allows it): (1, C, h, w) uint8."""
    height, width = frame.height, frame.width
    top, left, crop_h, crop_w = augmentation.crop_box(height, width, draws)
    scale = _dct_scale(crop_h, crop_w, plan.height, plan.width) if reduced_jpeg_decoding else 1
    image = PIL.Image.open(io.BytesIO(data if scale > 1 else _jpeg_down_to(data, frame, top + crop_h)))
    if scale > 1:
        image.draft(image.mode, (max(1, width // scale), max(1, height // scale)))
        top, left, crop_h, crop_w = _box_in(image.size[1], image.size[0], height, width, top, left, crop_h, crop_w)
    return _pil_pixels(image.crop((left, top, left + crop_w, top + crop_h)))


def _pil_crop(image, draws, augmentation, plan: _OutputPlan, reduced_jpeg_decoding: bool, index: int):
    """A PIL image -> its crop box's pixels as the processor reads them, (1, C, h, w) uint8 or float32."""
    orientation = _orientation(image)
    height, width = _upright_size(image, orientation)
    top, left, crop_h, crop_w = augmentation.crop_box(height, width, draws)
    if reduced_jpeg_decoding:  # a no-op for formats other than JPEG and for images already decoded
        scale = _dct_scale(crop_h, crop_w, plan.height, plan.width)
        if scale > 1:
            image.draft(image.mode, (max(1, image.size[0] // scale), max(1, image.size[1] // scale)))
    if _is_plain(image, orientation):  # the processor takes these pixels as they are: cut them out in PIL
        top, left, crop_h, crop_w = _box_in(image.size[1], image.size[0], height, width, top, left, crop_h, crop_w)
        return _pil_pixels(image.crop((left, top, left + crop_w, top + crop_h)))
    data, layout = HfViTImageProcessor._decode(image, index, plan.convert_rgb, None)
    decoded_h, decoded_w = _array_size(data, layout)
    top, left, crop_h, crop_w = _box_in(decoded_h, decoded_w, height, width, top, left, crop_h, crop_w)
    return _array_crop(data, layout, top, left, crop_h, crop_w)


def _box_in(decoded_h, decoded_w, height, width, top, left, crop_h, crop_w):
    """The box (top, left, crop_h, crop_w) of a height x width image in the same image decoded at another size."""
    if (decoded_h, decoded_w) == (height, width):
        return top, left, crop_h, crop_w
    # NOTE: decoded at a reduced scale, the box's edges snap to the reduced grid: a shift of less than one output pixel
    # (the box spans at least `scale` original pixels per output pixel).
    fy, fx = decoded_h / height, decoded_w / width
    bottom, right = min(decoded_h, round((top + crop_h) * fy)), min(decoded_w, round((left + crop_w) * fx))
    top, left = min(round(top * fy), bottom - 1), min(round(left * fx), right - 1)
    return top, left, bottom - top, right - left


def _array_crop(data, layout: str, top: int, left: int, crop_h: int, crop_w: int) -> torch.Tensor:
    """The box of an (H, W, C) / (C, H, W) array or tensor -> (1, C, h, w), uint8 or float32."""
    if layout == "hwc":
        crop = data[top : top + crop_h, left : left + crop_w]
    else:
        crop = data[:, top : top + crop_h, left : left + crop_w]
    # Contiguous (the layout torch's uint8 resize kernel is fast on) and writable (torch's arrays must be): copied
    # only when not already both.
    if isinstance(crop, torch.Tensor):
        crop = crop.contiguous()
    else:
        crop = np.ascontiguousarray(crop)
        crop = torch.from_numpy(crop if crop.flags.writeable else crop.copy())
    if crop.dtype != torch.uint8:
        crop = crop.float()
    return crop.permute(2, 0, 1)[None] if layout == "hwc" else crop[None]


def _decode_crop(value, index: int, draws, augmentation, plan: _OutputPlan, reduced_jpeg_decoding: bool):
    """One image -> its crop resized to the output size, (C, H, W) uint8 or float32, mirrored if drawn so."""
    data = _read(value)
    frame = _jpeg_frame(data) if data is not None else None
    if frame is not None:
        crop = _jpeg_crop(data, frame, draws, augmentation, plan, reduced_jpeg_decoding)
    elif data is not None or isinstance(value, PIL.Image.Image):
        image = PIL.Image.open(io.BytesIO(data)) if data is not None else value
        crop = _pil_crop(image, draws, augmentation, plan, reduced_jpeg_decoding, index)
    else:
        array, layout = HfViTImageProcessor._decode(value, index, plan.convert_rgb, None)
        top, left, crop_h, crop_w = augmentation.crop_box(*_array_size(array, layout), draws)
        crop = _array_crop(array, layout, top, left, crop_h, crop_w)
    resized = _resize(crop, plan.height, plan.width, plan.resample)[0]
    if resized.shape[0] == 4:  # PIL's RGBX (`_pil_pixels`): the padding channel goes
        resized = resized[:3]
    # Channels first while still 8-bit (a quarter of the float bytes), and mirrored there: cheap on contiguous memory.
    resized = resized.contiguous()
    return resized.flip(-1) if crop_is_flipped(draws) else resized


def _new_batch(shape) -> torch.Tensor:
    """An uninitialised float32 batch; in a DataLoader worker, in shared memory, where the batch has to go anyway to
    reach the main process (as torch's default_collate does: sending a private tensor would copy it there)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    storage = torch.empty(0, dtype=torch.float32)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.float32).new(storage).view(shape)


def crop_resize_batch(
    images, image_processor, augmentation, draws: torch.Tensor, num_threads: int | None = None,
    reduced_jpeg_decoding: bool | None = None,
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
            that scale still covers the output size (None: the augmentation's `reduced_jpeg_decoding`). NOTE: off by
            default: the crop's pixels then come from a DCT-domain reduction followed by the resize instead of the
            resize alone (another antialiasing filter: a level or two of 8 bits on average), so they differ from
            torchvision's and from the same images held decoded in memory (`cache_decoded_images`).

    Every other shortcut keeps the pixels exactly: a JPEG is decoded only down to its box's last rows (plus one row
    of blocks), PIL cuts the box before any conversion, an RGB image's memory is read without a copy.
    """
    plan = _OutputPlan(image_processor)
    if reduced_jpeg_decoding is None:
        reduced_jpeg_decoding = bool(getattr(augmentation, "reduced_jpeg_decoding", False))
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
    channels = first.shape[0] if first is not None else 3
    pixel_values = _new_batch((batch, channels, plan.height, plan.width))

    def write(index, resized=None):
        resized = crop(index) if resized is None else resized
        if resized.shape[0] not in (1, channels):
            raise ValueError(
                f"Images with different channel counts ({channels} and {resized.shape[0]}) cannot be batched; "
                "set do_convert_rgb=True to make every image RGB."
            )
        scale, bias = plan.affine(channels, resized.dtype == torch.uint8)
        target = pixel_values[index]
        target.copy_(resized)  # to float32; a grey image's one channel is broadcast to three
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


__all__ = ["crop_resize_batch", "default_decode_threads"]
