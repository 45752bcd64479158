"""`hf-vit export` and `hf_vit.export.onnx`: ONNX files with a dynamic batch, checked against PyTorch.

The export tests need onnx, onnxscript and onnxruntime (`pip install "hf-vit[export]"`) and skip without them (CI's
default environment has none); the missing-dependency message is tested everywhere.
"""

import importlib.util
import os
import sys

import pytest
import torch

from hf_vit import ViTForImageClassification, ViTImageProcessor, ViTModel
from hf_vit.cli import main

from .common import TINY, TINY_HYBRID, make_config


HAVE_EXPORT_DEPENDENCIES = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(
    not HAVE_EXPORT_DEPENDENCIES, reason="onnx, onnxscript and onnxruntime are not installed (pip install 'hf-vit[export]')"
)
# ONNX Runtime against PyTorch, float32, on these tiny models: kernels that add in another order differ by ~1e-6.
ATOL = 1e-5


def _save(folder, model_class=ViTForImageClassification, **overrides):
    torch.manual_seed(0)
    model = model_class(make_config(**overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():  # off the zero-initialised head and class token
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def _run_onnx(path, pixel_values):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, session.run(None, {"pixel_values": pixel_values.numpy()})


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_onnx
def test_export_classifier_has_a_dynamic_batch_and_matches_pytorch(tmp_path, capsys):
    import onnx

    model = _save(tmp_path / "model")
    out = tmp_path / "model.onnx"
    code, stdout, err = _cli(capsys, "export", tmp_path / "model", out)
    assert code == 0, err
    assert "max abs difference" in stdout and "opset 18" in stdout
    graph = onnx.load(str(out))
    assert {entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")} == {18}
    (source,) = graph.graph.input
    dims = source.type.tensor_type.shape.dim
    assert source.name == "pixel_values" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in graph.graph.output] == ["logits"]
    # A batch size that neither the trace (2) nor the export's own check (1, 3) used.
    pixel_values = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    _, (logits,) = _run_onnx(out, pixel_values)
    with torch.no_grad():
        expected = model(pixel_values).logits
    assert logits.shape == (5, TINY["num_labels"])
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=0, atol=ATOL)


@needs_onnx
def test_export_bare_model_gives_both_outputs(tmp_path, capsys):
    model = _save(tmp_path / "model", ViTModel)
    out = tmp_path / "features.onnx"
    code, stdout, err = _cli(capsys, "export", tmp_path / "model", out)
    assert code == 0, err
    assert "outputs last_hidden_state, pooler_output" in stdout
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    _, (hidden, pooled) = _run_onnx(out, pixel_values)
    with torch.no_grad():
        expected = model(pixel_values)
    torch.testing.assert_close(torch.from_numpy(hidden), expected.last_hidden_state, rtol=0, atol=ATOL)
    torch.testing.assert_close(torch.from_numpy(pooled), expected.pooler_output, rtol=0, atol=ATOL)


@needs_onnx
@pytest.mark.parametrize(
    "overrides",
    [TINY_HYBRID, {"position_embedding_type": "relative"}, {"pooling": "map", "position_embedding_type": "sincos_2d"}],
    ids=["hybrid", "relative", "map_sincos"],
)
def test_export_architecture_options(tmp_path, overrides):
    from hf_vit.export.onnx import export_and_check

    model = _save(tmp_path / "model", **overrides)
    result = export_and_check(model, tmp_path / "model.onnx", atol=ATOL)
    assert result.max_abs_diff <= ATOL and os.path.isfile(result.path)
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    _, (logits,) = _run_onnx(result.path, pixel_values)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(pixel_values).logits, rtol=0, atol=ATOL)


@needs_onnx
def test_export_never_overwrites_unless_asked(tmp_path, capsys):
    _save(tmp_path / "model")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"precious")
    code, _, err = _cli(capsys, "export", tmp_path / "model", out)
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    code, _, err = _cli(capsys, "export", tmp_path / "model", out, "--overwrite")
    assert code == 0, err
    assert out.read_bytes() != b"precious" and out.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.onnx"]  # no staging folder left behind


@needs_onnx
def test_export_refuses_a_file_that_differs_from_pytorch(tmp_path, capsys, monkeypatch):
    import hf_vit.export.onnx as onnx_export

    _save(tmp_path / "model")
    out = tmp_path / "model.onnx"
    monkeypatch.setattr(onnx_export, "check_onnx", lambda *args, **kwargs: 0.5)  # as if ONNX Runtime computed otherwise
    code, _, err = _cli(capsys, "export", tmp_path / "model", out, "--atol", "0.01")
    assert code == 2
    assert "differ from PyTorch's by 0.5 (max abs), more than the tolerance 0.01" in err and "was not written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_without_the_optional_dependencies_names_the_extra(tmp_path, capsys, monkeypatch):
    _save(tmp_path / "model")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    code, _, err = _cli(capsys, "export", tmp_path / "model", tmp_path / "model.onnx")
    assert code == 2
    assert "onnxruntime" in err and 'pip install "hf-vit[export]"' in err
    assert not (tmp_path / "model.onnx").exists()


def test_export_rejects_an_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path), str(tmp_path / "m.onnx"), "--format", "tflite"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite' (choose from 'onnx')" in capsys.readouterr().err
