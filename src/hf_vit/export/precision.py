"""Reduced-precision inference: the dtype and device a model runs in, and int8 dynamic quantization for the CPU.

Three numeric formats for serving, chosen by name (`--dtype` of `hf-vit predict` / `hf-vit evaluate`):

- "float32": the weights as trained.
- "bfloat16": weights and activations in bf16 (`from_pretrained(..., dtype=torch.bfloat16)`); on a CPU with bf16
  matrix instructions (AVX512-BF16, AMX) the fastest format, at bf16's ~3 significant digits.
- "int8": torch's dynamic quantization of every `nn.Linear` (`quantize_dynamic_int8`): int8 weights, activations
  quantized per batch at run time, int8 GEMMs with int32 accumulation; the rest (patch embedding, LayerNorm,
  attention, GELU) stays float32. CPU only.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


INFERENCE_DTYPES = ("float32", "bfloat16", "int8")
QUANTIZATION_SCHEMES = ("per_tensor", "per_channel")


def best_device() -> str:
    """The best available device: "cuda" if present, else "mps", else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """
    Whether `device` computes in bf16 natively: a CUDA GPU with bf16 arithmetic (compute capability 8.0 or newer), MPS
    on macOS 14 or newer, or a CPU with bf16 instructions (x86: AVX512-BF16 or AMX; Arm: the BF16 extension, `bf16`
    among /proc/cpuinfo's features).

    NOTE: on other CPUs torch emulates bf16, and it is slower than float32, not faster: on a 2-core AMD EPYC with
    AVX2 only, a training step of the hybrid Fashion-MNIST model ran at 30 images/s under bf16 autocast against 342
    in float32 (bench/README.md, "bf16 without bf16 instructions").
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and _cuda_native_bf16(device)
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return False
        return bool(getattr(mps, "is_macos_or_newer", lambda *version: False)(14, 0))
    if device.type != "cpu":
        return False
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        supported = getattr(torch.cpu, check, None)
        if supported is not None and supported():
            return True
    return _arm_bf16_feature()


def _cuda_native_bf16(device: torch.device) -> bool:
    """Whether this CUDA GPU (`device`'s index, else the current one) has bf16 arithmetic (compute capability 8.0 or
    newer). NOTE: torch's `is_bf16_supported()` also says yes where bf16 is only emulated (older GPUs), and it asks the
    current GPU only, hence `including_emulation=False` inside `torch.cuda.device(index)`."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def _arm_bf16_feature() -> bool:
    """Whether Linux lists the Arm BF16 extension among the CPU's features (False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("Features") and "bf16" in line.split(":", 1)[1].split() for line in f)
    except OSError:
        return False


def emulated_bf16_note(device: str | torch.device) -> str | None:
    """One line for a user who asked for bf16 on a device without native bf16 (`native_bf16`), else None."""
    if native_bf16(device):
        return None
    device = torch.device(device)
    if device.type == "cpu":
        return ("bf16 on 'cpu': this CPU has no bf16 instructions (AVX512-BF16, AMX or Arm BF16), so torch emulates "
                "bf16 and it runs slower than float32, not faster; float32 is the faster choice here (bench/README.md, "
                "\"bf16 without bf16 instructions\").")
    if device.type == "cuda":
        return (f"bf16 on {str(device)!r}: this GPU has no bf16 arithmetic (compute capability 8.0 or newer has it), "
                "so torch emulates bf16 through float32 and gains nothing over float16 or float32 here.")
    if device.type == "mps":
        return "bf16 on 'mps': MPS computes in bf16 from macOS 14 on, and this macOS is older; use float32 here."
    return f"bf16 on {str(device)!r}: this device has no bf16 arithmetic; use float32."


def resolve_device(device: str | None, dtype: str = "float32") -> torch.device:
    """
    The device to run on: `device` as given ("cpu", "cuda", "cuda:1", "mps"), or with None the best available one
    (`best_device`; the CPU for "int8", which runs nowhere else). Raises ValueError for an unknown or unavailable
    device, or int8 on another device than the CPU.
    """
    dtype = check_inference_dtype(dtype)
    if device is None:
        return torch.device("cpu" if dtype == "int8" else best_device())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"`device` {device!r} is not a device name; use {_DEVICE_FORMS}.") from error
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"`device` {device!r} is not supported; use {_DEVICE_FORMS}.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` {device!r}: no CUDA device is available here; use 'cpu'.")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"`device` {device!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"`device` {device!r}: MPS is not available here; use 'cpu'.")
    if dtype == "int8" and resolved.type != "cpu":
        raise ValueError(f"dtype 'int8' (dynamic quantization) runs on the CPU only, not on {device!r}; use 'cpu'.")
    return resolved


_DEVICE_FORMS = "'cpu', 'cuda', 'cuda:N' or 'mps'"


def device_argument(value: str) -> str:
    """argparse `type=` for --device: the form of a device name (availability is checked when the command runs)."""
    import argparse

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or (device.type != "cuda" and device.index):
        raise argparse.ArgumentTypeError(f"invalid device {value!r} (choose from {_DEVICE_FORMS})")
    return value


def add_precision_arguments(parser) -> None:
    """`--dtype` and `--device` of the commands that run a model (`hf-vit predict`, `hf-vit evaluate`)."""
    parser.add_argument(
        "--dtype", choices=INFERENCE_DTYPES, default="float32",
        help="Numeric format: float32 (as trained), bfloat16 weights, or int8 dynamic quantization of the linear "
        "layers (CPU only)",
    )
    parser.add_argument(
        "--device", type=device_argument, default=None,
        help=f"{_DEVICE_FORMS} (default: the best available: cuda, else mps, else cpu; cpu for int8)",
    )


def check_inference_dtype(dtype: str) -> str:
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"`dtype` must be one of {list(INFERENCE_DTYPES)}, got {dtype!r}.")
    return dtype


def torch_dtype_for(dtype: str) -> torch.dtype:
    """The dtype the weights are loaded in for an inference dtype name: int8 quantizes a float32 model."""
    return torch.bfloat16 if check_inference_dtype(dtype) == "bfloat16" else torch.float32


def quantize_dynamic_int8(model: nn.Module, scheme: str = "per_tensor", inplace: bool = False) -> nn.Module:
    """
    int8 dynamic quantization of every `nn.Linear` of a float32 model, for CPU inference: the standard
    `torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)` (transformers' and timm's ViT are
    served this way), on the model in eval mode.

    Args:
        model: a float32 model on the CPU (any hf_vit model, or any other module).
        scheme: "per_tensor" (torch's default: one scale per weight matrix) or "per_channel" (one scale per output
            feature, closer to float32 for layers whose rows differ in range, at the same speed on x86).
        inplace: quantize `model` itself instead of a copy.

    Returns the quantized model (in eval mode). It is for inference on the CPU: it does not train, does not move to
    another device and does not save with `save_pretrained` (quantize after loading instead).

    NOTE: torch marks `torch.ao.quantization` as deprecated in favour of the separate torchao package, yet still ships
    it (2.14); its deprecation warnings are silenced here, so that this one call is the place to change when it goes.

    Example:

    ```python
    >>> import torch
    >>> from hf_vit import ViTConfig, ViTForImageClassification
    >>> from hf_vit.export import quantize_dynamic_int8
    >>> model = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
    ...                                             num_attention_heads=4, intermediate_size=128, num_labels=10))
    >>> int8 = quantize_dynamic_int8(model)
    >>> type(int8.vit.encoder.layers[0].mlp.fc1).__name__
    'DynamicQuantizedLinear'
    >>> int8(torch.randn(2, 3, 32, 32)).logits.shape
    torch.Size([2, 10])
    ```
    """
    if scheme not in QUANTIZATION_SCHEMES:
        raise ValueError(f"`scheme` must be one of {list(QUANTIZATION_SCHEMES)}, got {scheme!r}.")
    for name, param in model.named_parameters():
        if param.device.type != "cpu":
            raise ValueError(f"int8 dynamic quantization runs on the CPU; parameter {name!r} is on {param.device}.")
        if param.is_floating_point() and param.dtype != torch.float32:
            raise ValueError(
                f"int8 dynamic quantization starts from float32 weights; parameter {name!r} is {param.dtype}. Load the "
                "model in float32 (the default) and quantize that."
            )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        qconfig = per_channel_dynamic_qconfig if scheme == "per_channel" else default_dynamic_qconfig
        return quantize_dynamic(model.eval(), {nn.Linear: qconfig}, dtype=torch.qint8, inplace=inplace)


def pack_linear_weights(model: nn.Module) -> int:
    """
    For bf16 inference on a CPU: keep every plain `nn.Linear` weight of `model` in oneDNN's blocked layout, laid out
    at the first call and reused (otherwise oneDNN reorders each weight at every call, a full pass over it; the sums
    are the same). Costs one more bf16 copy of the linear weights. Returns the number of layers.

    The layout is laid out again when a weight changes through the parameter (`load_state_dict`, an optimiser step,
    an in-place op, `.to()`); a write through `weight.data` is not seen: call this function again after one.
    Used by `prepare_for_inference` / `load_for_inference` (`hf-vit predict`, `hf-vit evaluate`) for bf16 on a CPU.
    """
    from ..modeling_hf_vit import forget_packed_weight, is_plain_linear

    count = 0
    for module in model.modules():
        if is_plain_linear(module):
            module.pack_onednn_weight = True
            forget_packed_weight(module.weight)
            count += 1
    return count


def prepare_for_inference(model: nn.Module, dtype: str = "float32", device: str | torch.device | None = None) -> nn.Module:
    """
    A loaded float32 model in an inference dtype (`INFERENCE_DTYPES`) on `device` (None: the best available; see
    `resolve_device`), in eval mode. "bfloat16" casts the weights (and on a CPU keeps the linear layers' weights in
    oneDNN's layout, `pack_linear_weights`), "int8" quantizes a copy (`quantize_dynamic_int8`).
    To load straight into bf16 without a float32 copy, pass `dtype=torch.bfloat16` to `from_pretrained` instead.
    """
    resolved = device if isinstance(device, torch.device) else resolve_device(device, dtype)
    if dtype == "int8":
        if resolved.type != "cpu":
            raise ValueError(f"dtype 'int8' (dynamic quantization) runs on the CPU only, not on {str(resolved)!r}.")
        return quantize_dynamic_int8(model.to("cpu", torch.float32))
    model = model.to(device=resolved, dtype=torch_dtype_for(dtype)).eval()
    if dtype == "bfloat16":
        note = emulated_bf16_note(resolved)
        if note is not None:
            logger.warning(f"{note} Use dtype 'float32' (or 'int8' on a CPU) for speed.")
        if resolved.type == "cpu":
            pack_linear_weights(model)
    return model


def load_for_inference(model_class, name_or_path: str, dtype: str = "float32", device: str | None = None, **kwargs):
    """
    `model_class.from_pretrained(name_or_path, **kwargs)` in an inference dtype (`INFERENCE_DTYPES`) on `device`
    (None: the best available), in eval mode: bf16 is loaded as bf16 directly, int8 is loaded in float32 and quantized.
    Raises ValueError for an unavailable device (see `resolve_device`), OSError for a folder that does not load.
    """
    resolved = resolve_device(device, dtype)
    model = model_class.from_pretrained(name_or_path, dtype=torch_dtype_for(dtype), **kwargs)
    return prepare_for_inference(model, dtype, resolved)


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
