"""Export to ONNX: an hf_vit model -> an `.onnx` file with a dynamic batch, checked against PyTorch with ONNX Runtime.

The graph comes from torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`, through `torch.export`),
opset `ONNX_OPSET` by default. The input is `pixel_values` (batch, channels, height, width) float32 at the model's
image size, with a symbolic batch dimension; the outputs are `logits` (image classification) or `last_hidden_state`
and `pooler_output` (the bare model). Before a file is kept, ONNX Runtime runs it on random batches of another size
than the one traced and its outputs are compared with PyTorch's (`check_onnx`).

Needs the optional dependencies onnx, onnxscript and onnxruntime: `pip install "hf-vit[export]"`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import torch
from torch import nn


# ONNX's default domain version of the exported graph: LayerNormalization needs 17; 18 is torch's exporter's default.
ONNX_OPSET = 18
MIN_OPSET = 17
# The largest max |ONNX Runtime - PyTorch| accepted by default, on float32 outputs of order 1-10 (logits, normalised
# features): float32 kernels that add in another order differ by 1e-6-1e-5 at B/16 size.
DEFAULT_ATOL = 1e-4
EXPORT_EXTRA = "export"
EXPORT_DEPENDENCIES = ("onnx", "onnxscript", "onnxruntime")
# task -> (hf_vit class name, output names)
EXPORT_TASKS = {
    "image-classification": ("ViTForImageClassification", ("logits",)),
    "feature-extraction": ("ViTModel", ("last_hidden_state", "pooler_output")),
}
INPUT_NAME = "pixel_values"
TRACE_BATCH_SIZE = 2
CHECK_BATCH_SIZES = (1, 3)  # neither is the traced batch size: the check also tests the dynamic batch


class MissingExportDependencies(ImportError):
    """onnx, onnxscript or onnxruntime is not installed."""


def require_export_dependencies() -> None:
    """Raise `MissingExportDependencies` naming the missing packages and the extra that installs them."""
    missing = []
    for name in EXPORT_DEPENDENCIES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExportDependencies(
            f"ONNX export needs {', '.join(missing)} (not installed): pip install \"hf-vit[{EXPORT_EXTRA}]\""
        )


def task_for(model: nn.Module) -> str:
    """The export task of an hf_vit model instance ("image-classification" or "feature-extraction")."""
    for task, (class_name, _) in EXPORT_TASKS.items():
        if type(model).__name__ == class_name:
            return task
    allowed = [class_name for class_name, _ in EXPORT_TASKS.values()]
    raise ValueError(f"ONNX export takes an hf_vit {' or '.join(allowed)}, got {type(model).__name__}.")


class _TensorOutputs(nn.Module):
    """The model as `pixel_values -> tuple of tensors`, the outputs of its task in order (what the exporter traces)."""

    def __init__(self, model: nn.Module, output_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.output_names = output_names

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(pixel_values=pixel_values, return_dict=True)
        return tuple(getattr(output, name) for name in self.output_names)


def _example_input(config, batch_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    height, width = config.image_hw
    return torch.randn(batch_size, config.num_channels, height, width, generator=generator)


def _output_names(model: nn.Module) -> tuple[str, ...]:
    names = EXPORT_TASKS[task_for(model)][1]
    if getattr(model, "pooler", "absent") is None:  # a bare model built without its pooling layer
        names = tuple(name for name in names if name != "pooler_output")
    return names


def _for_export(model: nn.Module) -> nn.Module:
    """The float32 CPU copy of `model` that is traced (the caller's model is left as it is)."""
    import copy

    for name, param in model.named_parameters():
        if not param.is_floating_point():
            raise ValueError(f"ONNX export takes a float model; parameter {name!r} is {param.dtype} (quantized?).")
    exported = copy.deepcopy(model).to("cpu", torch.float32).eval()
    if getattr(exported.config, "position_embedding_type", None) == "relative":
        # NOTE: torch's exporter decomposes sdpa with an additive bias into a non-contiguous output that its own
        # view then rejects (torch 2.14); the explicit attention computes the same and exports.
        exported.set_attn_implementation("eager")
    return exported


def export_onnx(model: nn.Module, path: str, opset: int = ONNX_OPSET) -> tuple[str, ...]:
    """
    Write `model` (an hf_vit `ViTForImageClassification` or `ViTModel`) to the ONNX file `path` with a dynamic batch
    dimension (float32, the config's image size), opset `opset`. Returns the output names. No check: see
    `check_onnx`, or `export_and_check` for both. Overwrites `path`.
    """
    require_export_dependencies()
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"`opset` must be an integer >= {MIN_OPSET} (LayerNormalization), got {opset!r}.")
    names = _output_names(model)
    traced = _TensorOutputs(_for_export(model), names).eval()
    example = _example_input(traced.model.config, TRACE_BATCH_SIZE, seed=0)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notices about its own internals
        program = torch.onnx.export(
            traced,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(names),
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
        program.save(path)
    return names


def check_onnx(
    model: nn.Module, path: str, batch_sizes=CHECK_BATCH_SIZES, seed: int = 1, threads: int | None = None
) -> float:
    """
    The largest |ONNX Runtime - PyTorch| over every output of `path` and `model` (float32, CPU) on random batches of
    each of `batch_sizes` at the model's image size.
    """
    require_export_dependencies()
    import numpy as np
    import onnxruntime

    reference = _TensorOutputs(_for_export(model), _output_names(model)).eval()
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for offset, batch_size in enumerate(batch_sizes):
        pixel_values = _example_input(reference.model.config, batch_size, seed + offset)
        with torch.inference_mode():
            expected = reference(pixel_values)
        got = session.run(None, {INPUT_NAME: pixel_values.numpy()})
        if len(got) != len(expected):
            raise ValueError(f"{path}: the ONNX graph has {len(got)} outputs, the model {len(expected)}.")
        for value, want in zip(got, expected):
            if value.shape != tuple(want.shape):
                raise ValueError(f"{path}: an ONNX output has shape {value.shape}, PyTorch's {tuple(want.shape)}.")
            worst = max(worst, float(np.abs(value - want.float().numpy()).max()))
    return worst


class OnnxMismatchError(ValueError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class OnnxExport:
    path: str
    opset: int
    outputs: tuple[str, ...]
    max_abs_diff: float
    atol: float


def _sidecar(path: str) -> str:
    """The external-data file the exporter writes next to a graph over 2 GB."""
    return path + ".data"


def export_and_check(
    model: nn.Module, path: str, atol: float = DEFAULT_ATOL, opset: int = ONNX_OPSET, overwrite: bool = False
) -> OnnxExport:
    """
    `export_onnx` into a temporary folder next to `path`, `check_onnx`, and only if the max abs difference is within
    `atol`, move the file (and its external-data file, for graphs over 2 GB) to `path`. Raises `FileExistsError` when
    `path` exists and `overwrite` is not set, `OnnxMismatchError` (nothing written) when the check fails.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise FileExistsError(f"{path} is a folder; give the path of the .onnx file to write.")
    existing = [p for p in (path, _sidecar(path)) if os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it.")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The folder {parent} does not exist.")
    if not atol >= 0:
        raise ValueError(f"`atol` must be >= 0, got {atol!r}.")
    staging = tempfile.mkdtemp(prefix=".onnx-export-", dir=parent)
    try:
        staged = os.path.join(staging, os.path.basename(path))  # same name: the external-data reference stays valid
        outputs = export_onnx(model, staged, opset=opset)
        difference = check_onnx(model, staged)
        if not difference <= atol:
            raise OnnxMismatchError(
                f"ONNX Runtime's outputs differ from PyTorch's by {difference:.3g} (max abs), more than the tolerance "
                f"{atol:g}; {path} was not written."
            )
        for p in existing:
            os.remove(p)
        if os.path.exists(_sidecar(staged)):
            os.replace(_sidecar(staged), _sidecar(path))
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return OnnxExport(path=path, opset=opset, outputs=outputs, max_abs_diff=difference, atol=atol)


__all__ = [
    "CHECK_BATCH_SIZES",
    "DEFAULT_ATOL",
    "EXPORT_TASKS",
    "MissingExportDependencies",
    "ONNX_OPSET",
    "OnnxExport",
    "OnnxMismatchError",
    "check_onnx",
    "export_and_check",
    "export_onnx",
    "require_export_dependencies",
    "task_for",
]
