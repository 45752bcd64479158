"""Masked patch prediction as a task of the shared loop (ViT paper, section 4.6 and appendix B.1.2), optionally with
attention-guided masking (AttMask) from an EMA teacher; and the mean-patch representation its few-shot evaluation
reads."""

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ...data import move_to_device
from ..ema import ModelEMA
from ..tasks import Task
from .arguments import MaskedPatchArguments
from .masking import MaskedPatchCollator, attention_guided_positions, gather_positions, plan_corruption


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
            batch = move_to_device(batch, accelerator.device)
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
        out = self.encoder(pixel_values=pixel_values)
        pooled = out.last_hidden_state[:, self.num_prefix_tokens :].mean(1)
        return BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state, pooler_output=pooled)


__all__ = ["MaskedPatchPredictionTask", "PatchRepresentation"]
