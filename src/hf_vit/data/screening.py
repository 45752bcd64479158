"""Unreadable and corrupt images, found before training (never mid-epoch): decode checks, screening of a split,
and the filter that checks streamed rows as they arrive."""

import io
from concurrent.futures import ThreadPoolExecutor

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


def find_bad_images(dataset, num_threads: int = 4) -> list[tuple[int, str, str]]:
    """[(row, path or 'row N', reason), ...] for every row of `dataset` whose `image` does not decode."""
    raw = dataset.cast_column("image", ImageFeature(decode=False)).select_columns(["image"])
    bad, offset = [], 0
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:  # PIL decoders release the GIL
        for chunk in raw.iter(batch_size=512):
            values = chunk["image"]
            for i, reason in enumerate(pool.map(check_image, values)):
                if reason is not None:
                    where = (values[i] or {}).get("path") or f"row {offset + i}"
                    bad.append((offset + i, where, reason))
            offset += len(values)
    return bad


class BadImageError(ValueError):
    """Raised with `on_bad_image='fail'`: lists every unreadable image."""


def drop_bad_images(split_name, dataset, on_bad_image, skipped, num_threads):
    bad = find_bad_images(dataset, num_threads)
    if not bad:
        return dataset
    listing = "\n".join(f"  {where}: {reason}" for _, where, reason in bad)
    if on_bad_image == "fail":
        raise BadImageError(
            f"{len(bad)} unreadable image(s) in the {split_name!r} split (on_bad_image='fail'):\n{listing}\n"
            "Fix or remove them, or pass `--on_bad_image skip` to train without them."
        )
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


