"""Self-supervised pre-training with a masked autoencoder (MAE; He et al., "Masked Autoencoders Are Scalable Vision
Learners", 2021): beyond the ViT paper, the successor of its masked patch prediction.

Hide 75% of each image's patches, run the encoder on the visible ones only, and reconstruct the hidden patches'
pixels (normalised per patch) with a light decoder; AdamW (betas 0.9, 0.95, weight decay 0.05), warm-up, cosine
decay. Labels are not used for training; the few-shot linear evaluation reads them. The run folder is a starting
point for recipes/finetune.py (MAE's fine-tuning head: mean of the patch tokens, a LayerNorm of its own).

    python recipes/pretrain_mae.py recipes/configs/fashion_mnist_mae.yaml [--field value ...]
    python recipes/pretrain_mae.py CONFIG.yaml --resume latest                       # continue an interrupted run
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 recipes/pretrain_mae.py CONFIG.yaml   # data-parallel on CPU
"""

import sys

from hf_vit.cli_support import run_command
from hf_vit.data import DataArguments
from hf_vit.training import ModelArguments, parse_recipe_args
from hf_vit.training.mae import MaskedAutoencoderArguments, MaskedAutoencoderTrainArguments, run_masked_autoencoding


def main(argv=None):
    args = parse_recipe_args((ModelArguments, DataArguments, MaskedAutoencoderTrainArguments, MaskedAutoencoderArguments), argv)
    return run_masked_autoencoding(*args)


if __name__ == "__main__":
    sys.exit(run_command(main))  # a user error: one message and exit code 2 (--debug shows the traceback)
