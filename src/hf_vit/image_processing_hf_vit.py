"""ViT image processor: any PIL / NumPy / torch image -> `pixel_values` (B, C, H, W) float32.

The ViT paper's input pipeline (section 4.1: images at the model's resolution; pixel values in [-1, 1] as in the
reference code's `value_range(-1, 1)`), for inference and fine-tuning inputs.

This file is copied next to saved weights for remote code (`trust_remote_code=True` where hf_vit is not installed),
so it imports only torch, numpy, PIL and transformers: no hf_vit imports, no relative imports.
"""

import functools
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.utils import logging


logger = logging.get_logger(__name__)

_NEAREST = int(PIL.Image.Resampling.NEAREST)
_BILINEAR = int(PIL.Image.Resampling.BILINEAR)
_BICUBIC = int(PIL.Image.Resampling.BICUBIC)
_RESAMPLE_BY_NAME = {"nearest": _NEAREST, "bilinear": _BILINEAR, "bicubic": _BICUBIC}
_INTERPOLATE_MODE = {_BILINEAR: "bilinear", _BICUBIC: "bicubic"}
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALLOWED_INPUTS = (
    "allowed: a PIL image of any mode, or a numpy array / torch tensor of shape (H, W), (H, W, C) or (C, H, W) "
    "with C in {1, 3, 4} and dtype uint8, uint16, bool or float (floats in [0, 1]); a list of those; "
    "or a 4-D (B, C, H, W) / (B, H, W, C) array or tensor as a batch"
)
# transformers ImagesKwargs keys this processor does not use: tolerated when None (generic callers pass them).
_IGNORED_IF_NONE = ("default_to_square", "do_pad", "pad_size", "disable_grouping", "image_seq_length")
# Settings saved in preprocessor_config.json, with their defaults; each can be overridden per call.
_DEFAULTS = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": int(PIL.Image.Resampling.BILINEAR),
    "do_center_crop": False,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],  # NOTE: the paper's [-1, 1] input, not ImageNet statistics
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
}
_CONFIG_KEYS = tuple(_DEFAULTS)
_CALL_KEYS = ("return_tensors", "input_data_format", "data_format", "device")
_CHUNK_BYTES = 8 << 20  # images stacked per resize call: see HfViTImageProcessor._process


def _bad_image(index: int, problem: str) -> ValueError:
    return ValueError(f"Invalid image at index {index}: {problem}; {_ALLOWED_INPUTS}.")


def _size_dict(value: Any, name: str) -> dict[str, int]:
    """int | (height, width) | {"height", "width"} | transformers SizeDict -> {"height": h, "width": w}, validated."""
    if hasattr(value, "height") and hasattr(value, "width") and not isinstance(value, Mapping):
        value = {"height": value.height, "width": value.width}  # transformers' SizeDict
    if isinstance(value, Mapping) and set(value) == {"height", "width"}:
        height, width = value["height"], value["width"]
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        height, width = value
    elif isinstance(value, int) and not isinstance(value, bool):
        height = width = value
    else:
        raise ValueError(
            f"`{name}` must be an int, a (height, width) pair or {{'height': h, 'width': w}}; got {value!r} "
            "(shortest_edge / longest_edge resizing is not supported: ViT takes a fixed resolution)."
        )
    for side in (height, width):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 1:
            raise ValueError(f"`{name}` sides must be positive ints; got {value!r}.")
    return {"height": int(height), "width": int(width)}


def _resample_id(value: Any) -> int:
    """PIL.Image.Resampling | int | "nearest" / "bilinear" / "bicubic" -> PIL filter id (0, 2 or 3)."""
    if isinstance(value, str) and value.lower() in _RESAMPLE_BY_NAME:
        return _RESAMPLE_BY_NAME[value.lower()]
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if is_int and int(value) in _RESAMPLE_BY_NAME.values():
        return int(value)
    raise ValueError(
        f"`resample` must be one of PIL.Image.Resampling.NEAREST (0), BILINEAR (2), BICUBIC (3) or the names "
        f"{sorted(_RESAMPLE_BY_NAME)}; got {value!r}."
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _float_list(value: Any, name: str) -> list[float]:
    values = [value] if _is_number(value) or isinstance(value, str) else list(value)
    if not values or not all(_is_number(v) and np.isfinite(v) for v in values):
        raise ValueError(f"`{name}` must be a finite float or a non-empty list of finite floats; got {value!r}.")
    return [float(v) for v in values]


def _has_transparency(image: PIL.Image.Image) -> bool:
    if hasattr(image, "has_transparency_data"):  # Pillow >= 10.1
        return image.has_transparency_data
    return image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or image.info.get("transparency") is not None


def pil_to_array(image: PIL.Image.Image, index: int, convert_rgb: bool) -> np.ndarray:
    """PIL image of any mode -> (H, W) or (H, W, 3) array: uint8 (0-255) or float32 (0-1)."""
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9):
            image = PIL.ImageOps.exif_transpose(image)  # camera orientation -> upright pixels
        mode = image.mode
        if _has_transparency(image):
            # Alpha (RGBA, LA, PA, premultiplied, P with an RGBA palette, P / L / RGB with a transparent colour):
            # composite on white, as transformers' convert_to_rgb does.
            rgba = image.convert("RGBA")
            white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = PIL.Image.alpha_composite(white, rgba).convert("RGB")
            if not convert_rgb and mode in ("1", "L", "LA", "La"):
                image = image.convert("L")  # gray stays gray (R = G = B, so this is exact)
            return np.asarray(image)
        if mode in ("RGB", "L"):
            return np.asarray(image)
        if mode == "1":
            return np.asarray(image.convert("L"))  # 0 / 255
        if mode in _SIXTEEN_BIT_MODES:
            return np.asarray(image).astype(np.float32) / 65535.0
        if mode == "I":
            # NOTE: 32-bit "I" images in practice hold 16-bit data (older Pillow versions open 16-bit PNGs as "I";
            # convert("I") of an "I;16" image keeps its values), so they are read on the same 0-65535 scale as
            # "I;16", clipped to [0, 1]. Dividing by the int32 range would turn every real image black.
            return np.clip(np.asarray(image).astype(np.float32) / 65535.0, 0.0, 1.0)
        if mode == "F":
            return np.asarray(image, dtype=np.float32)  # taken as already in [0, 1], like float arrays
        return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, HSV, RGBX, P without transparency, ...
    except (OSError, ValueError, SyntaxError) as error:
        raise _bad_image(index, f"could not decode PIL image of mode {image.mode!r} ({error})") from error


def _value_kind(dtype) -> str | None:
    """numpy or torch dtype -> "uint8" | "bool" | "uint16" | "float" | None (no defined value range)."""
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return "float"
        return {torch.uint8: "uint8", torch.bool: "bool", torch.uint16: "uint16"}.get(dtype)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return "float"
    if dtype.kind == "u" and dtype.itemsize in (1, 2):
        return "uint8" if dtype.itemsize == 1 else "uint16"  # any byte order
    return "bool" if dtype.kind == "b" else None


def _channel_axis(shape: tuple[int, ...], index: int, input_data_format: str | None) -> str:
    """Layout of a 3-D image: "hwc" or "chw". Channels first wins a tie, as in transformers."""
    if input_data_format is not None:
        layout = {"channels_first": "chw", "channels_last": "hwc"}[str(input_data_format)]
        channels = shape[0] if layout == "chw" else shape[-1]
        if channels not in (1, 3, 4):
            raise _bad_image(index, f"shape {tuple(shape)} has {channels} channels with {input_data_format}")
        return layout
    if shape[0] in (1, 3, 4):
        return "chw"
    if shape[-1] in (1, 3, 4):
        return "hwc"
    raise _bad_image(index, f"shape {tuple(shape)} has no channel axis of size 1, 3 or 4 (neither first nor last)")


def _array_to_image(array, index: int, input_data_format: str | None):
    """numpy array / torch tensor -> ((H, W, C) or (C, H, W) data with C in {1, 3}, layout "hwc" | "chw").

    data stays a numpy array or a CPU torch tensor: uint8 (0-255), or any float dtype holding [0, 1] (made float32
    when the batch is stacked).
    """
    is_torch = isinstance(array, torch.Tensor)
    if is_torch:
        array = array.detach()
        if array.device.type != "cpu":
            array = array.cpu()
    dtype = array.dtype
    if array.ndim not in (2, 3):
        raise _bad_image(index, f"got a {array.ndim}-D {type(array).__name__} of shape {tuple(array.shape)}")
    if 0 in array.shape:
        raise _bad_image(index, f"empty image of shape {tuple(array.shape)}")
    layout = "hwc" if array.ndim == 2 else _channel_axis(tuple(array.shape), index, input_data_format)
    if array.ndim == 2:
        array = array[..., None]

    # dtype -> uint8 (0-255) or float (0-1)
    kind = _value_kind(dtype)
    if kind == "uint8":
        pass
    elif kind == "bool":
        array = array.to(torch.uint8) * 255 if is_torch else array.astype(np.uint8) * 255  # like PIL mode "1"
    elif kind == "uint16":
        # 16-bit data ends in [0, 1] like uint8 / 255 (the I;16 convention)
        array = array.to(torch.int32).float() / 65535.0 if is_torch else array.astype(np.float32) / 65535.0
    elif kind == "float":
        low, high = torch.aminmax(array.float()) if is_torch else (np.min(array), np.max(array))
        low, high = float(low), float(high)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise _bad_image(index, "float image contains NaN or infinite values")
        if low < -1e-3 or high > 1.0 + 1e-3:
            logger.warning_once(
                "Float images are taken as already in [0, 1], but got values outside that range: pass uint8 for "
                "0-255 data, or set do_normalize=False if the images are already normalised."
            )
    else:
        raise _bad_image(
            index, f"dtype {dtype} has no defined value range (cast to uint8 for 0-255 or to float for 0-1)"
        )

    channels = array.shape[-1] if layout == "hwc" else array.shape[0]
    if channels == 4:
        array = _composite_on_white(array, layout, is_torch)
    return array, layout


def _composite_on_white(array, layout: str, is_torch: bool):
    """RGBA (uint8 or float) -> RGB on a white background."""
    if layout == "chw":
        array = array.permute(1, 2, 0) if is_torch else array.transpose(1, 2, 0)
    if _value_kind(array.dtype) == "uint8":
        # Same PIL operation as for RGBA PIL images, so arrays and PIL images agree exactly.
        rgba = PIL.Image.fromarray(np.ascontiguousarray(array.numpy() if is_torch else array))  # RGBA
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = np.array(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
        rgb = torch.from_numpy(rgb) if is_torch else rgb
    else:
        array = array.float() if is_torch else array.astype(np.float32)
        alpha = array[..., 3:]
        rgb = array[..., :3] * alpha + (1.0 - alpha)
    return (rgb.permute(2, 0, 1) if is_torch else rgb.transpose(2, 0, 1)) if layout == "chw" else rgb


def _flatten_inputs(images) -> list:
    if images is None:
        raise ValueError(f"`images` is None; {_ALLOWED_INPUTS}.")
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if images.shape[0] == 0:
            raise ValueError(f"`images` is an empty batch of shape {tuple(images.shape)}; {_ALLOWED_INPUTS}.")
        return list(images)
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"`images` is an empty {type(images).__name__}; {_ALLOWED_INPUTS}.")
        return list(images)
    return [images]


@functools.lru_cache(maxsize=64)
def _nearest_indices(in_size: int, out_size: int) -> torch.Tensor:
    """Source index of each output pixel under PIL's NEAREST resize, taken from PIL itself (by resizing an index
    ramp), so that its rounding at exact pixel boundaries is reproduced too."""
    ramp = PIL.Image.fromarray(np.arange(in_size, dtype=np.int32)[None, :])  # mode "I", 1 x in_size
    return torch.from_numpy(np.asarray(ramp.resize((out_size, 1), PIL.Image.Resampling.NEAREST))[0].astype(np.int64))


def _resize(batch: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """(n, C, h, w) uint8 or float32 -> (n, C, height, width), same dtype; PIL-style antialiasing.

    NOTE: for PIL input, PIL's own C resize per image (then stacking the small results) matches PIL exactly but is
    slower than this batched uint8 path (bench/README.md, "Design measurements"), which differs by at most one 8-bit
    level on a fraction of a percent of values (torch's fixed-point precision differs from PIL's).
    """
    if tuple(batch.shape[-2:]) == (height, width):
        return batch
    if resample == _NEAREST:
        rows = _nearest_indices(batch.shape[-2], height)
        cols = _nearest_indices(batch.shape[-1], width)
        return batch[:, :, rows[:, None], cols[None, :]]
    mode = _INTERPOLATE_MODE[resample]
    try:
        # uint8 runs torch's vectorised separable kernel (PIL's algorithm, fixed point, rounded back to uint8)
        return F.interpolate(batch, size=(height, width), mode=mode, antialias=True, align_corners=False)
    except (RuntimeError, NotImplementedError):
        if batch.dtype != torch.uint8:
            raise
        # NOTE: fallback for builds without the uint8 antialiased kernel; same rounding as the uint8 kernel.
        resized = F.interpolate(batch.float(), size=(height, width), mode=mode, antialias=True, align_corners=False)
        return resized.round_().clamp_(0, 255).to(torch.uint8)


def _center_crop(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, C, h, w) -> (n, C, height, width), zero-padded where the image is smaller (as transformers' PIL backend)."""
    in_h, in_w = batch.shape[-2:]
    if (in_h, in_w) == (height, width):
        return batch
    top, left = (in_h - height) // 2, (in_w - width) // 2  # floor, also when negative (padding)
    if top >= 0 and left >= 0:
        return batch[:, :, top : top + height, left : left + width]
    out = batch.new_zeros((*batch.shape[:2], height, width))
    src_top, src_left = max(top, 0), max(left, 0)
    dst_top, dst_left = max(-top, 0), max(-left, 0)
    rows, cols = min(height - dst_top, in_h - src_top), min(width - dst_left, in_w - src_left)
    out[:, :, dst_top : dst_top + rows, dst_left : dst_left + cols] = batch[
        :, :, src_top : src_top + rows, src_left : src_left + cols
    ]
    return out


class _PixelValuesWriter:
    """Resizes / crops / normalizes (n, C, h, w) chunks into one (B, C, H, W) float32 output, at their indices."""

    def __init__(self, batch_size: int, settings: dict[str, Any]):
        self.batch_size, self.settings = batch_size, settings
        self.pixel_values: torch.Tensor | None = None  # allocated by the first chunk (its C, and H, W if no resize)

    def write(self, batch: torch.Tensor, indices: list[int]) -> None:
        settings = self.settings
        if settings["do_resize"]:
            batch = _resize(batch, settings["size"]["height"], settings["size"]["width"], settings["resample"])
        if settings["do_center_crop"]:
            batch = _center_crop(batch, settings["crop_size"]["height"], settings["crop_size"]["width"])
        shape = tuple(batch.shape[1:])
        if self.pixel_values is None:
            self._check_channels(shape[0])
            self.pixel_values = torch.empty((self.batch_size, *shape), dtype=torch.float32)
        elif shape != tuple(self.pixel_values.shape[1:]):
            first = tuple(self.pixel_values.shape[1:])
            if shape[0] != first[0]:
                raise ValueError(
                    f"Images with different channel counts ({first[0]} and {shape[0]}) cannot be batched; "
                    "set do_convert_rgb=True to make every image RGB."
                )
            raise ValueError(
                f"Images of different sizes ({first[1:]} and {shape[1:]}) cannot be batched without resizing or "
                "cropping; set do_resize=True or do_center_crop=True."
            )
        scale, bias = self._affine(shape[0], batch.dtype == torch.uint8)
        contiguous_rows = indices == list(range(indices[0], indices[0] + len(indices)))
        if contiguous_rows:
            target = self.pixel_values[indices[0] : indices[0] + len(indices)]
        else:
            target = torch.empty((len(indices), *shape), dtype=torch.float32)
        # x * scale + bias as a layout change of the 8-bit data, a contiguous conversion to float32 and two in-place
        # passes. NOTE: not a single fused `torch.addcmul(bias, uint8_channels_last, scale)`: its mixed-dtype, strided
        # broadcast takes a slow path on CPU.
        target.copy_(batch.contiguous() if batch.dtype == torch.uint8 else batch)
        target.mul_(scale).add_(bias)
        if not contiguous_rows:
            self.pixel_values.index_copy_(0, torch.tensor(indices), target)

    def _check_channels(self, channels: int) -> None:
        mean, std = self.settings["image_mean"], self.settings["image_std"]
        if self.settings["do_normalize"] and not (len(mean) in (1, channels) and len(std) in (1, channels)):
            raise ValueError(
                f"`image_mean` ({len(mean)} values) and `image_std` ({len(std)} values) must have 1 or {channels} "
                f"values for {channels}-channel images."
            )

    def _affine(self, channels: int, is_uint8: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused rescale + normalize: x * scale + bias per channel, (1, C, 1, 1) float32 each (computed in float64).

        Only 8-bit data is rescaled: every other input was read into [0, 1] already.
        """
        settings = self.settings
        factor = settings["rescale_factor"] if (settings["do_rescale"] and is_uint8) else 1.0
        if settings["do_normalize"]:
            mean = np.broadcast_to(np.asarray(settings["image_mean"], dtype=np.float64), (channels,))
            std = np.broadcast_to(np.asarray(settings["image_std"], dtype=np.float64), (channels,))
            scale, bias = factor / std, -mean / std
        else:
            scale, bias = np.full(channels, factor), np.zeros(channels)
        return (
            torch.tensor(scale.tolist(), dtype=torch.float32).view(1, channels, 1, 1),
            torch.tensor(bias.tolist(), dtype=torch.float32).view(1, channels, 1, 1),
        )


class HfViTImageProcessor(BaseImageProcessor):
    r"""
    Image processor of the ViT paper: resize to a fixed resolution (optionally center crop), scale pixel values and
    normalize them (default: to [-1, 1], the paper's input range). torchvision-free; batched torch resizing.

    Accepts PIL images of any mode, numpy arrays and torch tensors ((H, W), (H, W, C) or (C, H, W); a 4-D array or
    tensor is a batch), single or in a list. Conventions:

    - PIL images are turned upright from their EXIF orientation.
    - Alpha (RGBA, LA, P / L / RGB with a transparent colour, 4-channel arrays) is composited on **white**.
    - Grayscale is replicated to 3 channels when `do_convert_rgb` (else kept as 1 channel, for 1-channel models);
      other colour modes (CMYK, YCbCr, P, ...) are converted with PIL's `convert("RGB")`.
    - uint8 data (PIL "L", "RGB", "1" as 0/255, bool arrays as 0/255) is on a 0-255 scale; `do_rescale` multiplies it
      by `rescale_factor`.
    - Everything else is read into [0, 1] and **not** rescaled again: `I;16` and uint16 arrays are divided by 65535;
      mode `I` (32-bit int) is read on the same 16-bit scale (divided by 65535, clipped to [0, 1]), since in practice
      it holds 16-bit data (older Pillow versions open 16-bit PNGs as `I`); mode `F` and float arrays/tensors are
      taken as already in [0, 1] (NaN / inf raise; values outside [0, 1] log a warning). NOTE: transformers
      rescales floats too (and warns).
    - Other integer dtypes (int8/16/32/64) raise: their range is ambiguous.
    - A 3-D array whose first and last axes could both be channels (e.g. (3, 4, 4)) is read channels-first, as in
      transformers; pass `input_data_format="channels_last"` to override.

    Resizing uses torch's antialiased `interpolate` on uint8 batches (PIL's algorithm in fixed point; same-size
    images are resized as one (B, C, H, W) batch), so it agrees with PIL's `Image.resize` to within one 8-bit level.
    Rescale and normalize are fused into one multiply-add in float32.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize images to `size`.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Output resolution (both sides). An int means a square; a pair is (height, width).
        resample (`PIL.Image.Resampling` or `int` or `str`, *optional*, defaults to `PIL.Image.Resampling.BILINEAR`):
            Resampling filter: NEAREST (0), BILINEAR (2) or BICUBIC (3), or "nearest" / "bilinear" / "bicubic".
        do_center_crop (`bool`, *optional*, defaults to `False`):
            Whether to center crop to `crop_size` after resizing (zero-padded where the image is smaller).
        crop_size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Size of the center crop.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply 8-bit (0-255) data by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Scale applied to 8-bit data when `do_rescale`.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to apply `(x - image_mean) / image_std` per channel.
        image_mean (`float` or `list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Per-channel mean (one value, or one per channel).
        image_std (`float` or `list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Per-channel standard deviation.
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Whether to replicate grayscale images to 3 channels. With `False`, grayscale inputs give 1-channel
            `pixel_values` (alpha is still composited and colour modes still converted to RGB).

    Every argument can be overridden per call: `processor(images, size=384, do_normalize=False)`. Calls also take
    `return_tensors` ("pt", the default; "np"; or None for a list of (C, H, W) tensors), `input_data_format`
    ("channels_first" / "channels_last" for arrays), `data_format` ("channels_first", the default, or
    "channels_last" output) and `device`.

    Note: the public name is `ViTImageProcessor`; the class itself is named `HfViTImageProcessor` so that
    transformers' Auto classes, which resolve processors by class name, keep `"ViTImageProcessor"` for
    transformers' own processor and map `"HfViTImageProcessor"` (written as `image_processor_type`) to this one.

    Example:

    ```python
    >>> import numpy as np
    >>> from PIL import Image
    >>> from hf_vit import ViTImageProcessor

    >>> processor = ViTImageProcessor()
    >>> image = Image.fromarray(np.zeros((375, 500, 3), dtype=np.uint8))
    >>> processor(image)["pixel_values"].shape
    torch.Size([1, 3, 224, 224])
    >>> float(processor(image)["pixel_values"].min())  # black -> -1
    -1.0
    ```
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | None = None,
        resample: PIL.Image.Resampling | int | str = PIL.Image.Resampling.BILINEAR,
        do_center_crop: bool = False,
        crop_size: dict[str, int] | int | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs,
    ):
        kwargs.pop("image_processor_type", None)  # rewritten from the class name by to_dict
        for key in _IGNORED_IF_NONE + _CALL_KEYS:
            if kwargs.get(key, 0) is None:
                kwargs.pop(key)  # transformers writes some of these as null; they carry no setting
        super().__init__(**kwargs)
        given = {
            "do_resize": do_resize, "size": size, "resample": resample, "do_center_crop": do_center_crop,
            "crop_size": crop_size, "do_rescale": do_rescale, "rescale_factor": rescale_factor,
            "do_normalize": do_normalize, "image_mean": image_mean, "image_std": image_std,
            "do_convert_rgb": do_convert_rgb,
        }  # fmt: skip
        # None means "not set" (as in transformers' configs): take the default
        config = self._resolve({key: _DEFAULTS[key] if given[key] is None else given[key] for key in _CONFIG_KEYS})
        for key, value in config.items():
            setattr(self, key, value)

    @staticmethod
    def _resolve(settings: dict[str, Any]) -> dict[str, Any]:
        """Validate settings into the plain JSON-able form stored on the instance."""
        out = dict(settings)
        for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
            if not isinstance(out[key], (bool, np.bool_)):
                raise ValueError(f"`{key}` must be True or False; got {out[key]!r}.")
            out[key] = bool(out[key])
        out["size"] = _size_dict(out["size"], "size")
        out["crop_size"] = _size_dict(out["crop_size"], "crop_size")
        out["resample"] = _resample_id(out["resample"])
        factor = out["rescale_factor"]
        if not _is_number(factor) or not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"`rescale_factor` must be a positive finite number; got {factor!r}.")
        out["rescale_factor"] = float(factor)
        out["image_mean"] = _float_list(out["image_mean"], "image_mean")
        out["image_std"] = _float_list(out["image_std"], "image_std")
        if any(s == 0 for s in out["image_std"]):
            raise ValueError(f"`image_std` must not contain zeros; got {out['image_std']!r}.")
        return out

    def __call__(self, images=None, **kwargs) -> BatchFeature:
        """Preprocess an image or a batch of images into `{"pixel_values": (B, C, H, W) float32}`."""
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images,
        return_tensors: str | None = "pt",
        input_data_format: str | None = None,
        data_format: str | None = "channels_first",
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Preprocess images; keyword arguments override the processor's settings for this call only."""
        ignored = {key for key in _IGNORED_IF_NONE if kwargs.get(key, 0) is None}
        unknown = sorted(key for key in kwargs if key not in _CONFIG_KEYS and key not in ignored)
        if unknown:
            raise ValueError(f"Unknown arguments {unknown}; allowed: {sorted(_CONFIG_KEYS + _CALL_KEYS)}.")
        settings = self._resolve(
            {key: getattr(self, key) if kwargs.get(key) is None else kwargs[key] for key in _CONFIG_KEYS}
        )
        return_tensors = None if return_tensors is None else str(getattr(return_tensors, "value", return_tensors))
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None; got {return_tensors!r}.")
        data_format = str(getattr(data_format, "value", data_format or "channels_first"))
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(f"`data_format` must be 'channels_first' or 'channels_last'; got {data_format!r}.")
        if input_data_format is not None:
            input_data_format = str(getattr(input_data_format, "value", input_data_format))
            if input_data_format not in ("channels_first", "channels_last"):
                raise ValueError(
                    f"`input_data_format` must be 'channels_first', 'channels_last' or None; got {input_data_format!r}."
                )

        pixel_values = self._process(_flatten_inputs(images), settings, input_data_format)
        if data_format == "channels_last":
            pixel_values = pixel_values.permute(0, 2, 3, 1).contiguous()
        if device is not None:
            pixel_values = pixel_values.to(device)
        if return_tensors == "np":
            pixel_values = pixel_values.cpu().numpy()
        elif return_tensors is None:
            pixel_values = list(pixel_values)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    @staticmethod
    def _decode(image, index: int, convert_rgb: bool, input_data_format: str | None):
        """One input -> ((H, W, C) or (C, H, W) uint8 / float32 data, layout)."""
        if isinstance(image, PIL.Image.Image):
            array = pil_to_array(image, index, convert_rgb)
            if array.size == 0:
                raise _bad_image(index, f"empty PIL image of size {image.size}")
            if image.mode == "F" and not np.isfinite(array).all():
                raise _bad_image(index, "float image contains NaN or infinite values")
            return (array[..., None] if array.ndim == 2 else array), "hwc"
        if isinstance(image, (np.ndarray, torch.Tensor)):
            if image.ndim == 4:
                raise _bad_image(index, "a 4-D array inside a list; pass the batch itself, or a list of 3-D images")
            return _array_to_image(image, index, input_data_format)
        kind = type(image).__name__
        hint = " (load files first, e.g. PIL.Image.open(path))" if isinstance(image, (str, bytes)) else ""
        raise _bad_image(index, f"got an object of type {kind}{hint}")

    def _process(self, inputs: list, settings: dict[str, Any], input_data_format: str | None) -> torch.Tensor:
        """Decode, group same-size images, and resize / crop / normalize each group in chunks of ~8 MB.

        Chunks (rather than one stack of the whole group) keep the stacking buffers small enough for the allocator
        to reuse them, instead of page-faulting a fresh multi-MB mapping on every call, while each resize call still
        gets a batch (few parallel regions per call).
        """
        convert_rgb = settings["do_convert_rgb"]
        writer = _PixelValuesWriter(len(inputs), settings)
        pending: dict[tuple, list[tuple[int, Any, str]]] = {}
        for index, image in enumerate(inputs):
            data, layout = self._decode(image, index, convert_rgb, input_data_format)
            height, width, channels = data.shape if layout == "hwc" else (*data.shape[1:], data.shape[0])
            key = (height, width, 3 if convert_rgb else channels, _value_kind(data.dtype) == "uint8")
            members = pending.setdefault(key, [])
            members.append((index, data, layout))
            item_bytes = height * width * key[2] * (1 if key[3] else 4)
            if len(members) * item_bytes >= _CHUNK_BYTES:
                writer.write(self._stack(pending.pop(key), *key), [index for index, _, _ in members])
        for key, members in pending.items():
            writer.write(self._stack(members, *key), [index for index, _, _ in members])
        return writer.pixel_values

    @staticmethod
    def _stack(members: list, height: int, width: int, channels: int, is_uint8: bool) -> torch.Tensor:
        """Copy a group into one (n, C, h, w) batch; grayscale is broadcast to C channels by the copy.

        uint8 batches are stored channels-last (the layout torch's uint8 resize kernel is fastest on); float batches
        channels-first (idem for float).
        """
        n = len(members)
        if is_uint8:
            buffer = torch.empty((n, height, width, channels), dtype=torch.uint8)
            view = buffer.numpy()
            for slot, (_, data, layout) in enumerate(members):
                if isinstance(data, torch.Tensor):
                    buffer[slot].copy_(data if layout == "hwc" else data.permute(1, 2, 0))
                else:
                    view[slot] = data if layout == "hwc" else data.transpose(1, 2, 0)
            return buffer.permute(0, 3, 1, 2)
        buffer = torch.empty((n, channels, height, width), dtype=torch.float32)
        view = buffer.numpy()
        for slot, (_, data, layout) in enumerate(members):
            if isinstance(data, torch.Tensor):
                buffer[slot].copy_(data if layout == "chw" else data.permute(2, 0, 1))
            else:
                view[slot] = data if layout == "chw" else data.transpose(2, 0, 1)
        return buffer


ViTImageProcessor = HfViTImageProcessor

__all__ = ["HfViTImageProcessor", "ViTImageProcessor"]
