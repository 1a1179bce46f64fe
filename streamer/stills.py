"""Still pictures as the pipeline takes them: upright, 8-bit RGB, whatever the file stores.

One reader for every still (an image folder's frames, `streamer image` and `eval` inputs, a
background picture, an upload over HTTP), so that they all agree on orientation and depth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Pillow's integer and float grey modes; `convert("RGB")` clips them at 255, which turns a
# 16-bit scan or render white.
HIGH_DEPTH_GREY = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def upright_rgb(picture: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3): EXIF orientation applied (phone photos are stored sideways) and
    16-bit or float grey scaled to 8 bits rather than clipped."""
    picture = ImageOps.exif_transpose(picture)
    if picture.mode in HIGH_DEPTH_GREY:
        values = np.asarray(picture, dtype=np.float64)
        if picture.mode.startswith("I;16") or values.max(initial=0) > 255:
            # 32-bit "I" and "F" carry no depth of their own: 16-bit PNGs and TIFFs open as them,
            # so anything past 8 bits is read as 16-bit, while 8-bit values stay as they are.
            values = values / 257
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.array(picture.convert("RGB"))


class TooLarge(ValueError):
    """A picture over Pillow's size limit (which guards against decompression bombs)."""


def read_rgb(path: str | Path) -> np.ndarray:
    """`upright_rgb` of a file. Pillow's own errors (missing, unreadable, damaged) pass through;
    a picture over its size limit raises TooLarge, a ValueError, not Pillow's bare Exception."""
    try:
        with Image.open(path) as picture:
            return upright_rgb(picture)
    except Image.DecompressionBombError as err:
        size = str(err).split(",")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise TooLarge(f"{path} is too large to read: {size} (scale it down)") from None
