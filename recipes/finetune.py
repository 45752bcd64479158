"""Fine-tuning a pre-trained ViT: the paper's recipe (section 3.2, appendix B.1.1).

From any hf_vit, transformers-ViT or converted checkpoint (`model_name_or_path`): the pre-training head (pre-logits
included) is replaced by one zero-initialised linear layer, optionally at a higher resolution with the position
embeddings resampled on the patch grid; SGD with momentum 0.9, no weight decay, cosine decay after a short warm-up,
gradient clipping at global norm 1, optional Polyak averaging (`ema_decay 0.9999`) and layer-wise lr decay.

    python recipes/finetune.py recipes/configs/CONFIG.yaml --model_name_or_path CHECKPOINT [--field value ...]
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 recipes/finetune.py CONFIG.yaml ...   # data-parallel on CPU
"""

import sys

from hf_vit.cli_support import run_command
from hf_vit.data import DataArguments
from hf_vit.training import (
    FinetuneModelArguments,
    FinetuneTrainArguments,
    parse_recipe_args,
    run_image_classification,
)


def main(argv=None):
    model_args, data_args, train_args = parse_recipe_args(
        (FinetuneModelArguments, DataArguments, FinetuneTrainArguments), argv
    )
    if not model_args.model_name_or_path:
        raise ValueError("Fine-tuning needs `model_name_or_path` (an hf_vit, transformers-ViT or converted checkpoint).")
    return run_image_classification(model_args, data_args, train_args)


if __name__ == "__main__":
    sys.exit(run_command(main))  # a user error: one message and exit code 2 (--debug shows the traceback)
