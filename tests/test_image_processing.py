"""ViTImageProcessor: input modes and conventions, batching, errors, save/load, Auto classes, transformers parity."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
import transformers
from transformers import AutoImageProcessor, BatchFeature
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

import hf_vit
from hf_vit import ViTImageProcessor
from hf_vit.image_processing_hf_vit import HfViTImageProcessor


# One 8-bit level after rescale (1/255) and normalisation (std 0.5): the largest difference two correct resizers of
# uint8 data can show when they round a value that lies near .5 in different directions.
ONE_LEVEL = (1 / 255) / 0.5


@pytest.fixture(scope="module")
def photos() -> list[PIL.Image.Image]:
    """scikit-learn's sample photos china.jpg and flower.jpg (427 x 640 RGB)."""
    datasets = pytest.importorskip("sklearn.datasets", reason="the real photos ship with scikit-learn ([train] extra)")
    return [PIL.Image.fromarray(array) for array in datasets.load_sample_images().images]


@pytest.fixture(scope="module")
def processor() -> ViTImageProcessor:
    return ViTImageProcessor()


def _solid(mode: str, color) -> PIL.Image.Image:
    return PIL.Image.new(mode, (10, 7), color)


def _palette(transparent: bool, rgba_palette: bool = False) -> PIL.Image.Image:
    image = PIL.Image.new("P", (10, 7), 0)
    if rgba_palette:
        image.putpalette([0, 0, 0, 0] + [255, 0, 0, 255] * 255, "RGBA")  # index 0 transparent black
    else:
        image.putpalette([0, 0, 0] + [255, 0, 0] * 255)  # index 0 black, others red
    if transparent:
        image.info["transparency"] = 0
    return image


def _with_alpha(image: PIL.Image.Image, alpha: int) -> PIL.Image.Image:
    image.putalpha(alpha)
    return image


def _sixteen_bit(mode: str, value: int) -> PIL.Image.Image:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return PIL.Image.frombytes(mode, (10, 7), np.full((7, 10), value, dtype=dtype).tobytes())


def _int32(value: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.full((7, 10), value, dtype=np.int32))  # mode "I"


def _float32(value: float) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.full((7, 10), value, dtype=np.float32))  # mode "F"


# (image, expected per-channel value after the default [-1, 1] normalisation)
MODE_CASES = {
    "RGB red": (lambda: _solid("RGB", color=(255, 0, 0)), [1.0, -1.0, -1.0]),
    "L black": (lambda: _solid("L", color=0), [-1.0] * 3),
    "L white": (lambda: _solid("L", color=255), [1.0] * 3),
    "L mid": (lambda: _solid("L", color=51), [51 / 255 * 2 - 1] * 3),
    "1 white": (lambda: _solid("1", color=1), [1.0] * 3),
    "1 black": (lambda: _solid("1", color=0), [-1.0] * 3),
    "LA transparent": (lambda: _solid("LA", color=(0, 0)), [1.0] * 3),
    "LA opaque black": (lambda: _solid("LA", color=(0, 255)), [-1.0] * 3),
    "RGBA transparent": (lambda: _solid("RGBA", color=(0, 0, 0, 0)), [1.0] * 3),
    "RGBA opaque red": (lambda: _solid("RGBA", color=(255, 0, 0, 255)), [1.0, -1.0, -1.0]),
    "P": (lambda: _palette(transparent=False), [-1.0] * 3),
    "P transparency": (lambda: _palette(transparent=True), [1.0] * 3),
    "P RGBA palette": (lambda: _palette(transparent=False, rgba_palette=True), [1.0] * 3),
    "PA opaque black": (lambda: _palette(transparent=False).convert("PA"), [-1.0] * 3),
    "PA transparent": (lambda: _with_alpha(_palette(transparent=False).convert("PA"), 0), [1.0] * 3),
    "CMYK white": (lambda: _solid("CMYK", color=(0, 0, 0, 0)), [1.0] * 3),
    "CMYK cyan": (lambda: _solid("CMYK", color=(255, 0, 0, 0)), [-1.0, 1.0, 1.0]),
    "YCbCr white": (lambda: _solid("YCbCr", color=(255, 128, 128)), [1.0] * 3),
    "I;16 max": (lambda: _sixteen_bit("I;16", 65535), [1.0] * 3),
    "I;16 zero": (lambda: _sixteen_bit("I;16", 0), [-1.0] * 3),
    "I;16 mid": (lambda: _sixteen_bit("I;16", 16384), [16384 / 65535 * 2 - 1] * 3),
    "I;16B max": (lambda: _sixteen_bit("I;16B", 65535), [1.0] * 3),
    "I 16-bit max": (lambda: _int32(65535), [1.0] * 3),
    "I above 16-bit clipped": (lambda: _int32(100_000), [1.0] * 3),
    "I negative clipped": (lambda: _int32(-5), [-1.0] * 3),
    "I mid": (lambda: _int32(16384), [16384 / 65535 * 2 - 1] * 3),
    "F one": (lambda: _float32(1.0), [1.0] * 3),
    "F quarter": (lambda: _float32(0.25), [-0.5] * 3),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_pil_modes(case):
    make, expected = MODE_CASES[case]
    image = make()
    pixel_values = ViTImageProcessor(size=16)(image)["pixel_values"]  # small output: constant images stay constant
    assert pixel_values.shape == (1, 3, 16, 16) and pixel_values.dtype == torch.float32
    per_channel = pixel_values[0].flatten(1)
    torch.testing.assert_close(per_channel, torch.tensor(expected)[:, None].expand_as(per_channel), atol=1e-5, rtol=0)


def test_output_contract(processor, photos):
    out = processor(photos)
    assert isinstance(out, BatchFeature) and list(out) == ["pixel_values"]
    assert processor.model_input_names == ["pixel_values"]
    pixel_values = out["pixel_values"]
    assert pixel_values.shape == (2, 3, 224, 224) and pixel_values.dtype == torch.float32
    assert pixel_values.is_contiguous()
    assert -1.0 - 1e-6 <= pixel_values.min() < -0.9 and 0.9 < pixel_values.max() <= 1.0 + 1e-6  # 1 ulp: fused x*s+b
    assert isinstance(processor(photos, return_tensors="np")["pixel_values"], np.ndarray)
    as_list = processor(photos, return_tensors=None)["pixel_values"]
    assert isinstance(as_list, list) and torch.equal(torch.stack(as_list), pixel_values)
    channels_last = processor(photos, data_format="channels_last")["pixel_values"]
    assert torch.equal(channels_last, pixel_values.permute(0, 2, 3, 1))


def test_per_call_overrides(processor, photos):
    out = processor(photos[0], size=(32, 48), do_normalize=False)["pixel_values"]
    assert out.shape == (1, 3, 32, 48) and 0.0 <= out.min() and out.max() <= 1.0
    raw = processor(photos[0], do_resize=False, do_rescale=False, do_normalize=False)["pixel_values"]
    assert torch.equal(raw[0], torch.from_numpy(np.array(photos[0])).permute(2, 0, 1).float())
    cropped = processor(photos[0], do_center_crop=True, crop_size=100)["pixel_values"]
    assert torch.equal(cropped, processor(photos[0])["pixel_values"][..., 62:162, 62:162])
    assert processor.size == {"height": 224, "width": 224} and processor.do_normalize  # overrides don't stick
    # None means "not set", as in transformers: the processor's own value applies
    assert processor(photos[0], size=None, image_mean=None)["pixel_values"].shape == (1, 3, 224, 224)
    numpy_settings = processor(photos[0], image_mean=np.float32(0.5), rescale_factor=np.float32(1 / 255))
    torch.testing.assert_close(numpy_settings["pixel_values"], processor(photos[0])["pixel_values"])


@pytest.mark.parametrize("container", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_arrays_hwc_chw_and_pil_agree(processor, photos, container, dtype):
    hwc = np.asarray(photos[0].resize((64, 48)))  # (48, 64, 3) uint8
    if dtype == "float32":
        hwc = hwc.astype(np.float32) / 255
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    wrap = (lambda array: torch.from_numpy(np.array(array))) if container == "torch" else np.asarray
    a = processor(wrap(hwc))["pixel_values"]
    b = processor(wrap(chw))["pixel_values"]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    pil = processor(photos[0].resize((64, 48)))["pixel_values"]
    # uint8 data goes through the same uint8 resize as PIL input; float data is resized unrounded, so it is off by
    # the uint8 path's rounding: under one level (+ float32 rounding of the comparison)
    torch.testing.assert_close(a, pil, atol=0 if dtype == "uint8" else ONE_LEVEL + 1e-5, rtol=0)


@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_grayscale_layouts_agree(processor, container):
    gray = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    wrap = torch.from_numpy if container == "torch" else np.asarray
    expected = processor(PIL.Image.fromarray(gray))["pixel_values"]
    for array in (gray, gray[:, :, None], gray[None]):
        out = processor(wrap(np.ascontiguousarray(array)))["pixel_values"]
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert torch.equal(expected[:, 0], expected[:, 1]) and torch.equal(expected[:, 0], expected[:, 2])


def test_array_dtypes_match_pil_equivalents(processor):
    rng = np.random.default_rng(0)
    sixteen = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    pil_16 = PIL.Image.frombytes("I;16", (30, 20), sixteen.astype("<u2").tobytes())
    expected = processor(pil_16)["pixel_values"]
    torch.testing.assert_close(processor(sixteen)["pixel_values"], expected, atol=0, rtol=0)
    as_tensor = torch.from_numpy(sixteen.astype(np.int32)).to(torch.uint16)
    torch.testing.assert_close(processor(as_tensor)["pixel_values"], expected, atol=0, rtol=0)

    mask = rng.random((20, 30)) > 0.5
    expected = processor(PIL.Image.fromarray(mask))["pixel_values"]  # mode "1"
    torch.testing.assert_close(processor(mask)["pixel_values"], expected, atol=0, rtol=0)
    torch.testing.assert_close(processor(torch.from_numpy(mask))["pixel_values"], expected, atol=0, rtol=0)

    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    expected = processor(PIL.Image.fromarray(rgba))["pixel_values"]
    torch.testing.assert_close(processor(rgba)["pixel_values"], expected, atol=0, rtol=0)
    as_chw_tensor = torch.from_numpy(rgba).permute(2, 0, 1)
    torch.testing.assert_close(processor(as_chw_tensor)["pixel_values"], expected, atol=0, rtol=0)
    # float RGBA composites the same way, unrounded; the uint8 path rounds twice (PIL's alpha_composite, the resize)
    as_float = processor(rgba.astype(np.float32) / 255)["pixel_values"]
    torch.testing.assert_close(as_float, expected, atol=2 * ONE_LEVEL, rtol=0)


@pytest.mark.parametrize("chunk_bytes", [None, 1, 1 << 20], ids=["default chunks", "one image per chunk", "1 MB"])
def test_batch_equals_per_item(processor, photos, monkeypatch, chunk_bytes):
    if chunk_bytes is not None:  # groups are resized in chunks of ~8 MB; smaller chunks interleave the groups' writes
        monkeypatch.setattr(hf_vit.image_processing_hf_vit, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    items = [
        photos[0],
        rng.integers(0, 256, (50, 40), dtype=np.uint8),  # 2-D grayscale
        torch.rand(3, 60, 80),  # float CHW
        photos[1].convert("RGBA"),
        photos[1],  # same size as items 0 and 3: grouped with them, non-contiguous indices
        _sixteen_bit("I;16", 30000),
        photos[0].transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT),
        torch.rand(3, 60, 80),
    ]
    batched = processor(items)["pixel_values"]
    assert batched.shape == (len(items), 3, 224, 224)
    for index, item in enumerate(items):
        torch.testing.assert_close(batched[index : index + 1], processor(item)["pixel_values"], atol=0, rtol=0)

    stack_nchw = torch.from_numpy(np.stack([np.asarray(p) for p in photos])).permute(0, 3, 1, 2).contiguous()
    expected = processor(list(photos))["pixel_values"]
    torch.testing.assert_close(processor(stack_nchw)["pixel_values"], expected, atol=0, rtol=0)  # (B, C, H, W)
    stack_nhwc = stack_nchw.permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(processor(stack_nhwc)["pixel_values"], expected, atol=0, rtol=0)  # (B, H, W, C)


def test_exif_orientation_applied(processor, tmp_path):
    # Stored pixels: 80 wide x 40 high, left half red, right half blue. EXIF orientation 6 = "rotate 90 deg clockwise
    # to display", so the upright image is 40 wide x 80 high with red on top.
    stored = np.zeros((40, 80, 3), dtype=np.uint8)
    stored[:, :40, 0] = 255
    stored[:, 40:, 2] = 255
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    PIL.Image.fromarray(stored).save(path, exif=exif, quality=95)

    with PIL.Image.open(path) as image:
        out = processor(image, size={"height": 80, "width": 40}, do_normalize=False)["pixel_values"][0]
        upright = PIL.ImageOps.exif_transpose(image)
    red, blue = out[0], out[2]
    assert red[:30].mean() > 0.9 and blue[:30].mean() < 0.1  # top: red
    assert blue[50:].mean() > 0.9 and red[50:].mean() < 0.1  # bottom: blue
    expected = processor(upright, size={"height": 80, "width": 40}, do_normalize=False)["pixel_values"][0]
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_convert_rgb_false_keeps_grayscale():
    gray = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8))
    rgb_proc = ViTImageProcessor()
    gray_proc = ViTImageProcessor(do_convert_rgb=False, image_mean=[0.5], image_std=[0.5])
    one_channel = gray_proc(gray)["pixel_values"]
    assert one_channel.shape == (1, 1, 224, 224)
    torch.testing.assert_close(one_channel, rgb_proc(gray)["pixel_values"][:, :1], atol=0, rtol=0)
    assert gray_proc(gray.convert("LA"))["pixel_values"].shape == (1, 1, 224, 224)
    with pytest.raises(ValueError, match="image_mean"):
        ViTImageProcessor(do_convert_rgb=False)(gray)  # 3 means for 1 channel
    with pytest.raises(ValueError, match="channel counts"):
        gray_proc([gray, gray.convert("RGB")])


BAD_INPUTS = {
    "None": (lambda img: None, "None"),
    "empty list": (lambda img: [], "empty"),
    "string": (lambda img: "photo.jpg", "index 0: got an object of type str"),
    "dict": (lambda img: {"image": img}, "index 0: got an object of type dict"),
    "string in list": (lambda img: [img, "photo.jpg"], "index 1"),
    "nested list": (lambda img: [img, [img]], "index 1: got an object of type list"),
    "2 channels": (lambda img: [img, img, np.zeros((5, 6, 2), np.uint8)], "index 2: shape \\(5, 6, 2\\)"),
    "5 channels": (lambda img: np.zeros((5, 6, 5), np.uint8), "index 0: shape \\(5, 6, 5\\)"),
    "2 channels first": (lambda img: [img, torch.zeros(2, 5, 6)], "index 1: shape \\(2, 5, 6\\)"),
    "1-D": (lambda img: [img, np.zeros(7, np.uint8)], "index 1: got a 1-D"),
    "5-D": (lambda img: np.zeros((1, 1, 3, 4, 4), np.uint8), "index 0: got a 5-D"),
    "4-D inside list": (lambda img: [img, torch.zeros(2, 3, 4, 4)], "index 1: a 4-D"),
    "empty image": (lambda img: [img, np.zeros((0, 5, 3), np.uint8)], "index 1: empty image"),
    "empty batch": (lambda img: np.zeros((0, 3, 4, 4), np.uint8), "empty batch"),
    "batch with 2 channels": (lambda img: torch.zeros(3, 2, 5, 6), "index 0: shape \\(2, 5, 6\\)"),
    "NaN": (lambda img: [img, np.full((4, 4, 3), np.nan, np.float32)], "index 1: float image contains NaN"),
    "NaN in mode F": (lambda img: [img, _float32(float("nan"))], "index 1: float image contains NaN"),
    "inf tensor": (lambda img: [img, img, torch.full((3, 4, 4), float("inf"))], "index 2: float image contains NaN"),
    "int64 tensor": (lambda img: [img, torch.zeros(3, 4, 4, dtype=torch.int64)], "index 1: dtype torch.int64"),
    "int32 array": (lambda img: np.zeros((4, 4, 3), np.int32), "index 0: dtype int32"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_with_index(processor, photos, case):
    make, pattern = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=pattern) as error:
        processor(make(photos[0]))
    assert "allowed" in str(error.value)


def test_ambiguous_layout_and_input_data_format(processor):
    # (4, 6, 3): first and last axes could both be channels; channels-first wins (as in transformers) unless overridden.
    array = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    as_rgba_chw = processor(np.ascontiguousarray(array.transpose(1, 2, 0)), input_data_format="channels_last")
    torch.testing.assert_close(processor(array)["pixel_values"], as_rgba_chw["pixel_values"], atol=0, rtol=0)
    as_rgb_hwc = processor(array, input_data_format="channels_last")["pixel_values"]
    torch.testing.assert_close(as_rgb_hwc, processor(PIL.Image.fromarray(array))["pixel_values"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="index 1: shape \\(5, 6, 3\\) has 5 channels with channels_first"):
        processor([array, np.zeros((5, 6, 3), np.uint8)], input_data_format="channels_first")


def test_unreadable_pil_image_names_index(processor, photos, tmp_path):
    path = tmp_path / "truncated.jpg"
    photos[0].save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with PIL.Image.open(path) as broken, pytest.raises(ValueError, match="index 1: could not decode"):
        processor([photos[0], broken])


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"size": {"shortest_edge": 224}}, "size"),
        ({"size": 0}, "size"),
        ({"crop_size": (224,)}, "crop_size"),
        ({"resample": PIL.Image.Resampling.LANCZOS}, "resample"),
        ({"resample": "area"}, "resample"),
        ({"rescale_factor": 0}, "rescale_factor"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
        ({"image_mean": "grey"}, "image_mean"),
        ({"do_normalize": "yes"}, "do_normalize"),
    ],
)
def test_bad_settings_raise(photos, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ViTImageProcessor(**kwargs)
    with pytest.raises(ValueError, match=pattern):
        ViTImageProcessor()(photos[0], **kwargs)


def test_unknown_call_argument_raises(processor, photos):
    with pytest.raises(ValueError, match="Unknown arguments \\['sizes'\\]"):
        processor(photos[0], sizes=32)
    with pytest.raises(ValueError, match="return_tensors"):
        processor(photos[0], return_tensors="tf")


def test_different_sizes_without_resize_raise(processor, photos):
    with pytest.raises(ValueError, match="different sizes"):
        processor([photos[0], photos[0].resize((20, 20))], do_resize=False)


def test_save_load_round_trip(tmp_path, photos):
    proc = ViTImageProcessor(
        size=(96, 64), resample="bicubic", do_center_crop=True, crop_size=60,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )  # fmt: skip
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "HfViTImageProcessor"
    assert saved["size"] == {"height": 96, "width": 64} and saved["crop_size"] == {"height": 60, "width": 60}
    assert saved["resample"] == 3 and saved["auto_map"]["AutoImageProcessor"].endswith(".HfViTImageProcessor")
    assert (tmp_path / "image_processing_hf_vit.py").is_file()

    loaded = ViTImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is HfViTImageProcessor and loaded.to_dict() == proc.to_dict()
    torch.testing.assert_close(loaded(photos)["pixel_values"], proc(photos)["pixel_values"], atol=0, rtol=0)
    assert loaded(photos)["pixel_values"].shape == (2, 3, 60, 60)
    assert ViTImageProcessor.from_pretrained(tmp_path, do_normalize=False).do_normalize is False


def test_loads_transformers_vit_processor_config(tmp_path, photos):
    # A transformers ViT checkpoint's preprocessor_config.json configures hf_vit's processor the same way.
    settings = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": 160}
    ViTImageProcessorPil(**settings).save_pretrained(tmp_path)
    ours = ViTImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 160, "width": 160} and ours.image_mean == settings["image_mean"]
    theirs = ViTImageProcessorPil.from_pretrained(tmp_path)(photos, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours(photos)["pixel_values"], theirs, atol=(1 / 255) / 0.224 + 1e-5, rtol=0)


# --- Auto classes -------------------------------------------------------------------------------------------------


def _save_hf_vit_folder(path) -> ViTImageProcessor:
    hf_vit.ViTConfig().save_pretrained(path)
    proc = ViTImageProcessor(size=64, image_mean=[0.4, 0.5, 0.6])
    proc.save_pretrained(path)
    return proc


@pytest.mark.parametrize("backend", [None, "pil", "torchvision"])
def test_auto_loads_hf_vit_processor(tmp_path, photos, backend):
    proc = _save_hf_vit_folder(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path, backend=backend)
    assert type(loaded) is HfViTImageProcessor and loaded.to_dict() == proc.to_dict()


@pytest.mark.parametrize("backend", [None, "pil", "torchvision"])
def test_auto_keeps_transformers_processor(tmp_path, backend):
    # Importing hf_vit (done at the top) must not hijack transformers' own ViT processor, which is saved under the
    # same type name ("ViTImageProcessor") that hf_vit's public class carries.
    transformers.ViTConfig().save_pretrained(tmp_path)
    ViTImageProcessorPil().save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path, backend=backend)
    assert not isinstance(loaded, HfViTImageProcessor)
    assert type(loaded).__module__.startswith("transformers.models.vit.")


_REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, os, sys
    # Clean interpreter (-I) and no hf_vit: drop the editable install's path entry / finder.
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "hf_vit"))]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in str(getattr(f, "__module__", "")).lower()]
    try:
        import hf_vit
    except ImportError:
        pass
    else:
        sys.exit("hf_vit is importable in the clean subprocess")
    import numpy as np, PIL.Image
    from transformers import AutoImageProcessor
    folder, image_path, out_path = sys.argv[1:]
    proc = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    print(type(proc).__module__, type(proc).__name__)
    with PIL.Image.open(image_path) as image:
        np.save(out_path, proc([image, image.convert("LA")])["pixel_values"].numpy())
    """
)


def test_auto_remote_code_without_hf_vit(tmp_path, photos):
    folder = tmp_path / "model"
    _save_hf_vit_folder(folder)
    image_path = tmp_path / "photo.png"
    photos[1].crop((0, 0, 300, 200)).save(image_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-I", "-c", _REMOTE_SCRIPT, str(folder), str(image_path), str(tmp_path / "out.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    module, name = result.stdout.split()[-2:]
    assert module.startswith("transformers_modules.") and name == "HfViTImageProcessor"

    local = AutoImageProcessor.from_pretrained(folder)
    assert type(local) is HfViTImageProcessor
    with PIL.Image.open(image_path) as image:
        expected = local([image, image.convert("LA")])["pixel_values"].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


# --- parity with transformers' PIL-backed processor -----------------------------------------------------------------

# Measured on china.jpg + flower.jpg (torch 2.13, Pillow 13): bilinear and bicubic differ by at most one 8-bit level
# (2/255 = 0.0078 after [-1, 1] normalisation) on 0.23% / 0.37% of the values, mean |diff| 2e-5 / 3e-5: both resize
# uint8 data with PIL's antialiased separable filter in fixed point, but torch's kernel uses a different fixed-point
# precision, so values that land next to .5 round the other way. NEAREST copies pixels (indices taken from PIL): equal.
PARITY_CASES = {
    "bilinear": ({"resample": PIL.Image.Resampling.BILINEAR}, ONE_LEVEL),
    "bicubic": ({"resample": PIL.Image.Resampling.BICUBIC}, ONE_LEVEL),
    "nearest": ({"resample": PIL.Image.Resampling.NEAREST}, 0.0),
    "384x320": ({"size": {"height": 384, "width": 320}}, ONE_LEVEL),  # upsampling
    "center crop": ({"do_center_crop": True, "crop_size": {"height": 200, "width": 180}}, ONE_LEVEL),
    "crop larger (padded)": ({"size": {"height": 100, "width": 90}, "do_center_crop": True,
                              "crop_size": {"height": 131, "width": 120}}, ONE_LEVEL),  # fmt: skip
}


@pytest.mark.parity
@pytest.mark.parametrize("grayscale", [False, True], ids=["rgb", "gray"])
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_transformers_pil(photos, case, grayscale):
    settings, atol = PARITY_CASES[case]
    settings = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_convert_rgb": True, **settings}
    images = [p.convert("L") for p in photos] if grayscale else photos
    ours = ViTImageProcessor(**settings)(images)["pixel_values"]
    theirs = ViTImageProcessorPil(**settings)(images, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs()
    assert diff.max() <= atol + 1e-6, f"max |diff| {diff.max():.5f}"
    assert (diff > 1e-5).float().mean() < 0.01  # differences are rare rounding ties, not a systematic shift
