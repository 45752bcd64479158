"""Masked patch prediction pre-training on the shared loop (ViT paper, section 4.6 and appendix B.1.2).

The task object for `hf_vit.training.loop.train` and the run shared by `recipes/pretrain_mpp.py`: data (labels
unused for training; kept for the few-shot evaluation), a `ViTForMaskedPatchPrediction`, the corruption collator of
`hf_vit.training.masking`, optionally attention-guided masking (AttMask) with an EMA teacher, then the run folder,
which `recipes/finetune.py` takes as its starting point (encoder kept, head replaced).
"""

import time
from dataclasses import dataclass, field

import torch

from .masking import MASKING_STRATEGIES, MaskedPatchCollator, attention_guided_positions, gather_positions, plan_corruption
from .tasks import Task


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


def _train_arguments_base():
    from .arguments import TrainArguments

    return TrainArguments


@dataclass
class MaskedPatchTrainArguments(_train_arguments_base()):
    """The paper's masked-patch pre-training optimiser (appendix B.1.2): Adam, base lr 2e-4, warm-up, cosine decay.

    NOTE: the paper warms up for 10k of 1M steps at batch 4096 and names no weight decay: here a 5% warm-up and no
    weight decay by default; short runs at small batch need a higher lr (the Fashion-MNIST study uses 1e-3).
    """

    learning_rate: float = 2e-4
    lr_decay: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    predict_examples: int = 0


class MaskedPatchPredictionTask(Task):
    """
    The paper's self-supervision as a task of the shared loop: the collator draws the corruption plan and the targets
    in the DataLoader workers; `step` runs the model on them. Metrics: the loss and, for the categorical targets, the
    accuracy of the predicted colour at the corrupted positions.

    With `masking="attmask"`, `step` first runs the teacher (an EMA copy of the model, updated before each step, so it
    averages the weights up to the last optimiser step) with `output_attentions=True`, takes its last layer's
    class-token attention to the patches (heads averaged), and corrupts the most attended patches (plus a random
    share); kinds and replacement sources are drawn anew for those positions.
    """

    name = "masked-patch-prediction"

    def __init__(self, model, image_processor, mpp_args: MaskedPatchArguments, augmentation=None, seed: int = 0):
        self.model = model
        self.image_processor = image_processor
        self.args = mpp_args
        self.augmentation = augmentation
        self.seed = seed
        self.teacher = None
        if mpp_args.masking == "attmask":
            from .ema import ModelEMA

            if not getattr(model.config, "use_class_token", False):
                raise ValueError("`masking='attmask'` ranks patches by the teacher's class-token attention: the model "
                                 "needs a class token (pooling 'cls' or use_class_token=True).")
            self.teacher = ModelEMA(model, mpp_args.teacher_ema_decay, warmup=True)

    @property
    def patch_size(self):
        return getattr(self.model, "module", self.model).config.patch_hw

    def _collator(self, training: bool) -> MaskedPatchCollator:
        return MaskedPatchCollator(
            self.image_processor, self.patch_size, self.args.mask_ratio, tuple(self.args.mask_split),
            self.args.mpp_target, augment=self.augmentation if training else None, seed=self.seed,
            return_all_targets=training and self.teacher is not None, per_batch_plans=not training,
        )

    def train_collator(self):
        return self._collator(training=True)

    def eval_collator(self):
        return self._collator(training=False)

    @staticmethod
    def model_inputs(batch) -> dict:
        keys = ("pixel_values", "corrupted_positions", "corruption_kind", "replacement_index", "labels")
        return {key: batch[key] for key in keys}

    @torch.no_grad()
    def attention_guided_plan(self, batch) -> dict:
        """Re-plan the batch's corrupted positions from the teacher's last-layer class-token attention (AttMask)."""
        model = getattr(self.model, "module", self.model)
        self.teacher.update(model)
        teacher = self.teacher.model.to(batch["pixel_values"].device)
        attentions = teacher.vit(batch["pixel_values"], output_attentions=True).attentions[-1]  # (B, H, T, T)
        prefix = teacher.config.num_prefix_tokens
        scores = attentions[:, :, 0, prefix:].mean(1)  # (B, N): the class token's attention to each patch
        generator = torch.Generator().manual_seed(int(batch["plan_seed"]) % (2**63))
        positions = attention_guided_positions(
            scores.float().cpu(), self.args.mask_ratio, self.args.attmask_random_share, generator=generator
        )
        plan = plan_corruption(positions.shape[0], scores.shape[1], self.args.mask_ratio, tuple(self.args.mask_split),
                               positions=positions, generator=generator)
        device = batch["pixel_values"].device
        plan = {k: v.to(device) for k, v in plan.items()}
        plan["labels"] = gather_positions(batch["all_targets"], plan["corrupted_positions"])
        return {**batch, **plan}

    def step(self, batch) -> tuple[torch.Tensor, dict]:
        if self.teacher is not None:
            batch = self.attention_guided_plan(batch)
        out = self.model(**self.model_inputs(batch))
        metrics = {}
        if self.args.mpp_target != "pixels":
            metrics["accuracy"] = (out.logits.detach().argmax(-1) == batch["labels"]).float().mean()
        return out.loss, metrics

    @torch.no_grad()
    def evaluate(self, loader, accelerator, model=None) -> dict:
        model = model if model is not None else self.model
        was_training = model.training
        model.eval()
        loss_sum, correct, count, batches = 0.0, 0.0, 0, 0
        for batch in loader:
            batch = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out = model(**self.model_inputs(batch))
            loss_sum += float(out.loss)
            batches += 1
            if self.args.mpp_target != "pixels":
                hits = (out.logits.argmax(-1) == batch["labels"]).float()
                correct += float(hits.sum())
                count += hits.numel()
        model.train(was_training)
        totals = accelerator.reduce(torch.tensor([loss_sum, batches, correct, count], device=accelerator.device), "sum")
        loss_sum, batches, correct, count = totals.tolist()
        metrics = {"loss": loss_sum / max(1.0, batches)}
        if count:
            metrics["accuracy"] = correct / count
        return metrics


class PatchRepresentation(torch.nn.Module):
    """Wraps an encoder so that few-shot evaluation reads the mean of its patch tokens (after the final norm): a
    masked-patch-prediction model never trains its class token's output, its patch tokens are what it learns."""

    def __init__(self, model):
        super().__init__()
        inner = getattr(model, "module", model)
        self.encoder = getattr(inner, inner.base_model_prefix, inner)
        self.num_prefix_tokens = inner.config.num_prefix_tokens

    def forward(self, pixel_values):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        out = self.encoder(pixel_values=pixel_values)
        pooled = out.last_hidden_state[:, self.num_prefix_tokens :].mean(1)
        return BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state, pooler_output=pooled)


class _MeanPatchFewShot:
    """A few-shot evaluator of the loop that reads mean patch features (see `PatchRepresentation`)."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.name = getattr(evaluator, "name", "fewshot")

    def __call__(self, model, accelerator=None) -> dict:
        return self.evaluator(PatchRepresentation(model), accelerator)


def build_mpp_model(model_args, mpp_args):
    """A fresh `ViTForMaskedPatchPrediction` from a variant and overrides, or one continued from a checkpoint."""
    from ..configuration_hf_vit import ViTConfig
    from ..modeling_hf_vit import ViTForMaskedPatchPrediction

    overrides = model_args.config_overrides()
    extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path:
        return ViTForMaskedPatchPrediction.from_pretrained(
            model_args.model_name_or_path, mpp_target=mpp_args.mpp_target, **overrides, **extra
        )
    if not model_args.variant:
        raise ValueError("Give `variant` (e.g. 'Ti/16') or `model_name_or_path`.")
    config = ViTConfig.from_variant(model_args.variant, mpp_target=mpp_args.mpp_target, **overrides, **extra)
    return ViTForMaskedPatchPrediction(config)


def run_masked_patch_prediction(model_args, data_args, train_args, mpp_args) -> dict:
    """Pre-train, evaluate (masked-patch loss/accuracy, few-shot linear accuracy) and save one run; returns the
    final validation metrics (also in eval_results.json)."""
    if train_args.push_to_hub:
        raise ValueError(
            "`push_to_hub`: a masked-patch-prediction checkpoint is published after fine-tuning (recipes/finetune.py "
            "... --push_to_hub NAMESPACE/NAME); the Hub checks load it as an image classifier.")
    from accelerate.utils import set_seed

    from .arguments import resolved_args_dict
    from .data import load_image_classification_data
    from .loop import make_accelerator, train
    from .run import build_processor, describe_hardware, save_run
    from .transforms import BatchAugmentation, resolve_augmentation

    started = time.perf_counter()
    accelerator = make_accelerator(train_args)
    set_seed(train_args.seed)
    data = load_image_classification_data(data_args)
    model = build_mpp_model(model_args, mpp_args)
    processor = build_processor(model_args, model)
    augmentation_name = resolve_augmentation(data_args.augmentation, data.kind)
    augmentation = None
    if augmentation_name != "none":
        augmentation = BatchAugmentation(augmentation_name, processor.image_mean, processor.image_std)
    accelerator.print(
        f"masked patch prediction: {data.name}, augmentation {augmentation_name}; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters at {model.config.image_size}px, patch "
        f"{model.config.patch_size}; corrupt {mpp_args.mask_ratio:.0%} ({mpp_args.masking}), split "
        f"{list(mpp_args.mask_split)}, target {mpp_args.mpp_target}"
    )
    task = MaskedPatchPredictionTask(model, processor, mpp_args, augmentation, seed=train_args.seed)
    evaluators = []
    if train_args.fewshot_every_steps >= 0 and not data.streaming:
        from ..evaluation.fewshot import FewShotEvaluator
        from .data import ImageClassificationCollator

        fewshot_test = data.validation if data.validation is not None else data.test
        evaluator = FewShotEvaluator(data.train, fewshot_test, ImageClassificationCollator(processor),
                                     shots=train_args.fewshot_shots, seed=train_args.seed)
        evaluators.append(_MeanPatchFewShot(evaluator) if mpp_args.fewshot_representation == "mean_patch" else evaluator)
    run_args = resolved_args_dict(model_args, data_args, train_args, mpp_args)
    result = train(
        task, data.train, train_args, eval_dataset=data.validation, accelerator=accelerator, evaluators=evaluators,
        num_workers=data_args.num_workers, shuffle_buffer_size=data_args.shuffle_buffer_size, run_args=run_args,
    )
    results = {
        "dataset": data.name, "objective": "masked_patch_prediction", "global_step": result.global_step,
        "train_seconds": result.train_seconds, "images_per_second": result.images_per_second,
        "validation": result.last_eval, "total_seconds": time.perf_counter() - started,
        "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(task.model).parameters()),
        "hardware": describe_hardware(accelerator),
    }
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(task.model)
        save_run(train_args.output_dir, model, processor, results,
                 model_args, data_args, train_args, mpp_args, ema_model=result.ema.model if result.ema else None)
        if mpp_args.mpp_target == "mean_color" and data.test is not None and not data.streaming:
            _save_prediction_figure(model, task.eval_collator(), data.test, train_args.output_dir, accelerator)
        print(f"saved the pre-trained model to {train_args.output_dir} (fine-tune it with recipes/finetune.py "
              f"--model_name_or_path {train_args.output_dir})")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result.last_eval


def _save_prediction_figure(model, collator, dataset, output_dir, accelerator) -> None:
    """`mpp_predictions.png` in the run folder: a few held-out images, their corruption, true vs predicted colours."""
    import os

    try:
        figure = plot_predictions(model, collator, [dataset[i] for i in range(min(4, len(dataset)))])
    except ImportError as error:
        accelerator.print(f"no mpp_predictions.png: {error} (install matplotlib, e.g. the [dev] extra)")
        return
    path = os.path.join(output_dir, "mpp_predictions.png")
    figure.savefig(path, dpi=100)
    accelerator.print(f"wrote {path}")


__all__ = [
    "MaskedPatchArguments",
    "MaskedPatchTrainArguments",
    "MaskedPatchPredictionTask",
    "PatchRepresentation",
    "build_mpp_model",
    "class_to_color",
    "plot_predictions",
    "run_masked_patch_prediction",
]


def class_to_color(classes: torch.Tensor, num_channels: int = 3) -> torch.Tensor:
    """(...,) 3-bit colour classes -> (..., C) colours in [0, 1] at the centre of each quantisation bin."""
    from .masking import COLOR_BITS

    levels = 2**COLOR_BITS
    digits = [(classes // levels**power) % levels for power in range(num_channels - 1, -1, -1)]
    return (torch.stack(digits, dim=-1).float() + 0.5) / levels


@torch.no_grad()
def plot_predictions(model, collator, examples, max_images: int = 4):
    """
    A figure of masked patch prediction at work, one row per image: the image, what the model sees (light blue:
    [mask]; another patch pasted in: replaced; outlined in red: corrupted but unchanged), the true 3-bit mean colour
    of each corrupted patch, and the model's predicted colour (pale blue-grey: not corrupted, nothing to predict).
    Needs matplotlib; "mean_color" models only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .masking import KEEP, MASK, REPLACE, patchify

    inner = getattr(model, "module", model)
    if inner.config.mpp_target != "mean_color":
        raise ValueError(f"plot_predictions draws mean colours: the model's `mpp_target` is {inner.config.mpp_target!r}.")
    batch = collator(list(examples)[:max_images])
    was_training = inner.training
    inner.eval()
    inputs = {k: batch[k] for k in ("pixel_values", "corrupted_positions", "corruption_kind", "replacement_index")}
    predicted = inner(**inputs).logits.argmax(-1)  # (B, M)
    inner.train(was_training)
    images = collator.unnormalize(batch["pixel_values"]).clamp(0, 1)  # (B, C, H, W) in [0, 1]
    (ph, pw), width = inner.config.patch_hw, images.shape[-1]
    cols = width // pw
    patches = patchify(images, (ph, pw))  # (B, N, C, ph, pw)
    rows = images.shape[0]
    figure, axes = plt.subplots(rows, 4, figsize=(8, 2.1 * rows), squeeze=False)
    for title, axis in zip(("image", "model input", "true mean colour", "predicted"), axes[0]):
        axis.set_title(title, fontsize=9)
    for b in range(rows):
        seen = images[b].clone()
        background = torch.tensor([0.86, 0.9, 0.96])[:, None, None].expand_as(images[b])
        truth, guess = background.clone(), background.clone()
        outlines = []
        for slot, position in enumerate(batch["corrupted_positions"][b].tolist()):
            r, c = divmod(position, cols)
            area = (slice(None), slice(r * ph, (r + 1) * ph), slice(c * pw, (c + 1) * pw))
            kind = int(batch["corruption_kind"][b, slot])
            if kind == MASK:
                seen[area] = torch.tensor([0.45, 0.7, 1.0])[:, None, None]
            elif kind == REPLACE:
                source = int(batch["replacement_index"][b, slot])
                seen[area] = patches[source // patches.shape[1], source % patches.shape[1]]
            elif kind == KEEP:
                outlines.append((r, c))
            truth[area] = class_to_color(batch["labels"][b, slot])[:, None, None]
            guess[area] = class_to_color(predicted[b, slot])[:, None, None]
        for axis, picture in zip(axes[b], (images[b], seen, truth, guess)):
            axis.imshow(picture.permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        for r, c in outlines:
            axes[b][1].add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, edgecolor="red", lw=1))
    accuracy = float((predicted == batch["labels"]).float().mean())
    figure.suptitle(f"masked patch prediction: {accuracy:.0%} of these corrupted patches' colours right", fontsize=10)
    figure.tight_layout()
    return figure
