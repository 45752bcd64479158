"""The reference (Flax) ViT forward pass, computed straight from the `.npz` arrays, to check conversions against.

This is the model of `vit_jax/models_vit.py` (with the hybrid's `models_resnet.py`) and big_vision's
`models/vit.py` (ViT paper, section 3.1), written
with the primitives Flax uses: `jax.nn.gelu` (tanh approximation, Flax's `nn.gelu`), Flax's LayerNorm statistics
(eps 1e-6, variance as E[x^2] - E[x]^2), query scaling before the dot product, a VALID conv for the patches. It reads
the file's own key names (both numberings, scanned blocks, class token or not, MAP head, pre-logits) and shares no
code with the converter, so a key-map mistake shows up as a difference.

Backends: "jax" (jax.numpy and jax.lax; the source framework) or "numpy" (the same formulas in NumPy, for machines
without jax). The file imports only numpy (and jax when asked), so it also runs as a script in an environment that
has jax but not torch:

    python jax_reference.py CHECKPOINT.npz IMAGES.npy OUT.npz [--backend jax|numpy] [--prefix params/]

IMAGES.npy is (B, H, W, C) float32 in the model's input range ([-1, 1] for the original checkpoints); OUT.npz gets
`logits`, `pre_logits` and `encoded` (the sequence after the final LayerNorm).
"""

import argparse
import math
import sys
import zipfile

import numpy as np


LAYER_NORM_EPS = 1e-6


def _tree(flat, prefix):
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}} for the keys under `prefix`."""
    tree = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        node = tree
        *parents, leaf = key[len(prefix) :].split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


class _Ops:
    """The few primitives whose exact form matters, per backend."""

    def __init__(self, backend, dtype=np.float32):
        self.backend, self.dtype = backend, np.dtype(dtype)
        if backend == "jax" and self.dtype != np.float32:
            raise ValueError("the jax backend computes in float32 only; use backend='numpy' for float64.")
        if backend == "jax":
            import jax
            import jax.numpy as jnp

            jax.config.update("jax_default_matmul_precision", "highest")
            self.xp, self.jax = jnp, jax
        elif backend == "numpy":
            self.xp = np
        else:
            raise ValueError(f"backend must be 'jax' or 'numpy', got {backend!r}.")

    def asarray(self, x):
        return self.xp.asarray(np.asarray(x, dtype=self.dtype))

    def gelu(self, x):
        if self.backend == "jax":
            return self.jax.nn.gelu(x, approximate=True)  # what flax.linen.gelu is
        c, k = self.dtype.type(math.sqrt(2.0 / math.pi)), self.dtype.type(0.044715)
        return 0.5 * x * (1.0 + np.tanh(c * (x + k * x**3)))

    def softmax(self, x):
        if self.backend == "jax":
            return self.jax.nn.softmax(x, axis=-1)
        x = x - x.max(axis=-1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=-1, keepdims=True)

    def layer_norm(self, x, p):
        xp = self.xp
        mean = x.mean(axis=-1, keepdims=True)
        var = xp.maximum(0.0, (x * x).mean(axis=-1, keepdims=True) - mean * mean)
        y = (x - mean) * (1.0 / xp.sqrt(var + self.dtype.type(LAYER_NORM_EPS)))
        return y * self.asarray(p["scale"]).reshape(-1) + self.asarray(p["bias"]).reshape(-1)

    def dense(self, x, p):
        return x @ self.asarray(p["kernel"]) + self.asarray(p["bias"])

    def patch_conv(self, images, p):
        """(B, H, W, C) -> (B, rows, cols, D): a VALID conv with stride = kernel size."""
        kernel = self.asarray(p["kernel"])  # (P, P, C, D)
        if self.backend == "jax":
            out = self.jax.lax.conv_general_dilated(
                images, kernel, window_strides=kernel.shape[:2], padding="VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        else:
            b, h, w, c = images.shape
            ph, pw = kernel.shape[:2]
            patches = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
            out = np.einsum("bijpqc,pqcd->bijd", patches, kernel, optimize=True)
        return out + self.asarray(p["bias"])


def _same_padding(size, kernel, stride):
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_same(ops, x, kernel, stride):
    """(B, H, W, C) conv with an HWIO kernel, TensorFlow/Flax "SAME" padding, no bias."""
    if ops.backend == "jax":
        return ops.jax.lax.conv_general_dilated(
            x, kernel, window_strides=(stride, stride), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    kh, kw = kernel.shape[:2]
    pad = [(0, 0), _same_padding(x.shape[1], kh, stride), _same_padding(x.shape[2], kw, stride), (0, 0)]
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad), (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("bhwcij,ijco->bhwo", windows, kernel, optimize=True)


def _max_pool_same(ops, x, window=3, stride=2):
    """Flax `nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")`: padding never wins the max."""
    if ops.backend == "jax":
        lax = ops.jax.lax
        return lax.reduce_window(x, -np.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), "SAME")
    pad = [(0, 0), _same_padding(x.shape[1], window, stride), _same_padding(x.shape[2], window, stride), (0, 0)]
    padded = np.pad(x, pad, constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (window, window), axis=(1, 2))[:, ::stride, ::stride]
    return windows.max(axis=(-2, -1))


def _std_conv(ops, x, p, stride=1):
    """vit_jax's StdConv: the kernel standardised over (kh, kw, in) as (w - mean) / (std + 1e-5), then a SAME conv."""
    xp = ops.xp
    w = ops.asarray(p["kernel"])
    w = w - w.mean(axis=(0, 1, 2))
    w = w / (xp.sqrt((w * w).mean(axis=(0, 1, 2))) + ops.dtype.type(1e-5))
    return _conv_same(ops, x, w, stride)


def _group_norm(ops, x, p, groups=32, eps=1e-6):
    """Flax GroupNorm (32 groups, eps 1e-6, variance as E[x^2] - E[x]^2) on (B, H, W, C)."""
    xp = ops.xp
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = xp.maximum(0.0, (g * g).mean(axis=(1, 2, 4), keepdims=True) - mean * mean)
    y = ((g - mean) * (1.0 / xp.sqrt(var + ops.dtype.type(eps)))).reshape(b, h, w, c)
    return y * ops.asarray(p["scale"]).reshape(-1) + ops.asarray(p["bias"]).reshape(-1)


def _relu(ops, x):
    return ops.xp.maximum(x, 0.0)


def _resnet(ops, x, params):
    """vit_jax's hybrid root: StdConv 7x7/2, GroupNorm, ReLU, SAME max-pool 3x3/2, then post-activation bottleneck
    stages `block1`, `block2`, ... (first stride 1, then 2)."""
    x = _relu(ops, _group_norm(ops, _std_conv(ops, x, params["conv_root"], stride=2), params["gn_root"]))
    x = _max_pool_same(ops, x)
    stage = 1
    while f"block{stage}" in params:
        block = params[f"block{stage}"]
        for unit in range(1, len(block) + 1):
            p = block[f"unit{unit}"]
            stride = 2 if (unit == 1 and stage > 1) else 1
            residual = x
            if "conv_proj" in p:
                residual = _group_norm(ops, _std_conv(ops, x, p["conv_proj"], stride), p["gn_proj"])
            y = _relu(ops, _group_norm(ops, _std_conv(ops, x, p["conv1"]), p["gn1"]))
            y = _relu(ops, _group_norm(ops, _std_conv(ops, y, p["conv2"], stride), p["gn2"]))
            y = _group_norm(ops, _std_conv(ops, y, p["conv3"]), p["gn3"])
            x = _relu(ops, residual + y)
        stage += 1
    return x


def _attention(ops, inputs_q, inputs_kv, p):
    """Flax MultiHeadDotProductAttention: (B, Q, D), (B, K, D) -> (B, Q, D)."""

    def project(x, name):  # DenseGeneral to (heads, head_dim): (B, T, D) -> (B, heads, T, head_dim)
        kernel = ops.asarray(p[name]["kernel"])  # (D, heads, head_dim)
        y = x @ kernel.reshape(kernel.shape[0], -1) + ops.asarray(p[name]["bias"]).reshape(-1)
        return y.reshape(*y.shape[:2], *kernel.shape[1:]).transpose(0, 2, 1, 3)

    q, k, v = project(inputs_q, "query"), project(inputs_kv, "key"), project(inputs_kv, "value")
    q = q / ops.dtype.type(math.sqrt(q.shape[-1]))  # Flax scales the query before the dot product
    weights = ops.softmax(q @ k.transpose(0, 1, 3, 2))  # (B, heads, Q, K)
    out = (weights @ v).transpose(0, 2, 1, 3)  # (B, Q, heads, head_dim)
    kernel = ops.asarray(p["out"]["kernel"])  # (heads, head_dim, D)
    out = out.reshape(*out.shape[:2], -1) @ kernel.reshape(-1, kernel.shape[-1])
    return out + ops.asarray(p["out"]["bias"])


def _mlp(ops, x, p):
    return ops.dense(ops.gelu(ops.dense(x, p["Dense_0"])), p["Dense_1"])


def _block_modules(block):
    """The block's (norm1, attention, norm2, mlp) sub-trees, whichever Flax numbering wrote them."""
    attention = block.get("MultiHeadDotProductAttention_1") or block["MultiHeadDotProductAttention_0"]
    norm2 = block.get("LayerNorm_2") or block["LayerNorm_1"]
    mlp = block.get("MlpBlock_3") or block["MlpBlock_0"]
    return block["LayerNorm_0"], attention, norm2, mlp


def _encoder_block(ops, x, block):
    norm1, attention, norm2, mlp = _block_modules(block)
    y = ops.layer_norm(x, norm1)
    x = x + _attention(ops, y, y, attention)
    return x + _mlp(ops, ops.layer_norm(x, norm2), mlp)


def _sincos_2d(rows, cols, width, temperature=10_000.0):
    """big_vision's `posemb_sincos_2d`: (1, rows * cols, width), [sin(x w), cos(x w), sin(y w), cos(y w)]."""
    y, x = np.mgrid[:rows, :cols]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


def _slice_tree(tree, index):
    return {k: _slice_tree(v, index) if isinstance(v, dict) else v[index] for k, v in tree.items()}


def forward(flat_params, images, backend="jax", prefix="", dtype=np.float32):
    """The original model's outputs for `images` (B, H, W, C): dict with `logits` (None without a head),
    `pre_logits` (the pooled representation, after the tanh layer when there is one) and `encoded`. `dtype`: float64
    with the NumPy backend gives a rounding-free reference for ill-conditioned (e.g. random) weights."""
    ops = _Ops(backend, dtype)
    params = _tree(flat_params, prefix)
    transformer = params["Transformer"]
    x = ops.asarray(images)
    if "conv_root" in params:  # hybrid: the patches are cut from the ResNet's feature map
        x = _resnet(ops, x, params)
    x = ops.patch_conv(x, params["embedding"])  # (B, rows, cols, D)
    batch, rows, cols, width = x.shape
    x = x.reshape(batch, rows * cols, width)
    xp = ops.xp
    if "posembed_input" in transformer:
        # vit_jax: the class token is prepended, then the whole table added.
        if "cls" in params:
            x = xp.concatenate([xp.broadcast_to(ops.asarray(params["cls"]), (batch, 1, width)), x], axis=1)
        x = x + ops.asarray(transformer["posembed_input"]["pos_embedding"])
    else:
        # big_vision: the table is added to the patches, then the class token prepended (no position for it).
        table = params.get("pos_embedding", transformer.get("pos_embedding"))
        table = ops.asarray(_sincos_2d(rows, cols, width) if table is None else table)  # posemb="sincos2d"
        if table.shape[1] == rows * cols + 1:  # old files: the class token's row first
            x = xp.concatenate([xp.broadcast_to(ops.asarray(params["cls"]), (batch, 1, width)), x], axis=1) + table
        else:
            x = x + table
            if "cls" in params:
                x = xp.concatenate([xp.broadcast_to(ops.asarray(params["cls"]), (batch, 1, width)), x], axis=1)
    if "encoderblock" in transformer:  # scanned: one stacked array per parameter
        depth = np.asarray(transformer["encoderblock"]["LayerNorm_0"]["scale"]).shape[0]
        blocks = [_slice_tree(transformer["encoderblock"], i) for i in range(depth)]
    else:
        depth = len([k for k in transformer if k.startswith("encoderblock_")])
        blocks = [transformer[f"encoderblock_{i}"] for i in range(depth)]
    for block in blocks:
        x = _encoder_block(ops, x, block)
    encoded = ops.layer_norm(x, transformer["encoder_norm"])
    if "MAPHead_0" in params:
        head = params["MAPHead_0"]
        probe = xp.broadcast_to(ops.asarray(head["probe"]), (batch, 1, width))
        y = _attention(ops, probe, encoded, head["MultiHeadDotProductAttention_0"])
        y = y + _mlp(ops, ops.layer_norm(y, head["LayerNorm_0"]), head["MlpBlock_0"])
        pooled = y[:, 0]
    elif "cls" in params:
        pooled = encoded[:, 0]
    else:
        pooled = encoded.mean(axis=1)
    if "pre_logits" in params and "kernel" in params["pre_logits"]:
        pooled = xp.tanh(ops.dense(pooled, params["pre_logits"]))
    logits = ops.dense(pooled, params["head"]) if "head" in params else None
    as_numpy = lambda a: None if a is None else np.asarray(a, dtype=ops.dtype)  # noqa: E731
    return {"logits": as_numpy(logits), "pre_logits": as_numpy(pooled), "encoded": as_numpy(encoded)}


def load_npz(path):
    """All arrays of an `.npz` (bfloat16 "V2" arrays widened to float32)."""
    out = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            array = archive[key]
            if array.dtype.kind == "V" and array.dtype.itemsize == 2:
                array = (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            out[key] = array
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="Reference ViT forward from an .npz checkpoint.")
    parser.add_argument("checkpoint")
    parser.add_argument("images", help=".npy (B, H, W, C) float32")
    parser.add_argument("output", help=".npz to write logits / pre_logits / encoded to")
    parser.add_argument("--backend", default="jax", choices=("jax", "numpy"))
    parser.add_argument("--prefix", default="")
    args = parser.parse_args(argv)
    try:
        params = load_npz(args.checkpoint)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        print(f"{args.checkpoint}: {error}", file=sys.stderr)
        return 2
    outputs = forward(params, np.load(args.images), backend=args.backend, prefix=args.prefix)
    np.savez(args.output, **{k: v for k, v in outputs.items() if v is not None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
