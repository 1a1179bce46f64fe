"""Fast CPU foreground estimation: blur-fusion evaluated only where it can change the answer.

Blur-fusion (see `foreground.py`) has a closed form almost everywhere: where alpha is 1 the
estimate is the image itself, and where alpha is 0 with no foreground pixel inside the small
(6 x 6) window it is 0. Only tiles that hold a pixel with alpha < 1 next to a pixel with
alpha > 0 (the edge band, typically a few percent of a frame) are computed, and there exactly:

* the 90 x 90 box sums of pass 1 come from summed-area tables (`cv2.integral`, exact int32) of
  the 8-bit image and matte, read for each tile as four rectangles of a strided view (no
  per-pixel gathers); the product image*alpha is split as 255*image on opaque pixels plus
  the high and low bytes of image*alpha on soft pixels, so every table stays exact in int32;
* pass 2 (6 x 6) runs on the tiles laid out as one mosaic, each tile carrying its own 3-pixel
  halo, with `cv2.blur`; image borders are mirrored inside the tile (BORDER_REFLECT_101).

Alpha is taken in 8 bits, as the official `refine_foreground` does (it reads the mask as an
8-bit image). The result is the official uint8 output (`F * 255` truncated).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from streamer.compose.foreground import estimate_foreground_cpu, fusion_step

TILE = 16
BIG, SMALL = 90, 6
HALO = SMALL // 2
SPAN = TILE + 2 * HALO  # a tile with the pass-2 halo on both sides
DENSE_ABOVE = 0.5  # fraction of the frame in tiles above which the dense path is cheaper
_pool = ThreadPoolExecutor(2, thread_name_prefix="integral")


def _crop(n: int, lo: int, hi: int) -> tuple[slice, int, int, int]:
    """Rows (or columns) that big windows centred on lo..hi-1 read: (slice, pad before, pad after, shift).

    Mirrored padding is only needed where the windows cross the frame's edge; `shift` is what
    to subtract from a frame coordinate to index the summed-area table.
    """
    before, after = BIG // 2, BIG - 1 - BIG // 2
    start, stop = max(0, lo - before), min(n, hi + after)
    pad_before = before if start == 0 else 0
    pad_after = after if stop == n else 0
    return slice(start, stop), pad_before, pad_after, start - pad_before + before


def _summed_area(x: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    """int32 summed-area table of the cropped, edge-mirrored x: S[i, j] sums rows < i, columns < j."""
    padded = cv2.copyMakeBorder(
        x[rows[0], cols[0]], rows[1], rows[2], cols[1], cols[2], cv2.BORDER_REFLECT_101
    )
    table = cv2.integral(padded, sdepth=cv2.CV_32S)
    return table if table.ndim == 3 else table[..., None]


def _windows(x: np.ndarray, size: int, writeable: bool = False) -> np.ndarray:
    """View (Y, X, size, size, C) of every size x size window of x (H, W, C)."""
    s0, s1, s2 = x.strides
    shape = (x.shape[0] - size + 1, x.shape[1] - size + 1, size, size, x.shape[2])
    return np.lib.stride_tricks.as_strided(x, shape, (s0, s1, s0, s1, s2), writeable=writeable)


def _box_sums(table: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Big-window sums at every pixel of the SPAN x SPAN tiles whose corners are (ys, xs)."""
    v = _windows(table, SPAN)
    return (v[ys + BIG, xs + BIG] - v[ys, xs + BIG]) - (v[ys + BIG, xs] - v[ys, xs])


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    i = np.abs(i)
    return np.where(i >= n, 2 * (n - 1) - i, i)


def _active_tiles(a8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Core corners (oy, ox) of tiles holding a pixel with alpha < 1 and alpha > 0 within 3 px."""
    h, w = a8.shape
    near = cv2.dilate(cv2.compare(a8, 0, cv2.CMP_GT), np.ones((2 * HALO + 1, 2 * HALO + 1), np.uint8))
    need = cv2.bitwise_and(near, cv2.compare(a8, 255, cv2.CMP_LT))
    gy, gx = -(-h // TILE), -(-w // TILE)
    grid = np.zeros((gy * TILE, gx * TILE), np.uint8)
    grid[:h, :w] = need
    rows = grid.reshape(gy, TILE, gx * TILE).max(axis=1)  # any pixel of the tile
    ty, tx = np.nonzero(rows.reshape(gy, gx, TILE).max(axis=2))
    # The last row/column of tiles is moved back inside the frame (it overlaps its neighbour).
    return np.minimum(ty * TILE, h - TILE), np.minimum(tx * TILE, w - TILE)


def _tile_inputs(image, a8, oy, ox):
    """Pass-1 box sums and the pixels of each tile's SPAN x SPAN area (moved inside the frame)."""
    h, w = a8.shape
    full = (a8 == 255).view(np.uint8)
    opaque = cv2.bitwise_and(image, image, mask=full)
    # image*alpha (16 bits) as two bytes; on opaque pixels 255*I = 256*(I-1) + (256-I) for I > 0.
    high = cv2.subtract(opaque, (1, 1, 1, 0))
    low = np.negative(image)
    low = cv2.bitwise_and(low, low, mask=full)
    soft = np.flatnonzero((a8 > 0) & (a8 < 255))
    product = image.reshape(-1, 3)[soft].astype(np.uint16) * a8.reshape(-1)[soft, None]
    high.reshape(-1, 3)[soft] = product >> 8
    low.reshape(-1, 3)[soft] = product & 255
    ey, ex = np.clip(oy - HALO, 0, h - SPAN), np.clip(ox - HALO, 0, w - SPAN)
    # Summed-area tables only of the part of the frame that the tiles' windows read.
    rows = _crop(h, int(ey.min()), int(ey.max()) + SPAN)
    cols = _crop(w, int(ex.min()), int(ex.max()) + SPAN)

    def sums(x: np.ndarray) -> np.ndarray:  # each table is read and dropped in its own thread
        return _box_sums(_summed_area(x, rows, cols), ey - rows[3], ex - cols[3])

    s_img, s_a, s_hi, s_lo = _pool.map(sums, (image, a8, high, low))
    s_prod = s_hi * 256 + s_lo
    pix = _windows(image, SPAN)[ey, ex]
    alpha = _windows(a8[..., None], SPAN)[ey, ex]
    return (s_img, s_a, s_prod, pix, alpha), opaque, ey, ex


def _mirror_borders(arrays, oy, ox, ey, ex, h, w):
    """Rearrange tiles that were moved inside the frame so their halo holds mirrored pixels."""
    moved = np.flatnonzero((ey != oy - HALO) | (ex != ox - HALO))
    steps = np.arange(SPAN)
    for k in moved:
        rows = _reflect(oy[k] - HALO + steps, h) - ey[k]
        cols = _reflect(ox[k] - HALO + steps, w) - ex[k]
        for arr in arrays:
            arr[k] = arr[k][rows][:, cols]


def estimate_foreground_u8(image: np.ndarray, a8: np.ndarray) -> np.ndarray:
    """image uint8 (H, W, 3), a8 uint8 (H, W) -> foreground uint8 (H, W, 3), the official output."""
    h, w = a8.shape
    oy, ox = _active_tiles(a8) if min(h, w) >= SPAN + BIG else (None, None)
    if oy is None or len(oy) * SPAN * SPAN > DENSE_ABOVE * h * w:
        fg = estimate_foreground_cpu(image.astype(np.float32) / 255, a8.astype(np.float32) / 255)
        return (fg * 255).astype(np.uint8)
    if not len(oy):
        return cv2.bitwise_and(image, image, mask=(a8 == 255).view(np.uint8))
    (s_img, s_a, s_prod, pix, alpha), out, ey, ex = _tile_inputs(image, a8, oy, ox)
    area = float(BIG * BIG)
    a = alpha.astype(np.float32) * np.float32(1 / 255)
    img = pix.astype(np.float32) * np.float32(1 / 255)
    mean_a = s_a.astype(np.float32) * np.float32(1 / (area * 255))
    mean_fa = s_prod.astype(np.float32) * np.float32(1 / (area * 255 * 255))
    mean_img = s_img.astype(np.float32) * np.float32(1 / (area * 255))
    fg, b_hat = fusion_step(img, a, mean_fa, mean_img - mean_fa, mean_a)
    front = np.concatenate((fg * a, a), axis=-1)
    back = b_hat * (1 - a)
    _mirror_borders((front, back, img), oy, ox, ey, ex, h, w)
    core = np.s_[:, HALO : HALO + TILE, HALO : HALO + TILE]
    a, img = front[core][..., 3:4], img[core]
    k = len(oy)
    # Each tile carries its own halo, so blurring the mosaic never mixes tiles in a core.
    front = cv2.blur(front.reshape(k * SPAN, SPAN, 4), (SMALL, SMALL)).reshape(k, SPAN, SPAN, 4)[core]
    back = cv2.blur(back.reshape(k * SPAN, SPAN, 3), (SMALL, SMALL)).reshape(k, SPAN, SPAN, 3)[core]
    fg, _ = fusion_step(img, a, front[..., :3], back, front[..., 3:4])
    _windows(out, TILE, writeable=True)[oy, ox] = (fg * 255).astype(np.uint8)
    return out
