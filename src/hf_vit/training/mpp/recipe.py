"""The masked-patch pre-training run of `recipes/pretrain_mpp.py` (ViT paper, section 4.6 and appendix B.1.2).

On top of the shared run (`hf_vit.training.run`): a `ViTForMaskedPatchPrediction` (labels unused for training, kept
for the few-shot evaluation of the frozen mean-patch features), the corruption collator, optionally AttMask, and a
picture of its predictions in the run folder, which `recipes/finetune.py` takes as its starting point (encoder kept,
head replaced).
"""

import os

from ...modeling_hf_vit import ViTForMaskedPatchPrediction
from ..models import build_model
from ..run import Recipe, run_recipe
from .figures import plot_predictions
from .task import MaskedPatchPredictionTask, PatchRepresentation


class MaskedPatchRecipe(Recipe):
    objective = "masked_patch_prediction"
    model_class = ViTForMaskedPatchPrediction

    @property
    def mpp_args(self):
        return self.extra_args[0]

    def check(self) -> None:
        if self.train_args.push_to_hub:
            raise ValueError(
                "`push_to_hub`: a masked-patch-prediction checkpoint is published after fine-tuning (recipes/finetune.py "
                "... --push_to_hub NAMESPACE/NAME); the Hub checks load it as an image classifier.")

    def build_model(self, data=None):
        return build_model(self.model_args, self.model_class, {"mpp_target": self.mpp_args.mpp_target})

    def describe(self, run) -> str:
        mpp = self.mpp_args
        return (f"{super().describe(run)}; corrupt {mpp.mask_ratio:.0%} ({mpp.masking}), split {list(mpp.mask_split)}, "
                f"target {mpp.mpp_target}")

    def build_task(self, run):
        return MaskedPatchPredictionTask(run.model, run.processor, self.mpp_args, run.augmentation,
                                         seed=self.train_args.seed)

    def fewshot_representation(self, model):
        return PatchRepresentation(model) if self.mpp_args.fewshot_representation == "mean_patch" else model

    def after_save(self, run, results) -> None:
        output_dir = self.train_args.output_dir
        if self.mpp_args.mpp_target == "mean_color" and run.data.test is not None and not run.data.streaming:
            examples = [run.data.test[i] for i in range(min(4, len(run.data.test)))]
            try:
                figure = plot_predictions(run.saved_model, run.task.eval_collator(), examples)
            except ImportError as error:
                print(f"no mpp_predictions.png: {error} (install matplotlib, e.g. the [dev] extra)")
            else:
                figure.savefig(os.path.join(output_dir, "mpp_predictions.png"), dpi=100)
                print(f"wrote {os.path.join(output_dir, 'mpp_predictions.png')}")
        print(f"fine-tune it with recipes/finetune.py --model_name_or_path {output_dir}")

    def return_value(self, results, result):
        return result.last_eval


def run_masked_patch_prediction(model_args, data_args, train_args, mpp_args) -> dict:
    """Pre-train, evaluate (masked-patch loss/accuracy, few-shot linear accuracy) and save one run; returns the
    final validation metrics (also in eval_results.json)."""
    return run_recipe(MaskedPatchRecipe(model_args, data_args, train_args, mpp_args))


__all__ = ["MaskedPatchRecipe", "run_masked_patch_prediction"]
