"""The hybrid's ResNet: BiT-style GroupNorm and weight-standardised convolutions (ViT paper, section 3.1 and 4.1).

As the reference code builds it (vit_jax/models_resnet.py and the root block in models_vit.py): a 7x7/2 stem conv
with SAME padding, GroupNorm, ReLU and a 3x3/2 SAME max-pool, then stages of **post-activation** bottleneck units
(conv -> GN -> ReLU; ReLU after the residual add; projection shortcut where the shape changes; the unit's last GN
starts at zero scale). Not BiT's pre-activation ResNet-v2, despite the file name the reference code family uses.

Everything here reads the flat `backbone_*` fields of `ViTConfig`. (B, C, H, W) -> (B, C', H / s, W / s).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_hf_vit import ViTConfig


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/Flax "SAME" padding of one side: (before, after); the extra pixel goes after, as in TensorFlow."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) padded so that a kernel/stride window gives ceil(H / stride) x ceil(W / stride) outputs."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class WeightStandardizedConv2d(nn.Conv2d):
    """
    A bias-free convolution whose kernel is standardised per output channel before use (Weight Standardization).

    `style="std_plus_eps"` is the reference code: `(w - mean) / (std + eps)`, eps 1e-5.
    `style="sqrt_var_plus_eps"` is BiT's, timm's and transformers': `(w - mean) / sqrt(var + eps)` (eps 1e-8 there).
    SAME padding as in TensorFlow: symmetric and static for stride 1, computed from the input size otherwise.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, eps=1e-5, style="std_plus_eps"):
        # Stride 1 with an odd kernel: SAME is symmetric whatever the input size, so let the conv pad.
        static = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=static, bias=False)
        self.eps = eps
        self.style = style
        self.dynamic_padding = stride > 1 and kernel_size > 1

    def standardized_weight(self) -> torch.Tensor:
        weight = self.weight
        if self.style == "sqrt_var_plus_eps":
            # One fused op: batch-norm statistics over (in, kh, kw) of each output channel.
            flat = weight.reshape(1, self.out_channels, -1)
            return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=self.eps).reshape_as(weight)
        var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, correction=0)
        return (weight - mean) / (var.sqrt() + self.eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            hidden_states = pad_same(hidden_states, self.kernel_size[0], self.stride[0])
        return F.conv2d(hidden_states, self.standardized_weight(), None, self.stride, self.padding)


def max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """
    The reference's 3x3/2 max-pool with SAME padding, whose padding never wins the max: SAME pads (0, 1) along an
    even side and (1, 1) along an odd one, which is torch's implicit -inf padding of (size % 2) on both sides with
    `ceil_mode` (the partial last window of an even side). Same values and gradients as padding with -inf first,
    without the padded copy.
    """
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=(x.shape[-2] % 2, x.shape[-1] % 2), ceil_mode=True)


def _conv(config: ViTConfig, in_channels, out_channels, kernel_size, stride=1) -> WeightStandardizedConv2d:
    conv = WeightStandardizedConv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        eps=config.backbone_weight_standardization_eps,
        style=config.backbone_weight_standardization,
    )
    conv.init_scheme = "lecun_normal"  # Flax's nn.Conv default, as the reference's StdConv
    return conv


class GroupNorm(nn.GroupNorm):
    """
    `nn.GroupNorm` (same parameters, same values) that routes one slow case of torch's CPU kernels around itself: a
    bf16/fp16 channels-last input with fewer than 16 channels per group, which the channels-last kernel (vectorised
    across a group's channels) normalises several times slower than the channels-first one does after a layout copy
    there and back; from 16 channels per group on, and in fp32, the channels-last kernel is the faster one (figures:
    bench/README.md, "Design measurements").
    """

    channels_first_below = 16  # channels per group; 0 turns the rerouting off

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            hidden_states.device.type == "cpu"
            and hidden_states.dtype in (torch.bfloat16, torch.float16)
            and self.num_channels // self.num_groups < self.channels_first_below
            and hidden_states.dim() == 4
            and not hidden_states.is_contiguous()
            and hidden_states.is_contiguous(memory_format=torch.channels_last)
        ):
            normed = super().forward(hidden_states.contiguous())
            return normed.contiguous(memory_format=torch.channels_last)
        return super().forward(hidden_states)


def _norm(config: ViTConfig, channels: int, zero_scale: bool = False) -> GroupNorm:
    norm = GroupNorm(config.backbone_num_groups, channels, eps=config.backbone_group_norm_eps)
    if zero_scale:
        norm.init_scheme = "zeros"  # the reference's gn3: scale_init=zeros (and bias zeros)
    return norm


class ResNetStem(nn.Module):
    """(B, C, H, W) -> (B, 64w, H/4, W/4): 7x7/2 weight-standardised conv, GroupNorm, ReLU, 3x3/2 max-pool (SAME)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        width = config.backbone_stem_width
        self.conv = _conv(config, config.num_channels, width, kernel_size=7, stride=2)
        self.norm = _norm(config, width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(pixel_values)), inplace=True)  # in place: GN's backward does not need its output
        return max_pool_same(x)


class ResNetShortcut(nn.Module):
    """Projection shortcut: 1x1 weight-standardised conv with the unit's stride, then GroupNorm (no activation)."""

    def __init__(self, config: ViTConfig, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = _conv(config, in_channels, out_channels, kernel_size=1, stride=stride)
        self.norm = _norm(config, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ResNetBottleneckUnit(GradientCheckpointingLayer):
    """
    Post-activation bottleneck: relu(shortcut(x) + GN(conv3(relu(GN(conv2(relu(GN(conv1(x))))))))).

    1x1 -> 3x3 (with the stride) -> 1x1 with 4x expansion. (B, C, H, W) -> (B, 4m, H/stride, W/stride).
    """

    def __init__(self, config: ViTConfig, in_channels: int, mid_channels: int, stride: int):
        super().__init__()
        out_channels = 4 * mid_channels
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = ResNetShortcut(config, in_channels, out_channels, stride) if needs_projection else None
        self.conv1 = _conv(config, in_channels, mid_channels, kernel_size=1)
        self.norm1 = _norm(config, mid_channels)
        self.conv2 = _conv(config, mid_channels, mid_channels, kernel_size=3, stride=stride)
        self.norm2 = _norm(config, mid_channels)
        self.conv3 = _conv(config, mid_channels, out_channels, kernel_size=1)
        self.norm3 = _norm(config, out_channels, zero_scale=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.shortcut is None else self.shortcut(hidden_states)
        y = F.relu(self.norm1(self.conv1(hidden_states)), inplace=True)  # (fresh tensors: safe in place)
        y = F.relu(self.norm2(self.conv2(y)), inplace=True)
        y = self.norm3(self.conv3(y))
        return F.relu(residual + y, inplace=True)


class ResNetStage(nn.Module):
    """`depth` bottleneck units; the first takes the stride and projects the shortcut."""

    def __init__(self, config: ViTConfig, in_channels: int, mid_channels: int, depth: int, stride: int):
        super().__init__()
        units = []
        for index in range(depth):
            units.append(ResNetBottleneckUnit(config, in_channels, mid_channels, stride if index == 0 else 1))
            in_channels = 4 * mid_channels
        self.units = nn.ModuleList(units)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            hidden_states = unit(hidden_states)
        return hidden_states


class ResNetV2Backbone(nn.Module):
    """
    (B, C, H, W) -> (B, config.backbone_out_channels, H / s, W / s), s = config.backbone_stride: the stem, then one
    stage per entry of `config.backbone_depths` (stride 1 for the first stage, 2 for the others).
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        width = config.backbone_stem_width
        self.stem = ResNetStem(config)
        stages, in_channels = [], width
        for index, depth in enumerate(config.backbone_depths or []):
            mid = width * 2**index
            stages.append(ResNetStage(config, in_channels, mid, depth, stride=1 if index == 0 else 2))
            in_channels = 4 * mid
        self.stages = nn.ModuleList(stages)

    # On CPU the ResNet runs channels-last (the same values to fp32 rounding): oneDNN's convolutions, GroupNorm and
    # above all the max-pool are faster there (bench/README.md, "Design measurements"). Outputs are channels-last too.
    channels_last_on_cpu = True

    def forward(self, pixel_values: torch.Tensor, output_stages: bool = False):
        """The feature map; with `output_stages`, also the stem's and every stage's output (a tuple)."""
        if self.channels_last_on_cpu and pixel_values.device.type == "cpu":
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        x = self.stem(pixel_values)
        outputs = (x,) if output_stages else None
        for stage in self.stages:
            x = stage(x)
            if output_stages:
                outputs += (x,)
        return (x, outputs) if output_stages else x


__all__ = ["ResNetV2Backbone", "WeightStandardizedConv2d", "pad_same", "same_padding"]
