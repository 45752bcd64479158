"""The masked autoencoder as a task of the shared loop (He et al., 2021): the collator draws each batch's masking as
`noise` from the batch's seed, so that runs are reproducible and resume exactly; the model keeps the patches with the
least noise (transformers' ViT-MAE convention)."""

import torch

from ...configuration_hf_vit import as_pair
from ...data import ImageClassificationCollator, derive_seed, move_to_device
from ..tasks import Task
from .arguments import MaskedAutoencoderArguments


class MaskedAutoencoderCollator:
    """
    list of {"image", "label"} -> {"pixel_values": (B, C, H, W), "noise": (B, N), "labels": (B,)}: the processor and the
    augmentation (`hf_vit.data.ImageClassificationCollator`), then uniform noise per patch, which fixes the masking.

    The noise comes from the batch's own seed when the training loader gives one (a resumed run draws the same masks
    as an uninterrupted one), else from the batch's content (`per_batch_plans`, evaluation: a batch always gets the
    same masks), else from the collator's seeded stream.
    """

    def __init__(self, image_processor, patch_size, augment=None, seed=None, per_batch_plans: bool = False):
        self.images = ImageClassificationCollator(image_processor, augment)
        self.patch_size = as_pair(patch_size)
        self.per_batch_plans = per_batch_plans
        self.seed = 0 if seed is None else seed
        self.generator = torch.Generator().manual_seed(self.seed)

    def _generator(self, examples, pixel_values) -> torch.Generator:
        seed = getattr(examples, "seed", None)
        if seed is not None:
            return torch.Generator().manual_seed(derive_seed("mae-noise", seed))
        if self.per_batch_plans:
            content = round(float(pixel_values.double().sum()), 3)
            return torch.Generator().manual_seed(derive_seed("mae-noise", self.seed, len(examples), content))
        return self.generator

    def __call__(self, examples) -> dict:
        batch = self.images(examples)
        pixel_values = batch["pixel_values"]
        (ph, pw), (height, width) = self.patch_size, pixel_values.shape[2:]
        num_patches = (height // ph) * (width // pw)
        noise = torch.rand(pixel_values.shape[0], num_patches, generator=self._generator(examples, pixel_values))
        return {"pixel_values": pixel_values, "noise": noise, "labels": batch["labels"]}


class MaskedAutoencodingTask(Task):
    """
    MAE pre-training on the shared loop: `step` runs `ViTForMaskedAutoencoding` on the batch's images and noise (labels
    are not used); evaluation reports the reconstruction loss over a loader, with each batch's masking fixed by its
    content.
    """

    name = "masked-autoencoding"

    def __init__(self, model, image_processor, mae_args: MaskedAutoencoderArguments, augmentation=None, seed: int = 0):
        self.model = model
        self.image_processor = image_processor
        self.args = mae_args
        self.augmentation = augmentation
        self.seed = seed

    @property
    def patch_size(self):
        return getattr(self.model, "module", self.model).config.patch_hw

    def train_collator(self):
        return MaskedAutoencoderCollator(self.image_processor, self.patch_size, self.augmentation, seed=self.seed)

    def eval_collator(self):
        return MaskedAutoencoderCollator(self.image_processor, self.patch_size, seed=self.seed, per_batch_plans=True)

    def step(self, batch) -> tuple[torch.Tensor, dict]:
        out = self.model(pixel_values=batch["pixel_values"], noise=batch["noise"])
        return out.loss, {}

    @torch.no_grad()
    def evaluate(self, loader, accelerator, model=None) -> dict:
        model = model if model is not None else self.model
        was_training = model.training
        model.eval()
        loss_sum, images = 0.0, 0
        for batch in loader:
            batch = move_to_device(batch, accelerator.device)
            out = model(pixel_values=batch["pixel_values"], noise=batch["noise"])
            count = batch["pixel_values"].shape[0]  # every image hides the same number of patches
            loss_sum += float(out.loss) * count
            images += count
        model.train(was_training)
        totals = accelerator.reduce(torch.tensor([loss_sum, images], device=accelerator.device), "sum")
        loss_sum, images = totals.tolist()
        return {"loss": loss_sum / max(1.0, images)}


__all__ = ["MaskedAutoencoderCollator", "MaskedAutoencodingTask"]
