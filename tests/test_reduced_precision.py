"""Reduced-precision inference: the bf16 CPU paths of the model (fused oneDNN linear layers, matmul attention) and
`hf_vit.export.quantize_dynamic_int8`. The generic suite (tests/common.py) runs bf16 and int8 on every model and
variant; this file checks the pieces against direct computations."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_vit import ViTForImageClassification
from hf_vit.export import quantize_dynamic_int8
from hf_vit.modeling_hf_vit import (
    _onednn_bf16_linear_available,
    fuses_linear,
    is_plain_linear,
    linear,
    linear_rows,
    uses_matmul_attention,
)

from .common import make_config, pixel_values_for


needs_onednn_bf16 = pytest.mark.skipif(
    not _onednn_bf16_linear_available(), reason="this torch build or CPU has no oneDNN bf16 support"
)
# One bf16 rounding of values of size ~1-8 (8 bits of mantissa), the precision of every comparison below.
BF16_ATOL = 2**-5


def _layer(in_features=48, out_features=40, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        if bias:
            layer.bias.normal_()
    return layer


def _reference(layer, x, activation=None):
    """float32 arithmetic on the same bf16 values."""
    out = F.linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())
    return out if activation is None else activation(out)


@needs_onednn_bf16
def test_fuses_linear_only_for_plain_bf16_inference_layers():
    layer = _layer()
    x = torch.randn(2, 5, 48).to(torch.bfloat16)
    with torch.no_grad():
        assert fuses_linear(layer, x)
        assert not fuses_linear(layer, x.float())  # float32 keeps nn.Linear
        assert not fuses_linear(copy.deepcopy(layer).float(), x)
    with torch.enable_grad():
        assert not fuses_linear(layer, x)  # a gradient to record: nn.Linear's autograd
    hooked = copy.deepcopy(layer)
    hooked.register_forward_hook(lambda module, args, output: None)
    assert not is_plain_linear(hooked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 4)), {nn.Linear})[0]
    assert not is_plain_linear(quantized)  # its `weight` is a method


@needs_onednn_bf16
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_matches_float32_arithmetic(bias):
    layer = _layer(bias=bias)
    x = torch.randn(3, 7, 48).to(torch.bfloat16)
    with torch.no_grad():
        # (B, N, D), a strided input (the class-token slice of the last block), and a 2-D input.
        for inputs in (x, x[:, :1], x.transpose(0, 1), x[0]):
            got = linear(layer, inputs)
            assert got.dtype == torch.bfloat16 and got.shape == (*inputs.shape[:-1], 40)
            torch.testing.assert_close(got.float(), _reference(layer, inputs), rtol=2**-7, atol=BF16_ATOL)


@needs_onednn_bf16
@pytest.mark.parametrize("hidden_act, exact", [("gelu", True), ("gelu_pytorch_tanh", False), ("gelu_new", False)])
def test_fused_gelu_matches_the_activation(hidden_act, exact):
    from transformers.activations import ACT2FN

    from hf_vit.modeling_hf_vit import ONEDNN_GELU

    layer = _layer()
    x = torch.randn(4, 9, 48).to(torch.bfloat16)
    activation = ACT2FN[hidden_act]
    with torch.no_grad():
        got = linear(layer, x, activation, ONEDNN_GELU[hidden_act])
        want = F.gelu(_reference(layer, x), approximate="none" if exact else "tanh")
        torch.testing.assert_close(got.float(), want, rtol=2**-7, atol=BF16_ATOL)
        # The activation was applied (the pre-activation differs by far more than bf16 rounding on negative inputs).
        assert (got.float() - _reference(layer, x)).abs().max() > 0.5


@needs_onednn_bf16
def test_fused_linear_reads_a_strided_bias_correctly():
    layer = _layer(out_features=40)
    with torch.no_grad():
        layer.bias = nn.Parameter(torch.randn(80).to(torch.bfloat16)[::2])  # a non-contiguous bias
        x = torch.randn(2, 3, 48).to(torch.bfloat16)
        torch.testing.assert_close(linear(layer, x).float(), _reference(layer, x), rtol=2**-7, atol=BF16_ATOL)


def test_linear_rows_is_a_slice_of_the_full_output():
    for dtype in (torch.float32, torch.bfloat16):
        layer = _layer(out_features=96).to(dtype)
        x = torch.randn(2, 5, 48).to(dtype)
        with torch.no_grad():
            full = layer(x)
            torch.testing.assert_close(linear_rows(layer, x, 32, 96), full[..., 32:96], rtol=2**-7, atol=BF16_ATOL)
            # Any other module is called whole and its output sliced (a forward hook sees the call).
            calls = []
            layer.register_forward_hook(lambda module, args, output: calls.append(output.shape))
            torch.testing.assert_close(linear_rows(layer, x, 0, 32), full[..., :32], rtol=0, atol=0)
            assert calls == [torch.Size([2, 5, 96])]


@needs_onednn_bf16
def test_hooks_on_linear_layers_still_fire_in_bf16_inference():
    model = ViTForImageClassification(make_config()).to(torch.bfloat16).eval()
    seen = []
    model.vit.encoder.layers[0].mlp.fc1.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with torch.no_grad():
        model(pixel_values_for(model.config))
    assert seen == [torch.bfloat16]


def test_matmul_attention_is_chosen_for_bf16_on_a_cpu_only():
    query = torch.randn(1, 2, 3, 4)
    assert uses_matmul_attention(query.to(torch.bfloat16), "sdpa")
    assert not uses_matmul_attention(query, "sdpa")  # float32: the fused kernel
    assert not uses_matmul_attention(query.to(torch.bfloat16), "flex_attention")  # an explicit other backend


def test_bf16_fast_paths_agree_with_the_float32_model_within_bf16_rounding():
    torch.manual_seed(0)
    model = ViTForImageClassification(make_config(num_labels=10)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    half = copy.deepcopy(model).to(torch.bfloat16)
    pixel_values = pixel_values_for(model.config, batch_size=4)
    with torch.no_grad():
        want = model(pixel_values).logits
        fast = half(pixel_values).logits.float()  # fused linears, matmul attention
    with torch.enable_grad():
        slow = half(pixel_values).logits.float()  # nn.Linear calls (a gradient to record), the same attention
    scale = want.abs().max()
    # bf16 keeps 8 bits: 2 blocks and a head of width 32 keep the logits within 2% of their scale; the fused path
    # rounds once per layer where nn.Linear and the separate GELU round twice, so it is no further from float32.
    assert (fast - want).abs().max() <= 0.02 * scale
    assert (fast - want).abs().max() <= (slow - want).abs().max() * 1.5 + 1e-3


def test_quantize_dynamic_int8_is_the_standard_call():
    torch.manual_seed(0)
    model = ViTForImageClassification(make_config(num_labels=10)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    pixel_values = pixel_values_for(model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        standard = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    ours = quantize_dynamic_int8(model)
    assert isinstance(model.vit.encoder.layers[0].mlp.fc1, nn.Linear)  # a copy: the model itself is unchanged
    per_channel = quantize_dynamic_int8(model, scheme="per_channel")
    fc1 = per_channel.vit.encoder.layers[0].mlp.fc1
    assert fc1.weight().qscheme() == torch.per_channel_affine
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values).logits, standard(pixel_values).logits, rtol=0, atol=0)
        want = model(pixel_values).logits
        assert (per_channel(pixel_values).logits - want).abs().max() <= 0.08 * want.abs().max() + 1e-2


def test_quantize_dynamic_int8_refuses_what_it_cannot_quantize():
    model = ViTForImageClassification(make_config())
    with pytest.raises(ValueError, match=r"`scheme` must be one of \['per_tensor', 'per_channel'\], got 'per_row'"):
        quantize_dynamic_int8(model, scheme="per_row")
    with pytest.raises(ValueError, match="starts from float32 weights.*torch.bfloat16"):
        quantize_dynamic_int8(model.to(torch.bfloat16))


@needs_onednn_bf16
def test_packed_weights_follow_the_weights_and_leave_the_model_copyable():
    # pack_linear_weights: each weight in oneDNN's blocked layout, made at the first call and kept between calls.
    import gc
    import pickle

    from hf_vit.modeling_hf_vit import _PACKED_WEIGHTS

    from hf_vit.export import pack_linear_weights

    layer = _layer()
    x = torch.randn(2, 5, 48).to(torch.bfloat16)
    before = len(_PACKED_WEIGHTS)
    with torch.no_grad():
        plain = linear(layer, x)
        assert len(_PACKED_WEIGHTS) == before  # opt-in only
        assert pack_linear_weights(layer) == 1
        first = linear(layer, x)
        torch.testing.assert_close(first, plain, rtol=0, atol=0)  # the same sums
        assert len(_PACKED_WEIGHTS) == before + 1  # laid out once...
        torch.testing.assert_close(linear(layer, x), first, rtol=0, atol=0)
        assert len(_PACKED_WEIGHTS) == before + 1  # ...and reused
        layer.weight.mul_(2)  # an in-place change (an optimiser step, load_state_dict) makes a new layout
        torch.testing.assert_close(linear(layer, x).float(), _reference(layer, x), rtol=2**-7, atol=BF16_ATOL)
        layer.to(torch.float32).to(torch.bfloat16)  # new storage
        torch.testing.assert_close(linear(layer, x).float(), _reference(layer, x), rtol=2**-7, atol=BF16_ATOL)
    # The layout lives outside the module: copies and pickles see plain tensors only.
    copied = copy.deepcopy(layer)
    restored = pickle.loads(pickle.dumps(layer))
    with torch.no_grad():
        torch.testing.assert_close(linear(copied, x), linear(restored, x), rtol=0, atol=0)
    del layer, copied, restored
    gc.collect()
    assert len(_PACKED_WEIGHTS) == before  # freed with the weights


@pytest.mark.parametrize("native", [True, False])
def test_bf16_inference_warns_where_the_device_only_emulates_it(monkeypatch, caplog, native):
    import hf_vit.export.precision as precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    model = ViTForImageClassification(make_config())
    with caplog.at_level("WARNING", logger="hf_vit.export.precision"):
        served = precision.prepare_for_inference(model, "bfloat16", "cpu")
        precision.prepare_for_inference(ViTForImageClassification(make_config()), "float32", "cpu")
    assert served.dtype == torch.bfloat16  # run as asked either way
    warned = [r.getMessage() for r in caplog.records if "bf16 instructions" in r.getMessage()]
    assert len(warned) == (0 if native else 1)  # once, for bf16 only
    assert native or "Use dtype 'float32'" in warned[0]
