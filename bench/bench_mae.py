"""MAE pre-training speed: hf_vit's ViTForMaskedAutoencoding against transformers' ViTMAEForPreTraining, side by side
in one process.

Whole training steps (forward with the loss, backward, AdamW step) on the same images with the same masking ratio
(75%: both keep int(N / 4) patches; each model draws its own masking per step, as in training), in interleaved rounds
(bench/common.py); the table gives images/s and hf_vit's speed over transformers' (the median of per-round ratios).
Both models have the same architecture: exact GELU, LayerNorm eps 1e-6, qkv bias, MAE's decoder. With
`--against-mpp`, hf_vit's masked patch prediction (the ViT paper's objective: every patch through the encoder, 50%
corrupted) at the same encoder size is timed in the same rounds.

    python bench/bench_mae.py                                   # B/16 at 224 (decoder 512 x 8), batch 8
    python bench/bench_mae.py --size small                      # S/16 at 224 (decoder 256 x 4), batch 16
    python bench/bench_mae.py --size study --against-mpp        # the Fashion-MNIST study's shapes, batch 256
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, interleaved_rounds, markdown_table, median, ratio_cell  # noqa: E402

from hf_vit import ViTConfig, ViTForMaskedAutoencoding, ViTForMaskedPatchPrediction  # noqa: E402


# name -> (encoder fields, decoder (width, depth, heads, MLP), image size, batch)
SIZES = {
    "b16": (dict(patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
            (512, 8, 16, 2048), 224, 8),
    "small": (dict(patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
              (256, 4, 8, 1024), 224, 16),
    "study": (dict(patch_size=4, hidden_size=96, num_hidden_layers=6, num_attention_heads=4, intermediate_size=384),
              (64, 2, 4, 256), 28, 256),
}


def build(size: str, mask_ratio: float):
    import transformers

    encoder, (width, depth, heads, mlp), image_size, _ = SIZES[size]
    common = dict(image_size=image_size, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
                  decoder_hidden_size=width, decoder_num_hidden_layers=depth, decoder_num_attention_heads=heads,
                  decoder_intermediate_size=mlp, mask_ratio=mask_ratio, norm_pix_loss=True, **encoder)
    torch.manual_seed(0)
    ours = ViTForMaskedAutoencoding(ViTConfig(position_embedding_type="sincos_2d",
                                              position_embedding_sincos_style="mae", **common))
    torch.manual_seed(0)
    theirs = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(attn_implementation="sdpa", **common))
    mpp_config = ViTConfig(image_size=image_size, hidden_act="gelu", layer_norm_eps=1e-6, **encoder)
    return ours, theirs, mpp_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="b16")
    parser.add_argument("--batch", type=int, help="default: the size's (8 for b16, 16 for small, 256 for study)")
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--against-mpp", action="store_true", help="also time hf_vit's masked patch prediction")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    image_size, default_batch = SIZES[args.size][2], SIZES[args.size][3]
    batch = args.batch or default_batch
    ours, theirs, mpp_config = build(args.size, args.mask_ratio)
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))

    def trainer(model, inputs):
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    runners = {"hf_vit": trainer(ours, {"pixel_values": pixel_values}),
               "transformers": trainer(theirs, {"pixel_values": pixel_values})}
    if args.against_mpp:
        from hf_vit.training.mpp.masking import plan_corruption

        torch.manual_seed(0)
        mpp = ViTForMaskedPatchPrediction(mpp_config)
        plan = plan_corruption(batch, mpp_config.num_patches, 0.5, generator=torch.Generator().manual_seed(0))
        labels = torch.randint(0, 512, plan["corrupted_positions"].shape)
        runners["hf_vit MPP (50%, every patch encoded)"] = trainer(mpp, {"pixel_values": pixel_values, **plan,
                                                                         "labels": labels})
    seconds = interleaved_rounds(runners, args.rounds, args.iters, warmup=1)
    reference = seconds["transformers"]
    rows = []
    for name, values in seconds.items():
        rows.append([name, f"{batch / median(values):.2f}", ratio_cell(values, reference)])
    env = environment(["transformers"])
    kept = max(1, int(ours.config.num_patches * (1 - args.mask_ratio)))
    print(f"MAE training step, {args.size}: {image_size}px, {ours.config.num_patches} patches ({kept} kept), batch "
          f"{batch}, fp32; torch {env['torch']} ({env['torch_threads']} threads), transformers {env['transformers']}, "
          f"{env['cpu']}; load average {os.getloadavg()[0]:.1f}")
    print(markdown_table(["model", "images/s", "vs transformers ViTMAE (median, range)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
