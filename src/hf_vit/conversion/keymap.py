"""Explicit key maps between checkpoint formats and hf_vit, and the report of what a conversion used.

A key map is a list of `Rule`s, one per hf_vit tensor: which source key(s) it comes from and how their layout
becomes hf_vit's (`to_hf_vit`), and back (`from_hf_vit`) where a format is also written. Every format module
(`vit_jax`, `big_vision`, `timm_format`) builds its table from a config; nothing is guessed key by key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


class ConversionError(ValueError):
    """A checkpoint that cannot be converted: the message names the file, the keys/shapes and what was expected."""


# --------------------------------------------------------------------------------------------------------------------
# Layout transforms. Source arrays arrive as numpy (npz) or torch (state dicts); every transform returns a
# contiguous float torch tensor in hf_vit's layout.


def _tensor(array) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array
    return torch.from_numpy(np.ascontiguousarray(array))


def identity(arrays: Sequence) -> torch.Tensor:
    """One array, same layout (LayerNorm scales, biases, class token, position embeddings)."""
    return _tensor(arrays[0])


def flatten(arrays: Sequence) -> torch.Tensor:
    """One array with singleton axes dropped: old GroupNorm parameters stored as (1, 1, 1, C) -> (C,)."""
    return _tensor(arrays[0]).reshape(-1)


def dense_kernel(arrays: Sequence) -> torch.Tensor:
    """Flax Dense kernel (in, out) -> torch Linear weight (out, in)."""
    return _tensor(arrays[0]).t().contiguous()


def conv_kernel(arrays: Sequence) -> torch.Tensor:
    """Flax Conv kernel (kh, kw, in, out) (HWIO) -> torch Conv2d weight (out, in, kh, kw)."""
    return _tensor(arrays[0]).permute(3, 2, 0, 1).contiguous()


def qkv_kernel(arrays: Sequence) -> torch.Tensor:
    """Flax query/key/value kernels, each (D, heads, head_dim) -> one fused (3D, D) weight (q rows, then k, then v)."""
    return torch.cat([_tensor(a).reshape(a.shape[0], -1).t() for a in arrays], dim=0).contiguous()


def qkv_bias(arrays: Sequence) -> torch.Tensor:
    """Flax query/key/value biases, each (heads, head_dim) -> one fused (3D,) bias."""
    return torch.cat([_tensor(a).reshape(-1) for a in arrays], dim=0).contiguous()


def attention_out_kernel(arrays: Sequence) -> torch.Tensor:
    """Flax attention output kernel (heads, head_dim, D) -> torch Linear weight (D, heads * head_dim)."""
    a = _tensor(arrays[0])
    return a.reshape(-1, a.shape[-1]).t().contiguous()


def position_embeddings_with_zero_prefix(num_prefix: int) -> Callable[[Sequence], torch.Tensor]:
    """Position embeddings stored without a class-token row (added before the class token is prepended, as in
    big_vision and timm's `no_embed_class`) -> hf_vit's table, whose class-token row is then zero: same model."""

    def transform(arrays: Sequence) -> torch.Tensor:
        table = _tensor(arrays[0]).reshape(1, -1, arrays[0].shape[-1])  # (1, N, D)
        zeros = table.new_zeros(1, num_prefix, table.shape[-1])
        return torch.cat([zeros, table], dim=1)

    return transform


# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One hf_vit tensor and where it comes from.

    `target`: the hf_vit state-dict name (of `ViTForImageClassification`). `sources`: the source key(s). `to_hf_vit`:
    source arrays -> hf_vit tensor. `index`: for scanned (stacked) source arrays, the slice along their first axis.
    `from_hf_vit`: hf_vit tensor -> the single source array, for formats hf_vit writes.
    """

    target: str
    sources: tuple[str, ...]
    to_hf_vit: Callable[[Sequence], torch.Tensor] = identity
    index: int | None = None
    from_hf_vit: Callable[[torch.Tensor], torch.Tensor] | None = None


def rule(target: str, sources: str | Iterable[str], to_hf_vit=identity, index=None, from_hf_vit=None) -> Rule:
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    return Rule(target, sources, to_hf_vit, index, from_hf_vit)


def renames(pairs: Iterable[tuple[str, str]]) -> list[Rule]:
    """Rules for tensors that only change name (the same layout on both sides)."""
    return [rule(target, source, identity, from_hf_vit=lambda t: t) for target, source in pairs]


@dataclass
class ConversionReport:
    """What a conversion read and wrote. `unused_keys`: source tensors no rule consumed; `missing_keys`: hf_vit tensors
    the source did not provide (and that were not created on purpose); `dropped_keys`: source tensors left out on
    request (e.g. the pre-training head when a new label set is asked for); `new_keys`: hf_vit tensors created fresh
    (a new zero-initialised head)."""

    source: str
    format: str
    layout: str = ""
    unused_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)
    new_keys: list[str] = field(default_factory=list)
    resampled_position_embeddings: tuple | None = None  # (old grid, new grid, method)
    notes: list[str] = field(default_factory=list)
    max_abs_difference: dict[str, float] = field(default_factory=dict)  # reference name -> max |hf_vit - reference|

    def summary(self) -> str:
        lines = [f"source: {self.source} ({self.format}{', ' + self.layout if self.layout else ''})"]
        for name in ("unused_keys", "missing_keys", "dropped_keys", "new_keys"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name.replace('_', ' ')} ({len(keys)}): {_abbreviate(keys)}")
        if self.resampled_position_embeddings is not None:
            old, new, how = self.resampled_position_embeddings
            lines.append(f"position embeddings resampled from a {old[0]}x{old[1]} to a {new[0]}x{new[1]} grid ({how})")
        lines.extend(self.notes)
        for name, value in self.max_abs_difference.items():
            lines.append(f"max abs difference vs {name}: {value:.3g}")
        return "\n".join(lines)


def _abbreviate(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def apply_rules(
    rules: Sequence[Rule],
    source,
    expected_shapes: dict[str, tuple[int, ...]],
    report: ConversionReport,
    skip_targets: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Read every rule's source arrays (one rule at a time: peak memory is one tensor, not the checkpoint) and build
    the hf_vit state dict. Raises `ConversionError` naming the file, the keys and the shapes when a source key is
    missing or a tensor does not have the shape the config expects. Fills `report.unused_keys`."""
    skip_targets = set(skip_targets)
    missing = [(r.target, k) for r in rules if r.target not in skip_targets for k in r.sources if k not in source]
    if missing:
        listing = _abbreviate([f"{key} (for {target})" for target, key in missing])
        raise ConversionError(
            f"{source.path}: {len(missing)} key(s) the {report.format} key map expects are missing: {listing}. "
            f"The file holds {len(source.keys())} arrays, e.g. {_abbreviate(sorted(source.keys()), 5)}."
        )
    state_dict, used, mismatched = {}, set(), []
    # Scanned (stacked) arrays serve one rule per layer: keep the ones the current rule reads, so a key map that lists
    # its scanned rules key by key reads each stacked array once.
    stacked = {}
    for r in rules:
        if r.target in skip_targets:
            continue
        arrays = []
        if r.index is not None:
            stacked = {k: v for k, v in stacked.items() if k in r.sources}
        for key in r.sources:
            if r.index is None:
                arrays.append(source.read(key))
            else:
                if key not in stacked:
                    stacked[key] = source.read(key)
                arrays.append(stacked[key][r.index])
        tensor = r.to_hf_vit(arrays).float() if _is_floating(arrays[0]) else r.to_hf_vit(arrays)
        del arrays
        expected = expected_shapes.get(r.target)
        if expected is None:
            raise ConversionError(f"internal: key map names {r.target!r}, which the hf_vit model does not have.")
        if tuple(tensor.shape) != tuple(expected):
            shapes = ", ".join(f"{k} {tuple(source.shape(k))}" for k in r.sources)
            mismatched.append(f"{shapes} -> {r.target} {tuple(tensor.shape)}, expected {tuple(expected)}")
            continue
        state_dict[r.target] = tensor
        used.update(r.sources)
    if mismatched:
        raise ConversionError(
            f"{source.path}: {len(mismatched)} tensor(s) do not fit the config: {_abbreviate(mismatched, 5)}. "
            "Check the config fields (hidden_size, num_attention_heads, intermediate_size, patch_size, image_size, "
            "num_labels) or let the converter infer them from the file."
        )
    report.unused_keys = sorted(k for k in source.keys() if k not in used and k not in set(report.dropped_keys))
    return state_dict


def _is_floating(array) -> bool:
    if isinstance(array, torch.Tensor):
        return array.is_floating_point()
    return np.issubdtype(array.dtype, np.floating)


__all__ = [
    "ConversionError",
    "ConversionReport",
    "Rule",
    "apply_rules",
    "attention_out_kernel",
    "conv_kernel",
    "dense_kernel",
    "flatten",
    "identity",
    "position_embeddings_with_zero_prefix",
    "qkv_bias",
    "qkv_kernel",
    "renames",
    "rule",
]
