"""Self-supervised pre-training with masked patch prediction (ViT paper, section 4.6, appendix B.1.2).

Corrupt 50% of the patch embeddings (80% [mask], 10% another patch, 10% unchanged) and predict each corrupted
patch's 3-bit mean colour; Adam (lr 2e-4 in the paper), linear warm-up, cosine decay. Labels are not used for
training; the few-shot linear evaluation reads them. The run folder is a starting point for recipes/finetune.py.

    python recipes/pretrain_mpp.py recipes/configs/fashion_mnist_mpp.yaml [--field value ...]
    python recipes/pretrain_mpp.py CONFIG.yaml --masking attmask     # attention-guided masking (EMA teacher)
"""

import sys

from hf_vit.cli_support import run_command
from hf_vit.data import DataArguments
from hf_vit.training import ModelArguments, parse_recipe_args
from hf_vit.training.mpp import MaskedPatchArguments, MaskedPatchTrainArguments, run_masked_patch_prediction


def main(argv=None):
    args = parse_recipe_args((ModelArguments, DataArguments, MaskedPatchTrainArguments, MaskedPatchArguments), argv)
    return run_masked_patch_prediction(*args)


if __name__ == "__main__":
    sys.exit(run_command(main))  # a user error: one message and exit code 2 (--debug shows the traceback)
