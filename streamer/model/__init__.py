"""BiRefNet network, its weights and the synthetic test recipe."""

from streamer.model.birefnet import MULTIPLE, VARIANTS, BiRefNet, build_model
from streamer.model.decoder import PATCH_ORDERS

__all__ = ["MULTIPLE", "PATCH_ORDERS", "VARIANTS", "BiRefNet", "build_model"]
