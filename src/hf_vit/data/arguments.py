"""The data options of every recipe and of `hf-vit evaluate`: where the images come from, how they are split, checked
and augmented (parsed by `HfArgumentParser` from a YAML config and the command line)."""

from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Where the images come from, how they are split, checked and augmented."""

    dataset: str = field(default="digits", metadata={"help": "'digits' (scikit-learn, embedded), a folder of IDX files or of class sub-folders (imagefolder), or a Hub dataset id."})
    dataset_format: str = field(default="auto", metadata={"help": "auto | digits | idx | imagefolder | hub"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = "train"
    validation_split: str = field(default="auto", metadata={"help": "A split name, 'auto' (validation if present, else carved from train) or 'none'."})
    test_split: str = field(default="auto", metadata={"help": "A split name, 'auto' (test, else validation, else carved from train) or 'none'."})
    image_column: str = field(default="auto", metadata={"help": "Column holding the images ('auto': the Image-typed one)."})
    label_column: str = field(default="auto", metadata={"help": "Column holding the labels ('auto': the ClassLabel-typed one)."})
    label_names: list[str] | None = field(default=None, metadata={"help": "Class names in label order (IDX files carry none)."})
    streaming: bool = field(default=False, metadata={"help": "Stream a Hub data set or image folder instead of loading it (for data larger than the disk)."})
    streaming_holdout_size: int = field(default=1000, metadata={"help": "Streaming without a test/validation split: rows taken off the stream's start for each."})
    shuffle_buffer_size: int = field(default=10000, metadata={"help": "Streaming: shuffle buffer (rows)."})
    test_fraction: float = field(default=0.2, metadata={"help": "Held-out share when the data set has no test split."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of the training split used for periodic evaluation (0: none)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the fixed train/validation/test split."})
    on_bad_image: str = field(default="skip", metadata={"help": "Unreadable images found before training: skip (count + first paths printed) | fail (stop with the full list)."})
    max_train_examples: int = field(default=0, metadata={"help": "Use only the first N training rows (0: all)."})
    max_eval_examples: int = field(default=0, metadata={"help": "Use only the first N validation / test rows (0: all)."})
    augmentation: str = field(default="auto", metadata={"help": "auto | none | flip | translate | crop | crop_flip | inception_crop_flip (the paper's random resized crop, cut from the decoded image, + flip)"})
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata={"help": "inception_crop_flip: range of the crop's share of the image area."})
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3], metadata={"help": "inception_crop_flip: range of the crop's aspect ratio (width / height)."})
    reduced_jpeg_decoding: bool = field(default=False, metadata={"help": "inception_crop_flip: decode a JPEG at 1/2-1/8 scale (libjpeg's DCT scaling) when its crop box still covers the model size there; faster on large photos, a level or two from torchvision's pixels."})
    augment_max_shift: float = field(default=0.125, metadata={"help": "translate / crop: largest shift, as a fraction of the image size."})
    randaugment_num_ops: int = field(default=0, metadata={"help": "RandAugment-style operations per image (0: off)."})
    randaugment_magnitude: float = field(default=9.0, metadata={"help": "RandAugment magnitude, 0..10."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup Beta(alpha, alpha) (0: off)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "Cutmix Beta(alpha, alpha) (0: off)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes (decoding and augmentation run there)."})
    pin_memory: bool = field(default=False, metadata={"help": "Page-locked batches for faster, asynchronous copies to a GPU (no effect without an accelerator)."})
    cache_decoded_images: bool = field(default=False, metadata={"help": "Decode the training images once, before training, and keep them in memory (about height x width x channels bytes each) instead of decoding them in every epoch. Map-style data only, not streaming."})
