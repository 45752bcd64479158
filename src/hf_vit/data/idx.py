"""IDX files (the MNIST / Fashion-MNIST format): reading, validating and finding them in a folder.

Format (LeCun et al.): a big-endian header `0x00 0x00 <type code> <number of dimensions>`, one big-endian uint32 per
dimension, then the values in C order. Files may be gzip-compressed (`.gz`), as Debian's `dataset-fashion-mnist`
ships them (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
`t10k-labels-idx1-ubyte.gz`).
"""

import gzip
import os
import struct

import numpy as np


# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Split name -> (images file stem, labels file stem), the names MNIST and Fashion-MNIST share.
IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The class names of Fashion-MNIST (Xiao et al. 2017), in label order.
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally .gz) -> numpy array of its shape; a `ValueError` naming the file if it is malformed."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read this IDX file ({error}).") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (the first two bytes must be zero; got {data[:4]!r}).")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX type code 0x{type_code:02x}; allowed are "
            f"{[f'0x{code:02x}' for code in _IDX_DTYPES]}."
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions declared, {len(data)} bytes).")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: the header declares shape {shape} ({expected} bytes of data) but the file holds "
            f"{len(data) - header} bytes; the file is truncated or corrupt."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_files(folder: str) -> dict[str, tuple[str, str]]:
    """{split: (images path, labels path)} for the MNIST-style files present in `folder` (plain or .gz)."""
    found = {}
    for split, stems in IDX_SPLITS.items():
        paths = []
        for stem in stems:
            candidates = [os.path.join(folder, stem + suffix) for suffix in ("", ".gz")]
            existing = [c for c in candidates if os.path.isfile(c)]
            paths.append(existing[0] if existing else None)
        if all(paths):
            found[split] = tuple(paths)
        elif any(paths):
            missing = [stem for stem, path in zip(stems, paths) if path is None]
            raise ValueError(f"{folder}: the {split!r} IDX split is incomplete; missing {missing} (plain or .gz).")
    return found


def load_idx_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 images and (N,) int64 labels of one split, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}.")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected labels of shape (N,), got shape {labels.shape}.")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels.")
    return images, labels.astype(np.int64)
