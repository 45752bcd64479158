"""Test setup: no network, deterministic seeds, a variant-parametrisation hook for the generic model tests."""

import os

# Tests never need the Hub: every Hub call fails at once instead of retrying for seconds.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _hf_vit_cache(tmp_path_factory):
    # hf_vit's own cache (the image checks of hf_vit.data.screening) goes to a fresh folder, never the user's.
    previous = os.environ.get("HF_VIT_CACHE")
    os.environ["HF_VIT_CACHE"] = str(tmp_path_factory.mktemp("hf_vit_cache"))
    yield
    if previous is None:
        os.environ.pop("HF_VIT_CACHE", None)
    else:
        os.environ["HF_VIT_CACHE"] = previous


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _reset_accelerate_state() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; a test that runs a recipe in this process makes its Accelerator from
    scratch, and leaves none behind. Yields the reset, for a test that runs several recipes in turn."""
    _reset_accelerate_state()
    yield _reset_accelerate_state
    _reset_accelerate_state()


def pytest_generate_tests(metafunc):
    # Generic model tests take a `variant` argument: one run per entry of the test class's `variants` table.
    if "variant" in metafunc.fixturenames and metafunc.cls is not None:
        variants = getattr(metafunc.cls, "variants", {"default": {}})
        metafunc.parametrize("variant", list(variants.values()), ids=list(variants.keys()))
