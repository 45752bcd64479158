"""hf_vit.analysis: attention rollout, attention distance, position-embedding similarity, filters, figures, CLI."""

import itertools
import json
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hf_vit import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel
from hf_vit.analysis import (
    analyze_images,
    attention_distance,
    attention_maps,
    attention_rollout,
    collect_attentions,
    filter_principal_components,
    mean_attention_distance,
    model_attention,
    model_position_embedding_similarity,
    patch_embedding_filters,
    position_embedding_similarity,
    position_embedding_table,
    position_similarity_summary,
    rollout_maps,
    token_map,
    uniform_attention_distance,
)
from hf_vit.analysis import plotting
from hf_vit.cli import main

from .common import TINY


def _random_attention(batch, layers, heads, tokens, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, layers, heads, tokens, tokens, generator=generator).softmax(dim=-1)


def _pairwise_mean_distance(rows, cols, token_h, token_w):
    """Mean pixel distance over all ordered pairs of patch centres (self pairs included), by plain loops."""
    centres = [((r + 0.5) * token_h, (c + 0.5) * token_w) for r in range(rows) for c in range(cols)]
    total = sum(math.dist(a, b) for a, b in itertools.product(centres, centres))
    return total / len(centres) ** 2


# ---------------------------------------------------------------------------------------------------------------------
# Attention rollout and maps


def test_rollout_of_identity_attention_is_identity():
    attentions = torch.eye(17).expand(2, 3, 4, 17, 17)
    torch.testing.assert_close(attention_rollout(attentions), torch.eye(17).expand(2, 17, 17))


def test_rollout_matches_a_hand_composition_in_layer_order():
    attentions = _random_attention(1, 3, 2, 5)
    expected = np.eye(5)
    for layer in range(3):
        fused = attentions[0, layer].double().numpy().mean(axis=0) + np.eye(5)
        fused /= fused.sum(axis=1, keepdims=True)
        expected = fused @ expected  # the later layer acts on the earlier layer's output
    rollout = attention_rollout(attentions)[0].double().numpy()
    np.testing.assert_allclose(rollout, expected, rtol=1e-6)
    # Composing in the other order gives another matrix: the test can tell the order apart.
    assert not np.allclose(rollout, expected.T)
    np.testing.assert_allclose(rollout.sum(axis=1), 1.0, rtol=1e-6)


def test_rollout_rejects_unknown_head_fusion():
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(_random_attention(1, 1, 1, 3), head_fusion="median")


def test_token_map_reads_the_class_row_or_the_mean_over_queries():
    matrix = torch.arange(25.0).reshape(5, 5)  # 1 prefix token + a 2x2 grid
    torch.testing.assert_close(token_map(matrix, (2, 2), 1), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    no_class = torch.arange(16.0).reshape(4, 4)
    torch.testing.assert_close(token_map(no_class, (2, 2), 0), no_class.mean(dim=0).reshape(2, 2))
    with pytest.raises(ValueError, match="2x2 patch grid"):
        token_map(matrix, (2, 2), 0)


def test_attention_maps_keep_layers_and_heads():
    attentions = _random_attention(2, 3, 4, 1 + 6)
    maps = attention_maps(attentions, (2, 3), 1)
    assert maps.shape == (2, 3, 4, 2, 3)
    torch.testing.assert_close(maps[1, 2, 3].reshape(-1), attentions[1, 2, 3, 0, 1:])


# ---------------------------------------------------------------------------------------------------------------------
# Mean attention distance


@pytest.mark.parametrize("grid, token_pixel_size", [((4, 4), (8, 8)), ((3, 5), (2, 3))])
def test_head_attending_to_itself_has_distance_zero(grid, token_pixel_size):
    n = grid[0] * grid[1]
    attentions = torch.eye(1 + n).expand(2, 1, 3, 1 + n, 1 + n)
    distances = attention_distance(attentions, grid, token_pixel_size, num_prefix_tokens=1)
    assert distances.shape == (2, 1, 3)
    torch.testing.assert_close(distances, torch.zeros(2, 1, 3))


@pytest.mark.parametrize("grid, token_pixel_size", [((4, 4), (8, 8)), ((3, 5), (2, 3)), ((7, 7), (16, 16))])
def test_uniform_head_has_the_mean_pairwise_distance(grid, token_pixel_size):
    n = grid[0] * grid[1]
    expected = _pairwise_mean_distance(*grid, *token_pixel_size)
    uniform = torch.full((1, 2, 1, 1 + n, 1 + n), 1.0 / (1 + n))  # also attends to the class token
    distances = attention_distance(uniform, grid, token_pixel_size, num_prefix_tokens=1)
    torch.testing.assert_close(distances, torch.full((1, 2, 1), expected))
    assert uniform_attention_distance(grid, token_pixel_size) == pytest.approx(expected, rel=1e-9)
    # Without renormalising, the class token's share (1 / (1 + n)) counts as distance 0.
    raw = attention_distance(uniform, grid, token_pixel_size, num_prefix_tokens=1, renormalize=False)
    torch.testing.assert_close(raw, torch.full((1, 2, 1), expected * n / (1 + n)))


def test_neighbour_head_has_the_token_width_as_distance():
    grid, token = (2, 3), (5, 7)
    attention = torch.zeros(6, 6)
    for r in range(2):
        for c in range(3):
            attention[r * 3 + c, r * 3 + (c + 1) % 3] = 1.0  # the next column, wrapping around
    distances = attention_distance(attention.expand(1, 1, 1, 6, 6), grid, token, num_prefix_tokens=0)
    assert float(distances) == pytest.approx((2 * 7 + 1 * 14) / 3)


# ---------------------------------------------------------------------------------------------------------------------
# On a model: any attention backend, no global switch


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return ViTModel(ViTConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def tiny_hybrid():
    # The ResNet stem alone (stride 4) and 2x2 patches on its feature map: one token covers 8x8 input pixels.
    torch.manual_seed(0)
    config = ViTConfig(**{**TINY, "patch_size": 2}, backbone_depths=[], position_embedding_type="relative")
    assert tuple(config.token_pixel_size) == (8, 8)
    return ViTModel(config).eval()


def test_attention_is_the_same_under_sdpa_and_eager_and_the_backend_stays(tiny_model):
    pixel_values = torch.randn(2, 3, 32, 32)
    assert tiny_model.config._attn_implementation == "sdpa"
    eager = ViTModel(ViTConfig(**TINY, attn_implementation="eager")).eval()
    assert eager.config._attn_implementation == "eager"
    eager.load_state_dict(tiny_model.state_dict())
    sdpa_attentions = collect_attentions(tiny_model, pixel_values)
    assert sdpa_attentions.shape == (2, 2, 4, 17, 17)
    torch.testing.assert_close(sdpa_attentions, collect_attentions(eager, pixel_values))
    torch.testing.assert_close(
        mean_attention_distance(tiny_model, [pixel_values]), mean_attention_distance(eager, [pixel_values])
    )
    assert tiny_model.config._attn_implementation == "sdpa"


def test_mean_attention_distance_counts_every_image_once(tiny_model):
    pixel_values = torch.randn(3, 3, 32, 32)
    whole = mean_attention_distance(tiny_model, [pixel_values])
    split = mean_attention_distance(tiny_model, [pixel_values[:1], pixel_values[1:]])
    assert whole.shape == (2, 4)
    torch.testing.assert_close(whole, split)
    with pytest.raises(ValueError, match="no images"):
        mean_attention_distance(tiny_model, [])


def test_head_model_analyses_its_encoder(tiny_model):
    classifier = ViTForImageClassification(ViTConfig(**TINY)).eval()
    classifier.vit.load_state_dict(tiny_model.state_dict())
    pixel_values = torch.randn(1, 3, 32, 32)
    attentions = collect_attentions(classifier, pixel_values)
    torch.testing.assert_close(attentions, collect_attentions(tiny_model, pixel_values))
    maps = rollout_maps(attentions, (4, 4), 1)
    assert maps.shape == (1, 4, 4) and torch.all(maps > 0)


def test_hybrid_distances_are_in_input_pixels(tiny_hybrid):
    pixel_values = torch.randn(2, 3, 32, 32)
    attentions, grid, num_prefix_tokens, _ = model_attention(tiny_hybrid, pixel_values)
    assert grid == (4, 4) and attentions.shape == (2, 2, 4, 17, 17)
    distances = mean_attention_distance(tiny_hybrid, [pixel_values])
    in_pixels = attention_distance(attentions, grid, (8, 8), num_prefix_tokens).mean(dim=0)
    on_feature_map = attention_distance(attentions, grid, (2, 2), num_prefix_tokens).mean(dim=0)
    torch.testing.assert_close(distances, in_pixels)
    torch.testing.assert_close(distances, 4 * on_feature_map)


def test_analysis_skips_what_a_model_does_not_define(tiny_hybrid, tmp_path):
    images = _write_images(tmp_path / "images", 2)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    result = analyze_images(tiny_hybrid, processor, sorted(images.iterdir()), tmp_path / "out", progress=False)
    assert set(result["skipped"]) == {"embedding_filters", "position_embedding_similarity"}
    assert "hybrid" in result["skipped"]["embedding_filters"]
    assert set(result["figures"]) == {"rollout", "layers", "distance"}
    assert not (tmp_path / "out" / "embedding_filters.png").exists()
    assert result["model"]["token_pixel_size"] == [8, 8]


# ---------------------------------------------------------------------------------------------------------------------
# Position embeddings


def test_position_similarity_of_a_row_column_table():
    rows, cols = 3, 4
    one_hot_rows, one_hot_cols = torch.eye(rows), torch.eye(cols)
    table = torch.stack([torch.cat([one_hot_rows[r], one_hot_cols[c]]) for r in range(rows) for c in range(cols)])
    similarity = position_embedding_similarity(table, (rows, cols))  # no prefix row: a (N, D) table
    for r, c, i, j in itertools.product(range(rows), range(cols), range(rows), range(cols)):
        assert float(similarity[r, c, i, j]) == pytest.approx(((r == i) + (c == j)) / 2)
    with_class = torch.cat([torch.randn(1, 7), table])[None]  # (1, 1 + N, D): the class row is dropped
    torch.testing.assert_close(position_embedding_similarity(with_class, (rows, cols)), similarity)
    summary = position_similarity_summary(similarity)
    assert summary["same_row"] == pytest.approx(0.5) and summary["same_column"] == pytest.approx(0.5)
    assert summary["elsewhere"] == pytest.approx(0.0) and summary["correlation_with_grid_distance"] < 0
    with pytest.raises(ValueError, match="4x4 patch grid"):
        position_embedding_similarity(table, (4, 4))


@pytest.mark.parametrize("kind", ["learned_2d", "sincos_2d"])
def test_position_similarity_of_the_2d_variants(kind):
    model = ViTModel(ViTConfig(**TINY, position_embedding_type=kind)).eval()
    table = position_embedding_table(model)
    assert table.shape == (1, 16, 32)  # patch rows only: these variants give the class token none
    similarity = model_position_embedding_similarity(model)
    if kind == "learned_2d":
        # Patches in one column share the column half of their embedding: their similarity comes from the row half.
        columns = model.embeddings.column_position_embeddings.detach()[0]  # (cols, D/2)
        rows = model.embeddings.row_position_embeddings.detach()[0]  # (rows, D/2)
        a, b = torch.cat([columns[1], rows[0]]), torch.cat([columns[1], rows[3]])
        assert float(similarity[0, 1, 3, 1]) == pytest.approx(float(F.cosine_similarity(a, b, dim=0)), rel=1e-5)
    else:
        # Fixed sin-cos: neighbours are more alike than far patches, along rows and columns alike.
        assert similarity[0, 0, 0, 1] > similarity[0, 0, 0, 3] and similarity[0, 0, 1, 0] > similarity[0, 0, 3, 0]


@pytest.mark.parametrize("kind", ["none", "relative"])
def test_no_absolute_table_is_a_clear_error(kind):
    model = ViTModel(ViTConfig(**TINY, position_embedding_type=kind))
    with pytest.raises(ValueError, match=f"position_embedding_type='{kind}'"):
        position_embedding_table(model)


def test_model_position_embedding_table(tiny_model):
    table = position_embedding_table(tiny_model)
    torch.testing.assert_close(table, tiny_model.embeddings.position_embeddings.detach())
    similarity = model_position_embedding_similarity(tiny_model)
    assert similarity.shape == (4, 4, 4, 4)
    torch.testing.assert_close(torch.diagonal(similarity.reshape(16, 16)), torch.ones(16))


# ---------------------------------------------------------------------------------------------------------------------
# Patch-embedding filters


def test_filter_components_recover_a_planted_basis():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(3 * 4 * 4, 2, generator=generator, dtype=torch.float64))[0].T  # (2, 48)
    strengths = torch.tensor([5.0, 1.0], dtype=torch.float64)
    scales = torch.randn(64, 2, generator=generator, dtype=torch.float64) * strengths
    filters = (scales @ basis + 3.0).reshape(64, 3, 4, 4)  # a constant offset that centring removes
    components, explained = filter_principal_components(filters, num_components=5)
    assert components.shape == (5, 3, 4, 4)
    assert float(explained[:2].sum()) == pytest.approx(1.0, abs=1e-6)
    assert explained[0] > explained[1]
    flat = components[:2].double().reshape(2, -1)
    # The top two components span the planted plane exactly, and the stronger direction comes first.
    torch.testing.assert_close(flat @ basis.T @ basis, flat, atol=1e-5, rtol=0)
    assert abs(float(flat[0] @ basis[0])) > 0.99


def test_filters_of_a_plain_vit_and_not_of_a_hybrid(tiny_model, tiny_hybrid):
    filters = patch_embedding_filters(tiny_model)
    assert filters.shape == (32, 3, 8, 8)
    torch.testing.assert_close(filters, tiny_model.embeddings.patch_embeddings.projection.weight.detach())
    torch.testing.assert_close(patch_embedding_filters(tiny_model, sum_channels=True), filters.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="hybrid"):
        patch_embedding_filters(tiny_hybrid)


# ---------------------------------------------------------------------------------------------------------------------
# Figures


def _png_variance(path):
    with Image.open(path) as image:
        return float(np.asarray(image.convert("RGB"), dtype=np.float32).var())


def test_figures_are_written_and_not_blank(tmp_path):
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    maps = torch.rand(2, 4, 4)
    figures = {
        "rollout": plotting.plot_attention_rollout(list(images), maps, titles=["a", "b"]),
        "rollout_mask": plotting.plot_attention_rollout(list(images[..., :1]), maps, style="mask"),
        "layers": plotting.plot_attention_maps(images[0], torch.rand(2, 3, 4, 4)),
        "distance": plotting.plot_attention_distance(torch.rand(3, 4) * 10, uniform_distance=6.0, image_size=(16, 16)),
        "position": plotting.plot_position_similarity(torch.rand(3, 4, 3, 4) * 2 - 1),
        "filters": plotting.plot_filter_components(torch.randn(5, 3, 4, 4), torch.rand(5)),
        "filters_grey": plotting.plot_filter_components(torch.randn(3, 1, 4, 4)),
    }
    for name, figure in figures.items():
        path = tmp_path / f"{name}.png"
        figure.savefig(path)
        assert _png_variance(path) > 0, name
    with pytest.raises(ValueError, match="style"):
        plotting.overlay(images[0], maps[0], style="glow")


def test_overlay_upsamples_the_map_onto_the_image():
    image = np.full((8, 8, 3), 0.5, dtype=np.float32)
    token_map_ = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    masked = plotting.overlay(image, token_map_, style="mask")
    assert masked.shape == (8, 8, 3)
    assert masked[7, 7, 0] == pytest.approx(0.5) and masked[0, 0, 0] == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _save_model(path, **overrides):
    config = ViTConfig(**{**TINY, **overrides})
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    height, width = config.image_hw
    ViTImageProcessor(size={"height": height, "width": width}).save_pretrained(path)
    return path


def _write_images(folder, count, mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        array = (rng.random((30 + k, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(array).convert(mode).save(folder / f"img{k}.png")
    return folder


def test_cli_analyze_end_to_end(tmp_path, capsys):
    model = _save_model(tmp_path / "model")
    _write_images(tmp_path / "images" / "class_a", 3)
    extra = _write_images(tmp_path / "more", 1, mode="L")
    out = tmp_path / "out"
    code = main(
        ["analyze", str(model), "--images", str(tmp_path / "images"), str(extra / "img0.png"), "--out", str(out),
         "--batch-size", "2", "--num-overlays", "2", "--no-progress", "--sum-filter-channels"]
    )
    assert code == 0
    result = json.loads((out / "analysis.json").read_text())
    assert result["num_images"] == 4 and result["grid"] == [4, 4]
    distances = np.array(result["mean_attention_distance"]["pixels"])
    assert distances.shape == (2, 4) and np.all(distances > 0) and np.all(distances < 32 * math.sqrt(2))
    assert len(result["attention_rollout"]["maps"]) == 4
    assert np.array(result["position_embedding_similarity"]["cosine"]).shape == (4, 4, 4, 4)
    assert len(result["embedding_filters"]["explained_variance_ratio"]) == 28
    assert result["embedding_filters"]["channels_summed"] is True
    assert set(result["figures"]) == {"rollout", "layers", "distance", "position", "filters"}
    for name in result["figures"].values():
        assert _png_variance(out / name) > 0, name
    printed = capsys.readouterr().out
    assert "attention_rollout.png" in printed and "analysis.json" in printed

    # The same numbers, computed directly: the CLI distances are the library's.
    processor = ViTImageProcessor.from_pretrained(model)
    paths = sorted((tmp_path / "images").rglob("*.png")) + [extra / "img0.png"]
    pixel_values = processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    expected = mean_attention_distance(ViTModel.from_pretrained(model), [pixel_values])
    np.testing.assert_allclose(distances, expected.numpy(), rtol=1e-4)


def test_cli_analyze_greyscale_model_without_class_token(tmp_path):
    model = _save_model(tmp_path / "model", num_channels=1, pooling="gap", image_size=28, patch_size=7)
    images = _write_images(tmp_path / "images", 2, mode="L")
    out = tmp_path / "out"
    assert main(["analyze", str(model), "--images", str(images), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert result["grid"] == [4, 4] and result["model"]["use_class_token"] is False
    assert (out / "embedding_filters.png").is_file()


def test_cli_analyze_errors_name_the_problem(tmp_path, capsys):
    model = _save_model(tmp_path / "model")
    images = _write_images(tmp_path / "images", 1)
    out = str(tmp_path / "out")

    assert main(["analyze", str(tmp_path / "missing"), "--images", str(images), "--out", out]) == 2
    assert "missing: no such model folder" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["analyze", str(model), "--images", str(empty), "--out", out]) == 2
    assert "No images found" in capsys.readouterr().err

    (images / "broken.png").write_bytes(b"not a png")
    assert main(["analyze", str(model), "--images", str(images), "--out", out]) == 2
    assert "broken.png: cannot read this image" in capsys.readouterr().err
    assert not (tmp_path / "out" / "analysis.json").exists()
