"""Unreadable and corrupt images, found before training (never mid-epoch): decode checks, screening of a split (once:
the result is cached per data set, see `screening_key`), and the filter that checks streamed rows as they arrive.

The cache: one small JSON file per screened split under `cache_dir()/screening/` ($HF_VIT_CACHE, else
$XDG_CACHE_HOME/hf_vit, else ~/.cache/hf_vit), named by a key that changes whenever an image can have changed: for
image files, every row's path, size and modification time; for images stored inside the data set (Hub data sets,
Parquet / Arrow files), the data set's `datasets` fingerprint (which follows its files and revision). The Pillow
version and the check's own version are part of the key too. Deleting the folder forces a new check.
"""

import contextlib
import hashlib
import io
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import PIL
import PIL.Image
from datasets import Image as ImageFeature


ON_BAD_IMAGE = ("skip", "fail")


def check_image(value) -> str | None:
    """None when an `Image(decode=False)` value ({"bytes", "path"}) decodes fully, else the reason it does not."""
    if value is None:
        return "missing image"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        if source is None:
            return "no bytes and no path"
        with PIL.Image.open(source) as image:
            if image.width < 1 or image.height < 1:
                return f"empty image ({image.width}x{image.height})"
            image.draft(image.mode, (64, 64))  # JPEG: decode at reduced size; truncation is still detected
            image.load()
    except Exception as error:  # noqa: BLE001  (any decoder error makes the image unusable)
        return f"{type(error).__name__}: {error}"
    return None


def find_bad_images(dataset, num_threads: int = 4, progress: str | None = None) -> list[tuple[int, str, str]]:
    """[(row, path or 'row N', reason), ...] for every row of `dataset` whose `image` does not decode. `progress`: a
    description for a progress bar (None: no bar)."""
    raw = dataset.cast_column("image", ImageFeature(decode=False)).select_columns(["image"])
    bad, offset = [], 0
    bar = _progress_bar(len(raw), progress)
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool, bar:  # PIL decoders release the GIL
        for chunk in raw.iter(batch_size=512):
            values = chunk["image"]
            for i, reason in enumerate(pool.map(check_image, values)):
                if reason is not None:
                    where = (values[i] or {}).get("path") or f"row {offset + i}"
                    bad.append((offset + i, where, reason))
            offset += len(values)
            bar.update(len(values))
    return bad


def _progress_bar(total: int, description: str | None):
    if description is None:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="image", mininterval=1.0, dynamic_ncols=True)


class _NoProgress(contextlib.nullcontext):
    def update(self, count):
        pass


class BadImageError(ValueError):
    """Raised with `on_bad_image='fail'`: lists every unreadable image."""


# ---------------------------------------------------------------------------------------------------------------------
# The screening cache

SCREENING_VERSION = 1  # bump when `check_image` changes what it accepts: older results are then ignored
CACHE_ENV = "HF_VIT_CACHE"


def cache_dir() -> str:
    """Where hf_vit keeps what it computes once per data set: $HF_VIT_CACHE, else $XDG_CACHE_HOME/hf_vit, else
    ~/.cache/hf_vit."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hf_vit")


def screening_key(dataset) -> str:
    """
    A hex key for the screening of `dataset` that changes whenever one of its images can have changed:
    - images stored as files (image folders): every row's path, file size and modification time (ns), in row order,
      so a changed, added, removed or reordered file gives another key (a missing file counts as size -1);
    - images stored in the data set (their bytes in Arrow / Parquet: Hub data sets): the data set's fingerprint,
      which `datasets` derives from its files (and their revision) and from every transform applied since.
    Both also hold the number of rows, the Pillow version and `SCREENING_VERSION`.
    """
    import pyarrow.compute as pc

    header = f"hf_vit-screening {SCREENING_VERSION} pillow {PIL.__version__} rows {len(dataset)}\n"
    digest = hashlib.sha256(header.encode())
    raw = dataset.cast_column("image", ImageFeature(decode=False)).select_columns(["image"]).with_format("arrow")
    chunks = list(raw.iter(batch_size=65536))
    holds_bytes = any(pc.struct_field(chunk.column("image"), "bytes").null_count < chunk.num_rows
                      for chunk in chunks)
    if holds_bytes:
        digest.update(f"fingerprint {dataset._fingerprint}\n".encode())
        return digest.hexdigest()
    for chunk in chunks:
        for path in pc.struct_field(chunk.column("image"), "path").to_pylist():
            try:
                stat = os.stat(path) if path else None
            except OSError:
                stat = None
            size, mtime = (stat.st_size, stat.st_mtime_ns) if stat is not None else (-1, -1)
            digest.update(f"{path}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()


def _cache_path(key: str) -> str:
    return os.path.join(cache_dir(), "screening", f"{key[:40]}.json")


def _read_cached(key: str, num_rows: int):
    """The cached bad-image list for `key`, or None (absent, unreadable or not this data set's)."""
    try:
        with open(_cache_path(key)) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("key") != key or cached.get("num_rows") != num_rows:
        return None
    return [(int(row), str(where), str(reason)) for row, where, reason in cached.get("bad_images", [])]


def _write_cached(key: str, num_rows: int, split_name: str, bad) -> str | None:
    """Store the result (atomically: a concurrent reader sees the old file or the new one); the path, or None when
    the cache folder is not writable (the screening then simply runs again next time)."""
    path = _cache_path(key)
    payload = {"key": key, "version": SCREENING_VERSION, "split": split_name, "num_rows": num_rows,
               "bad_images": [list(entry) for entry in bad]}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(temporary, path)
    except OSError:
        return None
    return path


@contextlib.contextmanager
def _cache_lock(key: str):
    """A lock per data set (a lock file beside its result): one process checks it while the others, of this run or of
    another, wait and then read the result. No lock when the cache folder cannot be written."""
    from filelock import FileLock

    path = _cache_path(key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = FileLock(path[: -len(".json")] + ".lock")
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def screen_split(split_name, dataset, on_bad_image, skipped, num_threads, show=True, use_cache=True):
    """
    `dataset` without its unreadable images (`on_bad_image='skip'`, each recorded in `skipped`) or a
    `BadImageError` listing them all ('fail'). The check runs once per data set: its result is cached (module
    docstring) and reused by later runs and by the other processes of this one; while one process checks a data set,
    the others wait for its result. The process that checks shows a progress bar; `show`: this process prints the
    outcome.
    """
    bad = None
    key = screening_key(dataset) if use_cache else None
    with _cache_lock(key) if key is not None else contextlib.nullcontext():
        if key is not None:
            bad = _read_cached(key, len(dataset))
        if bad is None:
            bad = find_bad_images(dataset, num_threads, progress=f"checking the {split_name!r} images")
            if key is not None:
                written = _write_cached(key, len(dataset), split_name, bad)
                if show and written is None:
                    print(f"data: could not write the image check's result under {cache_dir()} (set {CACHE_ENV} to "
                          "a writable folder to reuse it)")
    if not bad:
        return dataset
    listing = "\n".join(f"  {where}: {reason}" for _, where, reason in bad)
    if on_bad_image == "fail":
        raise BadImageError(
            f"{len(bad)} unreadable image(s) in the {split_name!r} split (on_bad_image='fail'):\n{listing}\n"
            "Fix or remove them, or pass `--on_bad_image skip` to train without them."
        )
    if show:
        first = ", ".join(where for _, where, _ in bad[:5])
        print(f"data: skipping {len(bad)} unreadable image(s) in the {split_name!r} split (first: {first})")
    skipped.extend((split_name, row, where, reason) for row, where, reason in bad)
    bad_rows = {row for row, _, _ in bad}
    return dataset.select([i for i in range(len(dataset)) if i not in bad_rows])


class StreamImageFilter:
    """Streaming: rows are checked as they arrive (a stream cannot be scanned up front); bad ones skipped or fatal."""

    def __init__(self, split_name, on_bad_image):
        self.split_name, self.on_bad_image = split_name, on_bad_image

    def __call__(self, example) -> bool:
        reason = check_image(example["image"])
        if reason is None:
            return True
        where = (example["image"] or {}).get("path") or "a streamed row"
        if self.on_bad_image == "fail":
            raise BadImageError(f"unreadable image in the streamed {self.split_name!r} split: {where}: {reason}")
        return False


