"""BiRefNet: Swin backbone on the image and on its half-size copy, context squeeze, decoder.

Written from spec.md (sections 1-3). Unlike the official module, eval-mode forward returns the
logits tensor itself rather than a one-element list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamer.model.blocks import BasicDecBlk, interp
from streamer.model.decoder import PATCH_ORDERS, Decoder
from streamer.model.swin import SWIN_L, SWIN_T, SwinConfig, SwinTransformer

MULTIPLE = 32
"""Input sides must be multiples of this: the decoder stacks 32x32 tiles of the image."""


@dataclass(frozen=True)
class Variant:
    name: str
    swin: SwinConfig
    patch_order: str
    repo_id: str
    """Default Hugging Face repository of the official weights."""
    size: tuple[int, int] = (1024, 1024)
    """Default network input (height, width): the size the release was trained at."""

    @property
    def architecture(self) -> str:
        return "Swin-L" if self.swin == SWIN_L else "Swin-T"


# One row per official release. Backbones and training sizes are from the official README and model
# zoo; patch orders follow the upload dates: weights trained before the einops patch stacking
# (2024-11-05, spec.md section 6) use `legacy`, later ones `einops`. `general` has been re-uploaded
# since that change. Rows the official README does not describe (dynamic-matting, 512x512) carry the
# family's defaults; the README's model table says which facts are confirmed.
VARIANTS = {
    "portrait": Variant("portrait", SWIN_L, "legacy", "ZhengPeng7/BiRefNet-portrait"),
    "lite": Variant("lite", SWIN_T, "legacy", "ZhengPeng7/BiRefNet_lite"),
    "general": Variant("general", SWIN_L, "einops", "ZhengPeng7/BiRefNet"),
    "matting": Variant("matting", SWIN_L, "legacy", "ZhengPeng7/BiRefNet-matting"),
    "dynamic": Variant("dynamic", SWIN_L, "einops", "ZhengPeng7/BiRefNet_dynamic"),
    "dynamic-matting": Variant("dynamic-matting", SWIN_L, "einops", "ZhengPeng7/BiRefNet_dynamic-matting"),
    "HR": Variant("HR", SWIN_L, "einops", "ZhengPeng7/BiRefNet_HR", (2048, 2048)),
    "HR-matting": Variant("HR-matting", SWIN_L, "einops", "ZhengPeng7/BiRefNet_HR-matting", (2048, 2048)),
    # Trained at 2560x1440 (width x height), i.e. landscape 16:9 frames.
    "lite-2K": Variant("lite-2K", SWIN_T, "legacy", "ZhengPeng7/BiRefNet_lite-2K", (1440, 2560)),
    "512x512": Variant("512x512", SWIN_L, "einops", "ZhengPeng7/BiRefNet_512x512", (512, 512)),
}


class BiRefNet(nn.Module):
    def __init__(self, swin: SwinConfig, patch_order: str = "legacy"):
        super().__init__()
        self.bb = SwinTransformer(swin)
        # Each stage's channels double when the half-resolution features are concatenated.
        ch = tuple(2 * d for d in reversed(swin.dims))
        self.squeeze_module = nn.Sequential(BasicDecBlk(sum(ch), ch[0]))
        self.decoder = Decoder(ch, patch_order)

    @property
    def patch_order(self) -> str:
        return self.decoder.patch_order

    @patch_order.setter
    def patch_order(self, order: str) -> None:
        if order not in PATCH_ORDERS:
            raise ValueError(f"patch order {order!r} is not one of {', '.join(PATCH_ORDERS)}")
        self.decoder.patch_order = order

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        full = self.bb(x)
        half = self.bb(interp(x, (h // 2, w // 2)))
        feats = [torch.cat([f, interp(g, f.shape[-2:])], dim=1) for f, g in zip(full, half, strict=True)]
        x1, x2, x3, x4 = feats
        size = x4.shape[-2:]
        context = torch.cat([interp(x1, size), interp(x2, size), interp(x3, size), x4], dim=1)
        return [x1, x2, x3, self.squeeze_module(context)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ImageNet-normalised (B, 3, H, W), sides multiples of 32 -> logits (B, 1, H, W)."""
        h, w = x.shape[-2:]
        if h % MULTIPLE or w % MULTIPLE:
            raise ValueError(f"BiRefNet input {h}x{w}: both sides must be multiples of {MULTIPLE}")
        return self.decoder(x, *self.encode(x))


def build_model(variant: str = "portrait", patch_order: str | None = None) -> BiRefNet:
    """An eval-mode BiRefNet of `variant` with untrained weights; load a state_dict into it."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    return BiRefNet(spec.swin, patch_order or spec.patch_order).eval()
