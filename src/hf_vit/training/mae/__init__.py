"""The masked autoencoder (MAE; He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021), the successor of
the paper's masked patch prediction: the masking collator and task of the shared loop (`task`), the run (`recipe`),
its arguments and a picture of its reconstructions (`figures`). The model is `hf_vit.ViTForMaskedAutoencoding`."""

from .arguments import MaskedAutoencoderArguments, MaskedAutoencoderTrainArguments
from .figures import plot_reconstructions
from .recipe import MaskedAutoencoderRecipe, run_masked_autoencoding
from .task import MaskedAutoencoderCollator, MaskedAutoencodingTask


__all__ = [
    "MaskedAutoencoderArguments",
    "MaskedAutoencoderCollator",
    "MaskedAutoencoderRecipe",
    "MaskedAutoencoderTrainArguments",
    "MaskedAutoencodingTask",
    "plot_reconstructions",
    "run_masked_autoencoding",
]
