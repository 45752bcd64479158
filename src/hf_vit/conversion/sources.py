"""Readers that hand out a checkpoint's arrays one at a time: `.npz` archives (read member by member, never whole)
and PyTorch state dicts (safetensors read lazily; pickles only on explicit opt-in)."""

from __future__ import annotations

import json
import os
import zipfile
import zlib

import numpy as np
import torch
from safetensors import safe_open

from .keymap import ConversionError


def describe_file(path) -> str:
    """A short guess of what a file is, for error messages ("a safetensors file", "a PyTorch pickle", ...)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(os.listdir(path))[:6]
        return f"a directory (holding {', '.join(names) or 'nothing'})"
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as error:
        return f"an unreadable file ({error})"
    if head.startswith(b"\x93NUMPY"):
        return "a single NumPy .npy array (not an .npz archive of named arrays)"
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a zip archive that is truncated or damaged"
        if any(n.endswith("data.pkl") for n in names):
            return "a PyTorch checkpoint written by torch.save (a pickle in a zip archive)"
        if any(n.endswith(".npy") for n in names):
            return "an .npz archive"
        return f"a zip archive without .npy members (e.g. {', '.join(names[:3])})"
    if head[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05"):
        return "a Python pickle (e.g. an old torch.save checkpoint)"
    if not head:
        return "an empty file"
    return "a file of unknown format"


def _bfloat16_to_float32(array: np.ndarray) -> np.ndarray:
    # NOTE: numpy has no bfloat16; JAX writes bf16 arrays into .npz as 2-byte void ("V2"). Widen the bits to float32.
    bits = array.view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


class NpzSource:
    """An `.npz` archive read member by member: `keys()`, `shape(key)`, `read(key)` (one array in memory at a time).

    Works for stored (`np.savez`) and deflated (`np.savez_compressed`) archives alike. A truncated or damaged file
    raises `ConversionError` naming the file (and the member, when the damage is inside one).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file.")
        if os.path.isdir(self.path):
            raise ConversionError(f"{self.path} is {describe_file(self.path)}, not an .npz file.")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as error:
            raise ConversionError(
                f"{self.path} is not a readable .npz archive: it is {describe_file(self.path)} ({error}). "
                "Expected the original JAX checkpoint format (a NumPy .npz of named arrays)."
            ) from None
        self._members = {name[: -len(".npy")]: name for name in self._zip.namelist() if name.endswith(".npy")}
        if not self._members:
            self._zip.close()
            raise ConversionError(
                f"{self.path} holds no NumPy arrays: it is {describe_file(self.path)}. Expected the original JAX "
                "checkpoint format (an .npz of named arrays); a PyTorch state dict needs --from timm or --from "
                "transformers."
            )
        self._headers = {}

    def keys(self):
        return self._members.keys()

    def __contains__(self, key) -> bool:
        return key in self._members

    def _open(self, key):
        try:
            return self._zip.open(self._members[key])
        except KeyError:
            raise ConversionError(f"{self.path}: no array named {key!r}.") from None

    def _damaged(self, key, error) -> ConversionError:
        return ConversionError(
            f"{self.path}: the array {key!r} cannot be read; the file is truncated or damaged ({type(error).__name__}: "
            f"{error}). Download or copy it again."
        )

    def shape(self, key) -> tuple[int, ...]:
        if key not in self._headers:
            try:
                with self._open(key) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as error:
                raise self._damaged(key, error) from None
            self._headers[key] = (tuple(shape), dtype)
        return self._headers[key][0]

    def read(self, key) -> np.ndarray:
        try:
            with self._open(key) as f:
                array = np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as error:
            raise self._damaged(key, error) from None
        if array.dtype.kind == "V" and array.dtype.itemsize == 2:
            array = _bfloat16_to_float32(array)
        return array

    def close(self):
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StateDictSource:
    """A PyTorch state dict: a dict of tensors, a safetensors file (read lazily), a folder of safetensors (single or
    sharded), or a pickle checkpoint (`.pth`/`.bin`/`.pt`, read with `weights_only=True`, only with
    `allow_pickle=True`). `metadata` holds the folder's `config.json` when there is one."""

    def __init__(self, source, allow_pickle: bool = False, prefix: str = ""):
        self.metadata = {}
        self._tensors, self._files = None, {}
        if isinstance(source, dict):
            self.path = "<state dict>"
            self._tensors = dict(source)
        else:
            self.path = os.fspath(source)
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"{self.path}: no such file or directory.")
            if os.path.isdir(self.path):
                self._open_folder(allow_pickle)
            else:
                self._open_file(self.path, allow_pickle)
        if prefix:
            self._strip_prefix(prefix)

    # -- opening ----------------------------------------------------------------------------------------------------

    def _open_folder(self, allow_pickle):
        config = os.path.join(self.path, "config.json")
        if os.path.isfile(config):
            with open(config) as f:
                self.metadata = json.load(f)
        single = os.path.join(self.path, "model.safetensors")
        index = os.path.join(self.path, "model.safetensors.index.json")
        if os.path.isfile(single):
            self._open_file(single, allow_pickle)
        elif os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            for shard in shards:
                self._open_safetensors(os.path.join(self.path, shard))
        else:
            names = ("pytorch_model.bin", "open_clip_pytorch_model.bin")
            pickles = [n for n in names if os.path.isfile(os.path.join(self.path, n))]
            if not pickles:
                raise ConversionError(
                    f"{self.path} holds no weights: expected model.safetensors, model.safetensors.index.json or "
                    f"pytorch_model.bin; it is {describe_file(self.path)}."
                )
            self._open_file(os.path.join(self.path, pickles[0]), allow_pickle)

    def _open_file(self, path, allow_pickle):
        kind = describe_file(path)
        if kind == "a safetensors file":
            self._open_safetensors(path)
        elif "pickle" in kind or "torch.save" in kind:
            if not allow_pickle:
                raise ConversionError(
                    f"{path} is {kind}. Loading pickles runs code from the file, so it is an explicit opt-in: pass "
                    "allow_pickle=True (CLI: --allow-pickle) if you trust its source, or convert it to safetensors."
                )
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # torch raises many types for damaged pickles
                reason = f"{type(error).__name__}: {error}"
                raise ConversionError(f"{path}: cannot read this PyTorch checkpoint ({reason}).") from None
            for wrapper in ("model", "state_dict", "model_ema"):
                if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
                    loaded = loaded[wrapper]
                    break
            if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
                raise ConversionError(f"{path}: expected a state dict (names -> tensors), found {type(loaded).__name__}.")
            self._tensors = dict(loaded)
        else:
            raise ConversionError(
                f"{path} is {kind}; expected a PyTorch state dict (safetensors, or a .pth/.bin pickle with "
                "--allow-pickle). An original JAX checkpoint (.npz) needs --from npz."
            )

    def _open_safetensors(self, path):

        try:
            handle = safe_open(path, framework="pt")
            names = list(handle.keys())
        except Exception as error:  # safetensors raises its own error types for damaged headers
            raise ConversionError(f"{path}: not a readable safetensors file; truncated or damaged? ({error})") from None
        for name in names:
            self._files[name] = (handle, path, name)

    def _strip_prefix(self, prefix):
        # Wrapped state dicts (e.g. "module." from DDP): the rules see the names without the prefix.
        def strip(key):
            return key[len(prefix) :] if key.startswith(prefix) else key

        if self._tensors is not None:
            self._tensors = {strip(k): v for k, v in self._tensors.items()}
        self._files = {strip(k): v for k, v in self._files.items()}

    # -- reading ----------------------------------------------------------------------------------------------------

    def keys(self):
        return self._tensors.keys() if self._tensors is not None else self._files.keys()

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def shape(self, key) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        handle, _, name = self._files[key]
        return tuple(handle.get_slice(name).get_shape())

    def read(self, key) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        handle, path, name = self._files[key]
        try:
            return handle.get_tensor(name)
        except Exception as error:
            raise ConversionError(f"{path}: the tensor {key!r} cannot be read; truncated or damaged? ({error})") from None




class PrefixedView:
    """The arrays of `source` whose keys start with `prefix` (full names kept): a checkpoint's parameters without
    what else the file holds (optimizer state, a text tower)."""

    def __init__(self, source, prefix: str):
        self.source, self.prefix, self.path = source, prefix, source.path
        self._keys = [k for k in source.keys() if k.startswith(prefix)]

    def keys(self):
        return self._keys

    def ignored_keys(self):
        return [k for k in self.source.keys() if not k.startswith(self.prefix)]

    def __contains__(self, key) -> bool:
        return key.startswith(self.prefix) and key in self.source

    def shape(self, key):
        return self.source.shape(key)

    def read(self, key):
        return self.source.read(key)


__all__ = ["NpzSource", "PrefixedView", "StateDictSource", "describe_file"]
