"""Masked patch prediction planning (ViT paper, appendix B.1.2): rates, split, sources, targets, determinism."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vit import ViTImageProcessor
from hf_vit.training.mpp.masking import (
    KEEP,
    MASK,
    REPLACE,
    MaskedPatchCollator,
    attention_guided_positions,
    gather_positions,
    mpp_targets,
    num_target_classes,
    patchify,
    plan_corruption,
    quantize_colors,
    sample_positions,
)


def test_half_of_the_patches_are_corrupted_distinct_and_uniform():
    generator = torch.Generator().manual_seed(0)
    positions = sample_positions(4000, 16, 0.5, generator=generator)
    assert positions.shape == (4000, 8)
    assert all(len(set(row.tolist())) == 8 for row in positions[:200])  # distinct within an image
    assert torch.all(positions[:, 1:] > positions[:, :-1])  # sorted
    # Every position is chosen with probability 0.5: counts over 4000 images are Binomial(4000, 0.5) (sd ~32).
    counts = torch.bincount(positions.flatten(), minlength=16).float()
    assert torch.all((counts - 2000).abs() < 160), counts
    assert sample_positions(10, 196, 0.15).shape == (10, 29)  # the paper's comparison rate


def test_the_80_10_10_split_holds_statistically():
    generator = torch.Generator().manual_seed(1)
    plan = plan_corruption(2000, 64, 0.5, (0.8, 0.1, 0.1), generator=generator)
    kinds = plan["corruption_kind"].flatten()
    n = kinds.numel()  # 64,000 draws: the shares' standard errors are ~0.0016 and ~0.0012
    shares = [(kinds == k).float().mean().item() for k in (MASK, REPLACE, KEEP)]
    assert abs(shares[0] - 0.8) < 0.008 and abs(shares[1] - 0.1) < 0.006 and abs(shares[2] - 0.1) < 0.006, (n, shares)
    # A configurable split is honoured too.
    other = plan_corruption(2000, 64, 0.5, (0.5, 0.0, 0.5), generator=generator)["corruption_kind"]
    assert (other == REPLACE).sum() == 0 and abs((other == MASK).float().mean().item() - 0.5) < 0.01


def test_replacements_come_from_other_images():
    generator = torch.Generator().manual_seed(2)
    plan = plan_corruption(8, 16, 0.5, generator=generator)
    source_image = plan["replacement_index"] // 16
    own_image = torch.arange(8)[:, None].expand_as(source_image)
    assert torch.all(source_image != own_image) and torch.all(plan["replacement_index"] < 8 * 16)
    single = plan_corruption(1, 16, 0.5, generator=generator)
    assert torch.all(single["replacement_index"] != single["corrupted_positions"])  # another patch of the image


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="mask_ratio"):
        sample_positions(2, 16, 0.0)
    with pytest.raises(ValueError, match="mask_split"):
        plan_corruption(2, 16, 0.5, (0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="mpp_target"):
        mpp_targets(torch.zeros(1, 3, 8, 8), 4, "colour")


def test_a_patch_of_one_known_colour_gives_that_colours_class():
    # Image of 2x2 patches of 4x4 pixels with known colours (in [0, 1]).
    colours = {0: (1.0, 0.0, 0.0), 1: (0.0, 1.0, 0.0), 2: (0.3, 0.6, 0.9), 3: (0.0, 0.0, 0.0)}
    image = torch.zeros(1, 3, 8, 8)
    for index, colour in colours.items():
        row, col = divmod(index, 2)
        image[0, :, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = torch.tensor(colour)[:, None, None]
    targets = mpp_targets(image, 4, "mean_color")
    # 3 bits per channel: level = floor(v * 8) capped at 7; class = R * 64 + G * 8 + B.
    expected = [7 * 64, 7 * 8, 2 * 64 + 4 * 8 + 7, 0]
    assert targets.tolist() == [expected]
    assert num_target_classes("mean_color") == 512 and num_target_classes("pixels") == 0
    # Downsampled: 16 sub-patches, all of the patch's colour.
    down = mpp_targets(image, 4, "downsampled")
    assert down.shape == (1, 4, 16) and all(down[0, i].unique().tolist() == [expected[i]] for i in range(4))
    # Pixels: the patch itself.
    pixels = mpp_targets(image, 4, "pixels")
    assert pixels.shape == (1, 4, 48) and torch.allclose(pixels[0, 2].view(3, 16)[:, 0], torch.tensor(colours[2]))


def test_downsampled_target_sees_sub_patches_and_pools_adaptively():
    # A 4x4 patch whose pixels are all different colours: each sub-patch is one pixel.
    values = torch.linspace(0, 1, 16)
    image = values.view(1, 1, 4, 4).expand(1, 3, 4, 4).clone()
    down = mpp_targets(image, 4, "downsampled")
    grey = quantize_colors(values[:, None].expand(16, 3))
    assert down[0, 0].tolist() == grey.tolist()
    # Patch side 6 (not a multiple of 4): adaptive pooling still gives 16 sub-patches per patch.
    assert mpp_targets(torch.rand(2, 3, 12, 12), 6, "downsampled").shape == (2, 4, 16)


def test_patchify_follows_the_models_token_order():
    image = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    patches = patchify(image, 4)  # grid 2 x 3
    assert patches.shape == (2, 6, 3, 4, 4)
    torch.testing.assert_close(patches[1, 4], image[1, :, 4:8, 4:8])  # token 4 = row 1, col 1


def test_collator_targets_come_from_unnormalised_pixels_and_plans_are_seeded():
    processor = ViTImageProcessor(size={"height": 16, "width": 16})  # normalises to [-1, 1]
    red = Image.fromarray(np.full((16, 16, 3), (255, 0, 0), dtype=np.uint8))
    grey = Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8))
    examples = [{"image": red}, {"image": grey}, {"image": red}]
    collate = MaskedPatchCollator(processor, patch_size=4, seed=0, return_all_targets=True)
    batch = collate(examples)
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["corrupted_positions"].shape == (3, 8)
    assert torch.all(batch["all_targets"][0] == 7 * 64) and torch.all(batch["all_targets"][1] == 4 * 64 + 4 * 8 + 4)
    torch.testing.assert_close(batch["labels"], gather_positions(batch["all_targets"], batch["corrupted_positions"]))
    again = MaskedPatchCollator(processor, patch_size=4, seed=0)(examples)
    for key in ("corrupted_positions", "corruption_kind", "replacement_index", "labels"):
        assert torch.equal(again[key], batch[key]), key
    other = MaskedPatchCollator(processor, patch_size=4, seed=1)(examples)
    assert not torch.equal(other["corrupted_positions"], batch["corrupted_positions"])


def test_attention_guided_positions_pick_the_most_attended_patches():
    scores = torch.tensor([[0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0]])
    assert attention_guided_positions(scores, 0.5).tolist() == [[1, 3, 5, 7]]
    generator = torch.Generator().manual_seed(0)
    mixed = attention_guided_positions(scores.expand(500, 8), 0.5, random_share=0.5, generator=generator)
    # Two of four from the top (positions 1 and 3), two at random among the other six.
    assert torch.all((mixed == 1).any(1) & (mixed == 3).any(1))
    assert all(len(set(row.tolist())) == 4 for row in mixed)
    picked = torch.bincount(mixed.flatten(), minlength=8)
    assert picked[5] > 100 and picked[0] > 100  # the random share reaches low-attention patches too
