"""Principal components of the patch-embedding filters (ViT paper, section 4.5, Fig. 7 left).

The patch embedding E maps each flattened P x P x C patch to D numbers: D filters of P x P x C pixels. Their top
principal components, drawn as small RGB patches, resemble plausible basis functions for the fine structure inside
a patch (the paper shows the first 28 for ViT-L/32).

For a hybrid the embedding acts on the CNN's feature map (1 x 1 patches over hundreds of channels), not on pixels:
its filters have no picture, and this analysis is not defined there (a `ValueError` says so).
"""

import torch

from .attention import _base_model


def _is_hybrid(config) -> bool:
    is_hybrid = getattr(config, "is_hybrid", None)
    return bool(is_hybrid) if is_hybrid is not None else getattr(config, "backbone_depths", None) is not None


@torch.no_grad()
def patch_embedding_filters(model, sum_channels: bool = False) -> torch.Tensor:
    """
    The D filters of the patch embedding as pixel patches: (D, C, P, P), float32.

    `sum_channels=True` gives (D, 1, P, P): each filter summed over its colour channels, which is the filter a
    greyscale image replicated to RGB actually sees. For a model trained on such images only that sum is learned;
    how it splits over R, G and B stays what the initialisation made it.
    """
    config = model.config
    if _is_hybrid(config):
        raise ValueError(
            "The patch-embedding filters of a hybrid act on the ResNet's feature map, not on image pixels, so they "
            "have no RGB picture: the filter figure is defined for plain ViTs only."
        )
    patch_embeddings = _base_model(model).embeddings.patch_embeddings
    projection = getattr(patch_embeddings, "projection", None)
    weight = getattr(projection, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError(f"Found no patch-embedding convolution on {type(model).__name__}.")
    if weight.shape[1] != config.num_channels:
        raise ValueError(
            f"The patch embedding reads {weight.shape[1]} channels but the image has {config.num_channels}: its "
            "filters are not pixel patches."
        )
    weight = weight.detach().float().cpu()
    return weight.sum(dim=1, keepdim=True) if sum_channels else weight


def filter_principal_components(filters: torch.Tensor, num_components: int = 28):
    """
    Principal components of a set of filters: (D, C, P, P) -> (components (k, C, P, P), explained variance ratio (k,)).

    The filters are the samples: they are centred, and the right singular vectors of the (D, C*P*P) matrix,
    ordered by variance, are the components (unit norm, sign arbitrary). `k = min(num_components, D, C*P*P)`.
    """
    if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
        raise ValueError(f"`num_components` must be a positive integer, got {num_components!r}.")
    filters = torch.as_tensor(filters).double()
    if filters.ndim != 4:
        raise ValueError(f"`filters` must have shape (D, C, P, P), got {tuple(filters.shape)}.")
    count, *patch_shape = filters.shape
    flat = filters.reshape(count, -1)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, singular_values, vh = torch.linalg.svd(flat, full_matrices=False)
    variance = singular_values**2
    ratio = variance / variance.sum().clamp_min(1e-30)
    k = min(num_components, vh.shape[0])
    return vh[:k].reshape(k, *patch_shape).float(), ratio[:k].float()


def model_filter_components(model, num_components: int = 28, sum_channels: bool = False):
    """`filter_principal_components` of a model's patch embedding (plain ViTs only; see the module docstring)."""
    return filter_principal_components(patch_embedding_filters(model, sum_channels), num_components)


__all__ = ["filter_principal_components", "model_filter_components", "patch_embedding_filters"]
