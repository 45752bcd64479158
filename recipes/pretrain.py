"""Supervised training of a ViT from scratch: the paper's pre-training recipe (section 4.1, appendix B.1, Table 3).

Adam (beta 0.9/0.999) with decoupled weight decay 0.1, linear warm-up then linear decay, gradient clipping at norm 1,
the tanh pre-logits head (`representation_size`). The same shared loop as fine-tuning, with these defaults.

    python recipes/pretrain.py recipes/configs/digits.yaml [--field value ...]
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 recipes/pretrain.py CONFIG.yaml   # data-parallel
"""

import sys

from hf_vit.cli_support import run_command
from hf_vit.data import DataArguments
from hf_vit.training import ModelArguments, TrainArguments, parse_recipe_args, run_image_classification


def main(argv=None):
    model_args, data_args, train_args = parse_recipe_args((ModelArguments, DataArguments, TrainArguments), argv)
    return run_image_classification(model_args, data_args, train_args)


if __name__ == "__main__":
    sys.exit(run_command(main))  # a user error: one message and exit code 2 (--debug shows the traceback)
