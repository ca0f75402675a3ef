"""The shared fixtures, registered for every test by tests/conftest.py."""

from __future__ import annotations

import pytest
import torch

from tests.support.image_folders import make_image_folder
from tests.support.store import ENGINES, Stores
from tests.support.tiny_models import load_tiny

# Tiny models run fastest on one thread, and PyTorch's spinning OpenMP threads slow small operations down by
# orders of magnitude when another process keeps the other core busy (CI machines have two).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one thread (tiny models run fastest, and reproducibly, on one), and a test that
    asks for more gives them back."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_clip():
    """The handle (unpacks as model, preprocess, tokenizer) of a 2-layer causal CLIP with random weights."""
    return load_tiny("test-tiny-clip", 0)


@pytest.fixture(scope="session")
def tiny_bidir():
    """A CustomTextCLIP with a bidirectional text tower pooled at the last position (SigLIP-style)."""
    return load_tiny("test-tiny-bidir", 1)


@pytest.fixture(params=ENGINES)
def stores(request, tiny_clip, tmp_path):
    """A :class:`~tests.support.store.Stores` on each engine, closed after the test."""
    s = Stores(request.param, tmp_path, tiny_clip)
    yield s
    s.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of 6 labelled images (cat, dog, car; 2 each), shared by a module's command-line tests."""
    return make_image_folder(tmp_path_factory.mktemp("cli") / "imgs", per_class=2)
