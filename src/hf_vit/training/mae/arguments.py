"""The MAE recipe's arguments: the objective's own choices, and MAE's pre-training optimiser (He et al., 2021,
appendix A.1)."""

from dataclasses import dataclass, field

from ..arguments import TrainArguments


FEWSHOT_REPRESENTATIONS = ("mean_patch", "class_token")


@dataclass
class MaskedAutoencoderArguments:
    """The objective's own choices (training choices: the recipe writes them into the model's config, which the
    model reads when it draws its masking, `mask_ratio`, and computes its loss, `norm_pix_loss`)."""

    mask_ratio: float = field(default=0.75, metadata={"help": "Share of each image's patches hidden from the encoder (MAE: 0.75)."})
    norm_pix_loss: bool = field(default=True, metadata={"help": "Reconstruct per-patch normalised pixels (MAE's default) rather than the raw pixel_values."})
    fewshot_representation: str = field(default="mean_patch", metadata={"help": "Features for few-shot evaluation: mean_patch (mean of the patch tokens after the final norm, MAE's fine-tuning input) | class_token."})

    def __post_init__(self):
        ratio = self.mask_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be a share of the patches in (0, 1) (MAE: 0.75), got {ratio!r}.")
        if self.fewshot_representation not in FEWSHOT_REPRESENTATIONS:
            raise ValueError(
                f"`fewshot_representation` must be one of {list(FEWSHOT_REPRESENTATIONS)}, got {self.fewshot_representation!r}."
            )


@dataclass
class MaskedAutoencoderTrainArguments(TrainArguments):
    """MAE's pre-training optimiser (appendix A.1): AdamW with betas (0.9, 0.95), weight decay 0.05, base lr 1.5e-4
    per 256 images (lr = 1.5e-4 * batch / 256), warm-up (40 of 800 epochs: 5%) and cosine decay.

    NOTE: MAE trains 800-1600 epochs; the short runs of this package at small batch need a higher lr (the
    Fashion-MNIST config uses 1e-3, as the masked-patch study). MAE clips no gradients; clipping at 1 is kept here as
    in the other recipes (set max_grad_norm 0 for MAE's).
    """

    learning_rate: float = 1.5e-4
    adam_beta2: float = 0.95
    weight_decay: float = 0.05
    lr_decay: str = "cosine"
    warmup_ratio: float = 0.05
    predict_examples: int = 0


__all__ = ["FEWSHOT_REPRESENTATIONS", "MaskedAutoencoderArguments", "MaskedAutoencoderTrainArguments"]
