"""Shared fixtures: synthetic BiRefNet weights (recipe.md) cached per session, and CUDA skipping."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

DATA = Path(__file__).parent / "data"

# One intra-op thread: on this shared 2-core machine OpenMP workers spin-wait for each other and
# a 64x64 forward measured 0.3 s single-threaded but 4-8 s with two threads under load.
torch.set_num_threads(1)

# `auto` would convert the network with OpenVINO for every new size (seconds each): tests run torch
# unless they ask for OpenVINO (tests/test_openvino.py). Subprocesses inherit it.
os.environ["STREAMER_BACKEND"] = "torch"

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
"""Same as `@pytest.mark.cuda`: tests carrying that marker are skipped without a GPU."""


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def recipe_state_dict():
    """variant -> recipe state dict (built once per session: portrait has 220M parameters)."""
    from streamer.model.recipe import make_state_dict

    return functools.cache(make_state_dict)


@pytest.fixture(scope="session")
def recipe_model(recipe_state_dict):
    """variant -> eval-mode CPU model holding the recipe weights (shared: do not modify it)."""
    from streamer.model import build_model

    @functools.cache
    def make(variant: str):
        model = build_model(variant)
        model.load_state_dict(recipe_state_dict(variant), strict=True)
        return model

    return make


@pytest.fixture(scope="session")
def recipe_weights(recipe_state_dict, tmp_path_factory):
    """variant -> path of a .safetensors file of the recipe weights."""
    folder = tmp_path_factory.mktemp("recipe-weights")

    @functools.cache
    def write(variant: str) -> Path:
        path = folder / f"{variant}.safetensors"
        save_file(recipe_state_dict(variant), str(path))
        return path

    return write


@pytest.fixture
def lite(recipe_weights):
    """Command-line options for the small lite network with recipe weights, on the CPU."""
    return [
        "--variant",
        "lite",
        "--weights",
        str(recipe_weights("lite")),
        "--size",
        "64x64",
        "--device",
        "cpu",
    ]
