"""Image-classification data sets: one entry point for every source, fixed splits and the bad-image screening (ViT
paper, section 4.1: the paper's data sets come from TFDS / the Hub; here any of the sources below).

Sources (`DataArguments.dataset`):
- `digits`: scikit-learn's 1,797 real 8x8 scans of handwritten digits, shipped inside scikit-learn (offline).
- a folder of IDX files (MNIST / Fashion-MNIST layout, plain or .gz; e.g. Debian's `dataset-fashion-mnist`).
- a folder of images in class sub-folders (`imagefolder`; optional `train/`, `test/`, `validation/` levels).
- a Hub dataset id (`owner/name`, optionally `dataset_config`), with `streaming=True` for data larger than the disk.
Every source becomes `datasets` splits with an `image` and a `label` column, so the same data also feeds
`transformers.Trainer` (see `TrainerTransform`).
"""

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Dataset, Features, load_dataset
from datasets import Image as ImageFeature

from .arguments import DataArguments
from .idx import FASHION_MNIST_LABELS, find_idx_files, load_idx_split
from .screening import ON_BAD_IMAGE, StreamImageFilter, screen_split


SOURCE_KINDS = ("digits", "idx", "imagefolder", "hub")
_IMAGE_COLUMNS = ("image", "img", "pixel_values", "png", "jpg", "jpeg")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "cls")


@dataclass
class ImageClassificationData:
    """
    Train / validation / test splits (`datasets.Dataset`, or `IterableDataset` when streaming; validation may be
    None) with an `image` and a `label` column, the label names, and what was found on the way.
    """

    train: object
    validation: object
    test: object
    label_names: list
    name: str
    kind: str = "digits"
    streaming: bool = False
    skipped_images: list = field(default_factory=list)  # [(split, row, where, reason), ...]

    @property
    def id2label(self) -> dict:
        return dict(enumerate(self.label_names))

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# ---------------------------------------------------------------------------------------------------------------------
# Which source a `dataset` string names


def resolve_source_kind(dataset: str, dataset_format: str = "auto") -> str:
    """'digits' | 'idx' | 'imagefolder' | 'hub' for a `dataset` value (a name, a folder or a Hub id)."""
    if dataset_format != "auto":
        if dataset_format not in SOURCE_KINDS:
            raise ValueError(f"`dataset_format` must be 'auto' or one of {list(SOURCE_KINDS)}, got {dataset_format!r}.")
        return dataset_format
    if dataset == "digits":
        return "digits"
    if os.path.isdir(dataset):
        return "idx" if find_idx_files(dataset) else "imagefolder"
    if os.path.exists(dataset):
        raise ValueError(f"`dataset` {dataset!r} is a file; give a folder (IDX files or class sub-folders), 'digits' or a Hub id.")
    if dataset.startswith((".", "/", "~")) or dataset.count("/") > 1 or os.sep in dataset.replace("/", ""):
        raise FileNotFoundError(f"`dataset` folder {dataset!r} does not exist.")
    return "hub"


# ---------------------------------------------------------------------------------------------------------------------
# Sources -> {split: dataset with image/label columns}, label names


def _features(label_names):
    return Features({"image": ImageFeature(), "label": ClassLabel(names=list(label_names))})


def _netpbm_images(pixels: np.ndarray) -> list[dict]:
    """(N, H, W) uint8 grayscale -> `Image` feature values holding binary PGM files.

    NOTE: PGM instead of the PNG `datasets` would write: the same pixels, but writing is a header plus the raw bytes
    (no compression pass over tens of thousands of images at load time) and decoding is faster.
    """
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 images, got {pixels.dtype} {pixels.shape}")
    header = f"P5\n{pixels.shape[2]} {pixels.shape[1]}\n255\n".encode()
    return [{"bytes": header + image.tobytes(), "path": None} for image in pixels]


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are ink intensities 0..16; as 8-bit grayscale images (0 = paper, 255 = full ink).
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    names = [str(i) for i in range(10)]
    full = Dataset.from_dict({"image": _netpbm_images(pixels), "label": digits.target.tolist()}, features=_features(names))
    return {"train": full}, names


def _load_idx(folder, label_names=None):
    files = find_idx_files(folder)
    if "train" not in files:
        raise ValueError(f"{folder}: no training IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]).")
    arrays = {split: load_idx_split(*paths) for split, paths in files.items()}
    num_classes = int(max(labels.max() for _, labels in arrays.values())) + 1
    if not label_names:
        # The Debian package's folder is called fashion-mnist; MNIST's digits are their own names.
        fashion = "fashion" in os.path.basename(os.path.normpath(folder)).lower() and num_classes == 10
        label_names = list(FASHION_MNIST_LABELS) if fashion else [str(i) for i in range(num_classes)]
    if len(label_names) < num_classes:
        raise ValueError(f"`label_names` has {len(label_names)} names but {folder} holds labels up to {num_classes - 1}.")
    splits = {
        split: Dataset.from_dict({"image": _netpbm_images(images), "label": labels.tolist()}, features=_features(label_names))
        for split, (images, labels) in arrays.items()
    }
    return splits, list(label_names)


def _load_with_datasets(kind, data_args):
    if kind == "imagefolder":
        loaded = load_dataset("imagefolder", data_dir=data_args.dataset, streaming=data_args.streaming)
    else:
        loaded = load_dataset(data_args.dataset, data_args.dataset_config, streaming=data_args.streaming)
    splits = dict(loaded)
    if not splits:
        raise ValueError(f"`dataset` {data_args.dataset!r} has no splits.")
    first = next(iter(splits.values()))
    image_column = _pick_column(first, data_args.image_column, _IMAGE_COLUMNS, "image", data_args.dataset)
    label_column = _pick_column(first, data_args.label_column, _LABEL_COLUMNS, "label", data_args.dataset)
    renamed = {}
    for name, split in splits.items():
        keep = [image_column, label_column]
        split = split.select_columns(keep)
        if image_column != "image":
            split = split.rename_column(image_column, "image")
        if label_column != "label":
            split = split.rename_column(label_column, "label")
        renamed[name] = split
    label_feature = first.features[label_column] if first.features is not None else None
    if hasattr(label_feature, "names"):
        label_names = list(label_feature.names)
    elif data_args.label_names:
        label_names = list(data_args.label_names)
    elif data_args.streaming:
        raise ValueError(
            f"{data_args.dataset}: column {label_column!r} has no class names and a stream cannot be scanned for them; "
            "pass `label_names`."
        )
    else:
        values = sorted(set(renamed["train" if "train" in renamed else next(iter(renamed))]["label"]))
        if values != list(range(len(values))):
            raise ValueError(
                f"{data_args.dataset}: labels in column {label_column!r} must be 0..K-1 integers or a ClassLabel; "
                f"got values {values[:10]}."
            )
        label_names = [str(v) for v in values]
    return renamed, label_names


def _pick_column(dataset, requested, candidates, what, source):
    columns = list(dataset.column_names or (dataset.features or {}).keys())
    if requested != "auto":
        if requested not in columns:
            raise ValueError(f"{source}: `{what}_column` {requested!r} is not a column; columns are {columns}.")
        return requested
    features = dataset.features or {}
    wanted = ImageFeature if what == "image" else ClassLabel
    typed = [name for name in columns if isinstance(features.get(name), wanted)]
    if typed:
        return typed[0]
    named = [name for name in candidates if name in columns]
    if named:
        return named[0]
    raise ValueError(f"{source}: cannot tell which column holds the {what}; columns are {columns}. Pass `{what}_column`.")


# ---------------------------------------------------------------------------------------------------------------------
# Splits


def _stratified_split(dataset, fraction, seed, what):
    """(rest, held-out) with `fraction` of the rows held out, stratified by label, the same on every machine."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`{what}` must be in (0, 1), got {fraction}.")
    labels = np.asarray(dataset["label"])
    counts = np.bincount(labels)
    classes = int((counts > 0).sum())
    held_out = int(np.ceil(fraction * len(labels)))
    # Stratify when every class can appear on both sides; tiny data sets fall back to a plain seeded split.
    can_stratify = counts[counts > 0].min() >= 2 and min(held_out, len(labels) - held_out) >= classes
    stratify = labels if can_stratify else None
    rest, held = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=stratify)
    return dataset.select(np.sort(rest)), dataset.select(np.sort(held))


def _pick_split(splits, requested, names, what):
    if requested not in ("auto", "none", ""):
        if requested not in splits:
            raise ValueError(f"`{what}` {requested!r} is not a split of this data set; splits are {sorted(splits)}.")
        return requested
    if requested in ("none", ""):
        return None
    return next((name for name in names if name in splits), None)


def _make_splits(splits, data_args, streaming):
    train_name = data_args.train_split
    if train_name not in splits:
        raise ValueError(f"`train_split` {train_name!r} is not a split of this data set; splits are {sorted(splits)}.")
    train = splits[train_name]
    others = {k: v for k, v in splits.items() if k != train_name}
    test_name = _pick_split(others, data_args.test_split, ("test", "validation", "valid", "val"), "test_split")
    test = others.pop(test_name) if test_name else None
    validation_name = _pick_split(others, data_args.validation_split, ("validation", "valid", "val"), "validation_split")
    validation = others.pop(validation_name) if validation_name else None

    if streaming:
        holdout = data_args.streaming_holdout_size
        if test is None:
            test, train = train.take(holdout), train.skip(holdout)
        if validation is None and data_args.validation_fraction > 0:
            validation, train = train.take(holdout), train.skip(holdout)
        return train, validation, test
    if test is None:
        train, test = _stratified_split(train, data_args.test_fraction, data_args.split_seed, "test_fraction")
    if validation is None and data_args.validation_fraction > 0:
        train, validation = _stratified_split(
            train, data_args.validation_fraction, data_args.split_seed, "validation_fraction"
        )
    return train, validation, test


def _limit(dataset, count, streaming):
    if not count or dataset is None:
        return dataset
    if streaming:
        return dataset.take(count)
    return dataset.select(range(min(count, len(dataset))))


def _is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _is_main_process() -> bool:
    """Whether this is the run's first process (the one that prints); True outside a multi-process launch."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def _main_process_first():
    """Under a multi-process launch (torchrun, `accelerate launch`), each machine's first process runs the body
    first (it builds the `datasets` cache and the screening cache), the others after it (and reuse both). (Should
    Accelerate not see the launch, e.g. torchrun on CPU without ACCELERATE_USE_CPU=1, the screening's own lock still
    lets one process check and the others reuse its result.)"""
    if not _is_distributed():
        yield
        return
    from accelerate import PartialState

    state = PartialState()
    with state.local_main_process_first() if state.num_processes > 1 else contextlib.nullcontext():
        yield


def load_image_classification_data(data_args) -> ImageClassificationData:
    """
    The recipes' one entry point for data: source -> checked, split `ImageClassificationData` (`DataArguments`).
    Under a multi-process launch, each machine's first process loads and checks the data first; the others then
    reuse its `datasets` cache and its image check (`hf_vit.data.screening`), and only the first process prints.
    """
    if data_args.on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"`on_bad_image` must be one of {list(ON_BAD_IMAGE)}, got {data_args.on_bad_image!r}.")
    kind = resolve_source_kind(data_args.dataset, data_args.dataset_format)
    streaming = bool(data_args.streaming)
    if streaming and kind in ("digits", "idx"):
        raise ValueError(f"`streaming` applies to Hub ids and image folders; {data_args.dataset!r} is held in memory.")
    if streaming and data_args.cache_decoded_images:
        raise ValueError("`cache_decoded_images` holds the decoded training set in memory; a streamed data set cannot "
                         "be (set one of `streaming` and `cache_decoded_images` to false).")
    with _main_process_first():
        return _load_checked(data_args, kind, streaming)


def _load_checked(data_args, kind, streaming) -> ImageClassificationData:
    if kind == "digits":
        splits, label_names = _load_digits()
    elif kind == "idx":
        splits, label_names = _load_idx(data_args.dataset, data_args.label_names)
    else:
        splits, label_names = _load_with_datasets(kind, data_args)

    skipped = []
    if kind in ("imagefolder", "hub"):
        for name in list(splits):
            if streaming:
                # Rows stay undecoded ({"bytes", "path"}) after the check: the collator decodes them, once.
                undecoded = splits[name].cast_column("image", ImageFeature(decode=False))
                splits[name] = undecoded.filter(StreamImageFilter(name, data_args.on_bad_image))
            else:
                splits[name] = screen_split(name, splits[name], data_args.on_bad_image, skipped,
                                            max(2, data_args.num_workers), show=_is_main_process())

    train, validation, test = _make_splits(splits, data_args, streaming)
    train = _limit(train, data_args.max_train_examples, streaming)
    validation = _limit(validation, data_args.max_eval_examples, streaming)
    test = _limit(test, data_args.max_eval_examples, streaming)
    name = data_args.dataset if kind != "idx" else os.path.basename(os.path.normpath(data_args.dataset))
    return ImageClassificationData(
        train=train, validation=validation, test=test, label_names=label_names, name=name, kind=kind,
        streaming=streaming, skipped_images=skipped,
    )


def load_digits_data(test_fraction=0.2, validation_fraction=0.1, split_seed=0) -> ImageClassificationData:
    """scikit-learn's digits with the main job's fixed split (a shortcut for `load_image_classification_data`)."""
    return load_image_classification_data(
        DataArguments(dataset="digits", test_fraction=test_fraction, validation_fraction=validation_fraction,
                      split_seed=split_seed)
    )


