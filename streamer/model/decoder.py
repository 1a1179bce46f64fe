"""BiRefNet decoder (spec.md section 5) and the image-patch stacking it feeds at every scale."""

from __future__ import annotations

import torch
from torch import nn

from streamer.model.blocks import BasicDecBlk, BasicLatBlk, SimpleConvs, interp

PATCH_ORDERS = ("legacy", "einops")


def stack_patches(x: torch.Tensor, grid: tuple[int, int], order: str) -> torch.Tensor:
    """Cut x (B, C, H, W) into a gh x gw grid of tiles and stack the tiles along channels.

    `einops` is the current official order (channel = c*gh*gw + a*gw + b); `legacy` is the order
    used before 2024-11-05, which the portrait and lite weights were trained with
    (channel = (b*gh + a)*C + c: tile column outermost, colour innermost).
    """
    b, c, h, w = x.shape
    gh, gw = grid
    tiles = x.reshape(b, c, gh, h // gh, gw, w // gw)  # reshape: x may be channels_last
    if order == "einops":
        tiles = tiles.permute(0, 1, 2, 4, 3, 5)
    elif order == "legacy":
        tiles = tiles.permute(0, 4, 2, 1, 3, 5)
    else:
        raise ValueError(f"patch order {order!r} is not one of {', '.join(PATCH_ORDERS)}")
    return tiles.reshape(b, c * gh * gw, h // gh, w // gw)


def _gate(cin: int) -> tuple[nn.Sequential, nn.Sequential]:
    convs = nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    return convs, nn.Sequential(nn.Conv2d(16, 1, 1))


class Decoder(nn.Module):
    def __init__(self, ch: tuple[int, int, int, int], patch_order: str = "legacy"):
        super().__init__()
        if patch_order not in PATCH_ORDERS:
            raise ValueError(f"patch order {patch_order!r} is not one of {', '.join(PATCH_ORDERS)}")
        self.patch_order = patch_order
        c0, c1, c2, c3 = ch
        ipt = [c // 8 for c in ch]
        # Input channels of the image-patch branches: 3 colours x (32x32, 16x16, 8x8, 4x4, 1x1) tiles.
        self.ipt_blk5 = SimpleConvs(3 * 32 * 32, ipt[0])
        self.ipt_blk4 = SimpleConvs(3 * 16 * 16, ipt[0])
        self.ipt_blk3 = SimpleConvs(3 * 8 * 8, ipt[1])
        self.ipt_blk2 = SimpleConvs(3 * 4 * 4, ipt[2])
        self.ipt_blk1 = SimpleConvs(3, ipt[3])
        self.decoder_block4 = BasicDecBlk(c0 + ipt[0], c1)
        self.decoder_block3 = BasicDecBlk(c1 + ipt[0], c2)
        self.decoder_block2 = BasicDecBlk(c2 + ipt[1], c3)
        self.decoder_block1 = BasicDecBlk(c3 + ipt[2], c3 // 2)
        self.conv_out1 = nn.Sequential(nn.Conv2d(c3 // 2 + ipt[3], 1, 1))
        self.lateral_block4 = BasicLatBlk(c1, c1)
        self.lateral_block3 = BasicLatBlk(c2, c2)
        self.lateral_block2 = BasicLatBlk(c3, c3)
        # Side outputs used only by training; kept so official checkpoints load strictly.
        self.conv_ms_spvn_4 = nn.Conv2d(c1, 1, 1)
        self.conv_ms_spvn_3 = nn.Conv2d(c2, 1, 1)
        self.conv_ms_spvn_2 = nn.Conv2d(c3, 1, 1)
        gates = {4: _gate(c1), 3: _gate(c2), 2: _gate(c3)}
        for k, (convs, _) in gates.items():
            self.add_module(f"gdt_convs_{k}", convs)
        for k in gates:
            self.add_module(f"gdt_convs_pred_{k}", nn.Sequential(nn.Conv2d(16, 1, 1)))
        for k, (_, attn) in gates.items():
            self.add_module(f"gdt_convs_attn_{k}", attn)

    def _patches(self, x: torch.Tensor, blk: nn.Module, like: torch.Tensor) -> torch.Tensor:
        h, w = like.shape[-2:]
        grid = (x.shape[-2] // h, x.shape[-1] // w)
        return blk(interp(stack_patches(x, grid, self.patch_order), (h, w)))

    def _gated(self, p: torch.Tensor, k: int) -> torch.Tensor:
        gate = getattr(self, f"gdt_convs_attn_{k}")(getattr(self, f"gdt_convs_{k}")(p))
        return p * torch.sigmoid(gate)

    def forward(self, x, x1, x2, x3, x4) -> torch.Tensor:
        """x: network input; x1..x4: encoder features, strides 4..32. Returns logits (B, 1, H, W)."""
        q = torch.cat([x4, self._patches(x, self.ipt_blk5, x4)], dim=1)
        p = self._gated(self.decoder_block4(q), 4)
        steps = (
            (x3, self.lateral_block4, self.ipt_blk4, self.decoder_block3, 3),
            (x2, self.lateral_block3, self.ipt_blk3, self.decoder_block2, 2),
            (x1, self.lateral_block2, self.ipt_blk2, self.decoder_block1, None),
        )
        for skip, lateral, ipt_blk, block, gate in steps:
            q = interp(p, skip.shape[-2:]) + lateral(skip)
            p = block(torch.cat([q, self._patches(x, ipt_blk, q)], dim=1))
            if gate is not None:
                p = self._gated(p, gate)
        q = interp(p, x.shape[-2:])
        return self.conv_out1(torch.cat([q, self._patches(x, self.ipt_blk1, q)], dim=1))
