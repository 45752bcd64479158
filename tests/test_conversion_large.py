"""Large checkpoints (marker `slow`): a ViT-H/14-sized one (632M parameters, 2.5 GB in fp32) converts within 2x its
size of memory, is saved as sharded safetensors and loads back lazily (it writes ~5 GB and runs an H/14 forward); an
R50+ViT-B/16-shaped hybrid reproduces the reference forward."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from hf_vit.conversion import jax_reference

from hf_vit.conversion import load_npz

from .test_conversion import BLOCK_NAMES, images_for, max_diff, reference_outputs, vit_jax_arrays, write_npz


pytestmark = pytest.mark.slow

H14 = dict(layers=32, width=1280, heads=16, mlp=5120, patch=14, grid=16, num_classes=1000)


def _h14_shapes():
    """(key, shape) of a released ViT-H/14 checkpoint (vit_jax layout, released numbering), in file order."""
    d, h, m, p = H14["width"], H14["heads"], H14["mlp"], H14["patch"]
    yield "embedding/kernel", (p, p, 3, d)
    yield "embedding/bias", (d,)
    yield "cls", (1, 1, d)
    yield "Transformer/posembed_input/pos_embedding", (1, H14["grid"] ** 2 + 1, d)
    norm1, attention, norm2, mlp = BLOCK_NAMES["released"]
    for i in range(H14["layers"]):
        b = f"Transformer/encoderblock_{i}/"
        yield from [(f"{b}{norm1}/scale", (d,)), (f"{b}{norm1}/bias", (d,))]
        for name in ("query", "key", "value"):
            yield from [(f"{b}{attention}/{name}/kernel", (d, h, d // h)), (f"{b}{attention}/{name}/bias", (h, d // h))]
        yield from [(f"{b}{attention}/out/kernel", (h, d // h, d)), (f"{b}{attention}/out/bias", (d,))]
        yield from [(f"{b}{norm2}/scale", (d,)), (f"{b}{norm2}/bias", (d,))]
        yield from [(f"{b}{mlp}/Dense_0/kernel", (d, m)), (f"{b}{mlp}/Dense_0/bias", (m,))]
        yield from [(f"{b}{mlp}/Dense_1/kernel", (m, d)), (f"{b}{mlp}/Dense_1/bias", (d,))]
    yield from [("Transformer/encoder_norm/scale", (d,)), ("Transformer/encoder_norm/bias", (d,))]
    yield from [("head/kernel", (d, H14["num_classes"])), ("head/bias", (H14["num_classes"],))]


def _write_h14(path):
    """Write the checkpoint array by array (never the whole model in memory), as np.savez lays it out."""
    rng = np.random.default_rng(0)
    count = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, shape in _h14_shapes():
            array = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            if key.endswith("/scale"):
                array += 1
            with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
            count += array.size
    return count


_MEASURE = """
import json, sys
from hf_vit.cli import main
code = main(sys.argv[1:])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"code": code, "peak_rss_bytes": int(status["VmHWM"].split()[0]) * 1024}))
"""

_LOAD = """
import json, sys, torch
from hf_vit import ViTForImageClassification
model = ViTForImageClassification.from_pretrained(sys.argv[1])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"peak_rss_bytes": int(status["VmHWM"].split()[0]) * 1024,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "kernel_0_0": model.vit.encoder.layers[0].mlp.fc1.weight[:3, :3].tolist()}))
"""


def _run(code, *args):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_h14_converts_within_twice_its_size_and_loads_back_lazily(tmp_path):
    source, out = tmp_path / "ViT-H_14.npz", tmp_path / "vit-h14"
    parameters = _write_h14(source)
    fp32_bytes = parameters * 4
    assert 630e6 < parameters < 635e6

    converted = _run(_MEASURE, "convert", source, out, "--no-check", "--max-shard-size", "1GB")
    print(f"H/14 ({parameters / 1e6:.1f}M parameters, {fp32_bytes / 2**30:.2f} GiB fp32): conversion peak RSS "
          f"{converted['peak_rss_bytes'] / 2**30:.2f} GiB = {converted['peak_rss_bytes'] / fp32_bytes:.2f}x")
    assert converted["code"] == 0
    assert converted["peak_rss_bytes"] < 2 * fp32_bytes
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all(os.path.getsize(out / s) <= 1.05e9 for s in shards)

    loaded = _run(_LOAD, out)
    print(f"loading back: peak RSS {loaded['peak_rss_bytes'] / 2**30:.2f} GiB = {loaded['peak_rss_bytes'] / fp32_bytes:.2f}x")
    assert loaded["parameters"] == parameters
    assert loaded["peak_rss_bytes"] < 1.5 * fp32_bytes
    with np.load(source) as arrays:
        kernel = arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"]
        assert np.array_equal(np.asarray(loaded["kernel_0_0"], dtype=np.float32), kernel[:3, :3].T)

        # And the converted model is the original one (the NumPy reference forward on the file's arrays).
        from hf_vit import ViTForImageClassification

        model = ViTForImageClassification.from_pretrained(out).eval()
        pixel_values = images_for(model.config, batch=1)
        expected = jax_reference.forward({k: arrays[k] for k in arrays.files}, pixel_values.permute(0, 2, 3, 1).numpy(),
                                         backend="numpy")
    with torch.no_grad():
        difference = max_diff(model(pixel_values).logits, expected["logits"])
    print(f"H/14 logits vs the reference forward: max abs difference {difference:.3g}")
    assert difference < 1e-4


def test_r50_b16_shaped_hybrid_reproduces_the_reference(tmp_path):
    # The reference R50+ViT-B/16: ResNet stages (3, 4, 9), width 64, 1x1 patches on the 14x14 feature map.
    arrays = vit_jax_arrays(layers=12, width=768, heads=12, mlp=3072, patch=1, grid=14, num_classes=10,
                            resnet=((3, 4, 9), 64), scale=0.02)
    model, report = load_npz(write_npz(tmp_path / "R50+ViT-B_16.npz", arrays), output_loading_info=True)
    assert report.unused_keys == []
    assert model.config.backbone_depths == [3, 4, 9] and model.config.image_size == 224
    pixel_values = images_for(model.config, batch=1)
    expected = reference_outputs(arrays, pixel_values)["logits"]
    with torch.no_grad():
        difference = max_diff(model(pixel_values).logits, expected)
    print(f"R50+B/16 logits vs the reference forward: max abs difference {difference:.3g}")
    assert difference < 1e-4
