"""The masked-patch recipe's arguments (ViT paper, appendix B.1.2): the self-supervision's own choices, and the
paper's optimiser settings for it."""

from dataclasses import dataclass, field

from ..arguments import TrainArguments
from .masking import MASKING_STRATEGIES


@dataclass
class MaskedPatchArguments:
    """The self-supervision's own choices (training choices: they live here, not in the model config)."""

    mask_ratio: float = field(default=0.5, metadata={"help": "Share of the patches corrupted per image (paper: 0.5; its comparison: 0.15)."})
    mask_split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1], metadata={"help": "Shares of [mask] / other patch / unchanged among the corrupted positions."})
    mpp_target: str = field(default="mean_color", metadata={"help": "mean_color | downsampled | pixels (sets the model's head)."})
    masking: str = field(default="random", metadata={"help": "random (the paper) | attmask (the patches an EMA teacher's class token attends to most)."})
    attmask_random_share: float = field(default=0.2, metadata={"help": "attmask: share of the corrupted positions drawn at random instead of from the most attended."})
    teacher_ema_decay: float = field(default=0.999, metadata={"help": "attmask: decay of the teacher (an EMA copy of the model, with warm-up)."})
    fewshot_representation: str = field(default="mean_patch", metadata={"help": "Features for few-shot evaluation: mean_patch (mean of the patch tokens after the final norm) | class_token."})

    def __post_init__(self):
        if self.masking not in MASKING_STRATEGIES:
            raise ValueError(f"`masking` must be one of {list(MASKING_STRATEGIES)}, got {self.masking!r}.")
        if self.fewshot_representation not in ("mean_patch", "class_token"):
            raise ValueError(
                f"`fewshot_representation` must be 'mean_patch' or 'class_token', got {self.fewshot_representation!r}."
            )
        if not 0.0 < self.teacher_ema_decay < 1.0:
            raise ValueError(f"`teacher_ema_decay` must be in (0, 1), got {self.teacher_ema_decay}.")




@dataclass
class MaskedPatchTrainArguments(TrainArguments):
    """The paper's masked-patch pre-training optimiser (appendix B.1.2): Adam, base lr 2e-4, warm-up, cosine decay.

    NOTE: the paper warms up for 10k of 1M steps at batch 4096 and names no weight decay: here a 5% warm-up and no
    weight decay by default; short runs at small batch need a higher lr (the Fashion-MNIST study uses 1e-3).
    """

    learning_rate: float = 2e-4
    lr_decay: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    predict_examples: int = 0
