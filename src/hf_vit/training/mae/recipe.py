"""The masked-autoencoder pre-training run of `recipes/pretrain_mae.py` (He et al., "Masked Autoencoders Are Scalable
Vision Learners", 2021).

On top of the shared run (`hf_vit.training.run`): a `ViTForMaskedAutoencoding` (labels unused for training, kept for
the few-shot evaluation of the frozen features), the masking collator, and a picture of its reconstructions in the
run folder, which `recipes/finetune.py` takes as its starting point (encoder kept with MAE's fine-tuning head: mean
of the patch tokens and a LayerNorm of its own; the decoder dropped).
"""

import os

from ...modeling_hf_vit import ViTForMaskedAutoencoding
from ..models import build_model
from ..mpp.task import PatchRepresentation
from ..run import Recipe, run_recipe
from .figures import plot_reconstructions
from .task import MaskedAutoencodingTask


class MaskedAutoencoderRecipe(Recipe):
    objective = "masked_autoencoding"
    model_class = ViTForMaskedAutoencoding

    @property
    def mae_args(self):
        return self.extra_args[0]

    def check(self) -> None:
        if self.train_args.push_to_hub:
            raise ValueError(
                "`push_to_hub`: a masked-autoencoder checkpoint is published after fine-tuning (recipes/finetune.py ... "
                "--push_to_hub NAMESPACE/NAME); the Hub checks load it as an image classifier.")

    def build_model(self, data=None):
        fields = {"mask_ratio": self.mae_args.mask_ratio, "norm_pix_loss": self.mae_args.norm_pix_loss}
        return build_model(self.model_args, self.model_class, fields)

    def describe(self, run) -> str:
        config = run.model.config
        kept = run.model.num_kept(config.num_patches)
        return (f"{super().describe(run)}; hide {self.mae_args.mask_ratio:.0%} ({config.num_patches - kept} of "
                f"{config.num_patches} patches), decoder {config.decoder_num_hidden_layers} x {config.decoder_hidden_size}, "
                f"{'per-patch normalised' if self.mae_args.norm_pix_loss else 'raw'} pixels")

    def build_task(self, run):
        return MaskedAutoencodingTask(run.model, run.processor, self.mae_args, run.augmentation, seed=self.train_args.seed)

    def fewshot_representation(self, model):
        return PatchRepresentation(model) if self.mae_args.fewshot_representation == "mean_patch" else model

    def after_save(self, run, results) -> None:
        output_dir = self.train_args.output_dir
        if run.data.test is not None and not run.data.streaming:
            examples = [run.data.test[i] for i in range(min(4, len(run.data.test)))]
            try:
                figure = plot_reconstructions(run.accelerator.unwrap_model(run.task.model), run.task.eval_collator(),
                                              examples)
            except ImportError as error:
                print(f"no mae_reconstructions.png: {error} (install matplotlib, e.g. the [dev] extra)")
            else:
                figure.savefig(os.path.join(output_dir, "mae_reconstructions.png"), dpi=100)
                print(f"wrote {os.path.join(output_dir, 'mae_reconstructions.png')}")
        print(f"fine-tune it with recipes/finetune.py --model_name_or_path {output_dir}")

    def return_value(self, results, result):
        return result.last_eval


def run_masked_autoencoding(model_args, data_args, train_args, mae_args) -> dict:
    """Pre-train, evaluate (reconstruction loss, few-shot linear accuracy) and save one run; returns the final
    validation metrics (also in eval_results.json)."""
    return run_recipe(MaskedAutoencoderRecipe(model_args, data_args, train_args, mae_args))


__all__ = ["MaskedAutoencoderRecipe", "run_masked_autoencoding"]
