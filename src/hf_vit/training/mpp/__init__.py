"""Masked patch prediction, the paper's self-supervision (section 4.6, appendix B.1.2): the corruption plans and
targets (`masking`), the task of the shared loop (`task`), the run (`recipe`), its arguments and a picture of its
predictions (`figures`)."""

from .arguments import MaskedPatchArguments, MaskedPatchTrainArguments
from .figures import class_to_color, plot_predictions
from .masking import MaskedPatchCollator, mpp_targets, plan_corruption
from .recipe import MaskedPatchRecipe, run_masked_patch_prediction
from .task import MaskedPatchPredictionTask, PatchRepresentation


__all__ = [
    "MaskedPatchArguments",
    "MaskedPatchCollator",
    "MaskedPatchPredictionTask",
    "MaskedPatchRecipe",
    "MaskedPatchTrainArguments",
    "PatchRepresentation",
    "class_to_color",
    "mpp_targets",
    "plan_corruption",
    "plot_predictions",
    "run_masked_patch_prediction",
]
