"""Deterministic synthetic weights (recipe.md): every state_dict entry from a crc32-seeded generator.

They stand in for the official weights, which cannot be downloaded in tests: the shared fixtures
hold the official network's outputs for exactly these tensors.
"""

from __future__ import annotations

import math
import zlib

import torch

from streamer.model.swin import relative_position_index


def make_tensor(key: str, shape: tuple[int, ...], shapes: dict[str, tuple[int, ...]]) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("relative_position_index"):
        return relative_position_index(math.isqrt(shape[0]))
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    r = torch.randn(shape, generator=g, dtype=torch.float32)
    if key.endswith("relative_position_bias_table"):
        return 0.02 * r
    if key.endswith("running_mean"):
        return 0.1 * r
    if key.endswith("running_var"):
        return 1.0 + 0.1 * r.abs()
    if key.endswith(".weight"):
        return r / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else 1.0 + 0.1 * r
    if key.endswith(".bias"):
        sibling = shapes.get(key[: -len("bias")] + "weight")
        return 0.1 * r if sibling is not None and len(sibling) == 1 else 0.02 * r
    raise ValueError(f"no recipe rule for state_dict key {key!r}")


def make_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """Recipe weights for `variant`, with the key set and shapes of our (= the official) model."""
    from streamer.model.birefnet import build_model

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_model(variant).state_dict().items()}
    return {k: make_tensor(k, s, shapes) for k, s in shapes.items()}
