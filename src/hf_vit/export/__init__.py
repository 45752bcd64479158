"""Serving hf_vit models: reduced-precision inference (bf16, int8 dynamic quantization) and export to ONNX.

Nothing here imports onnx or onnxruntime at import time: they are optional (`pip install "hf-vit[export]"`) and are
needed only by the ONNX functions.
"""

from .precision import (
    INFERENCE_DTYPES,
    QUANTIZATION_SCHEMES,
    add_precision_arguments,
    best_device,
    check_inference_dtype,
    device_argument,
    emulated_bf16_note,
    load_for_inference,
    native_bf16,
    pack_linear_weights,
    prepare_for_inference,
    quantize_dynamic_int8,
    resolve_device,
    torch_dtype_for,
)


__all__ = [
    "INFERENCE_DTYPES",
    "QUANTIZATION_SCHEMES",
    "add_precision_arguments",
    "best_device",
    "check_inference_dtype",
    "device_argument",
    "emulated_bf16_note",
    "load_for_inference",
    "native_bf16",
    "pack_linear_weights",
    "prepare_for_inference",
    "quantize_dynamic_int8",
    "resolve_device",
    "torch_dtype_for",
]
