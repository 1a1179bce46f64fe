"""Matte propagation: every camera frame gets a matte, the network runs only on keyframes.

The network's matte of a keyframe arrives late (it took the network's time). Every frame gets the
newest keyframe matte carried to it by dense optical flow (OpenCV DIS, ultrafast preset) computed
on small grey images (~320 wide) and warped with `cv2.remap`. The flow goes straight from the frame
to the keyframe's own frame (the anchor), one DIS per frame, started from the previous frame's
flow to the same anchor: one interpolation of the matte instead of one per frame (no blur or drift
piling up), and the warm start follows motions far beyond DIS's own reach. When a keyframe result
arrives it is carried from its frame (its small grey image is kept in a short history) to the
newest frame by one more DIS, started from a guess made of both frames' flows to the old anchor,
and becomes the new anchor.

Flow convention (OpenCV's): `dense_flow(a, b)` is defined on `a`'s pixels and points to where each
pixel went in `b`, so `a(x) ~ b(x + flow(x))`. To carry a matte from frame B to frame A, compute
the flow from A to B (on A's pixels) and `warp` B's matte by it: `A_matte(x) = B_matte(x + flow(x))`.

Where flow is unreliable (the anchor's grey image, warped by the flow and brought to this frame's
overall exposure, does not look like this frame's: occlusions, flow that failed), the last matte
is kept at that pixel instead, with a soft weight so nothing tears; a keyframe's result then fades
in as the flow becomes trusted again.
`forward_backward` adds the classic forward-backward check at one more DIS per flow (off: on
scripts/eval_live.py it cost moving-edge accuracy, as it also rejects the good flow along
moving edges).

A scene cut (the picture does not match the anchor's even after following the flow) stops the
carrying: the last matte is held as it is and the first keyframe from the new scene is taken as it
arrives (carried within the new scene, never blended with the old scene's matte). A keyframe from
before the cut arriving after it is shown as it is (it is still the newest network result).

Costs per frame, 640x480 camera, flow at 320x240 (field notes; one core): grey + resize ~0.2 ms,
DIS ~0.6, two remaps and the residual ~0.5, upsample ~0.4; one more DIS and remap per keyframe.
`cv2.setNumThreads` is process-wide and so is left to the application.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from streamer.config import Number, Params, Whole


class PropagationParams(Params):
    enabled: bool = True
    """Off = every frame gets the newest network matte as it is (no flow)."""
    keyframe_every: Whole(1, 1000) = 1
    """Run the network at most on every k-th frame (1 = whenever it is free)."""
    flow_width: Whole(16, 4096) = 320
    """Width of the small grey images that flow runs on (height keeps the aspect ratio)."""
    flow_finest_scale: Whole(0, 4) = 2
    """DIS's finest pyramid level: 2 = the ultrafast preset's (flow found at a quarter of the small
    image's resolution); 1 = at half, 3-4 times the DIS time, sharper moving edges (BENCHMARKS.md).
    Slow networks get one level finer anyway: `fine_flow_interval`."""
    fine_flow_interval: Number(0, 3600) = 0.5
    """Seconds between keyframes (as the caller measures them) from which the flow is found one
    pyramid level finer than `flow_finest_scale` (0 = never). DIS smooths the flow across a moving
    edge, so the background beside the subject is dragged along with it, by a share of the motion
    carried since the keyframe: the longer the carry, the larger the error. With a slow network
    (torch on a 2-core CPU, keyframes ~0.77 s apart) the finer level pays for its 3-4x DIS time
    (about +2 ms a frame at 320x240 on one core); with keyframes 0.2-0.3 s apart (OpenVINO) the
    carry is short and the coarse flow does as well (BENCHMARKS.md, "Temporal smoothing")."""
    history: Whole(1, 100_000) = 120
    """Frames whose small grey images are kept to carry a late keyframe forward. A keyframe older
    than that is carried from the oldest kept frame (the motion before it is not known)."""
    residual: Number(0, 1) = 0.1
    """Grey-level residual (0..1) after warping above which a pixel's flow starts to be distrusted
    (lenient: stricter values also reject good flow along moving edges, where the matte lags)."""
    residual_range: Number(1e-6, 1) = 0.1
    """Residual above `residual` over which trust falls from 1 to 0 (soft: no hard seams)."""
    forward_backward: bool = False
    """Also check each flow against the flow the other way (one more DIS per frame and keyframe)."""
    fb_tolerance: Number(0, 1000) = 0.5
    """Forward-backward mismatch in small-image pixels that is always accepted."""
    fb_relative: Number(0, 10) = 0.05
    """...plus this share of the motion's length (fast motion is less precise)."""
    scene_cut: Number(0, 1) = 0.06
    """Mean grey-level mismatch (0..1) between two frames, after following the flow and matching
    their overall exposure, that is a cut (motion leaves about 0.002 on a camera picture, a cut
    0.05-0.3; a change of exposure alone is no cut)."""
    fuse: Number(0, 1) = 0.5
    """Weight of a new keyframe where the picture has not moved since the last keyframe, against
    the matte shown on the keyframe's own frame (1 = no averaging). Temporal smoothing at the
    keyframe rate: the per-frame smoother eases a keyframe's change in but cannot tell its noise
    from a correction, so a still edge would jump by the network's noise at every keyframe
    (BENCHMARKS.md)."""
    fuse_median: bool = True
    """Where the picture is still, a new keyframe first becomes the median of three network
    results, itself and the two before it: an error in one result alone (a blob, a speck) is
    dropped instead of halved, and a real change shows from the second keyframe that has it on.
    Off (with `fuse` 1) = each keyframe as it is."""
    fuse_motion: Number(1e-3, 1000) = 2.0
    """Motion since the last keyframe, in small-image pixels, at which the picture counts as moved
    (linear below): the median and the plain average stop there, and `fuse_agree` decides."""
    fuse_agree: Number(0, 1) = 0.2
    """Where the picture moved since the last keyframe, the new keyframe is still averaged (by
    `fuse`) with the matte carried to its frame where the two differ by at most this: the
    network's noise at a moving edge, which the flow would otherwise carry along with the subject
    until the next keyframe (BENCHMARKS.md, "Temporal smoothing")."""
    fuse_agree_range: Number(1e-6, 1) = 0.3
    """Difference above `fuse_agree` over which the new keyframe's weight rises to 1: a carried
    matte that drifted, or a subject that changed shape, is replaced, not averaged."""


def finest_scale(params: PropagationParams, keyframe_interval: float | None = None) -> int:
    """DIS's finest pyramid level for keyframes `keyframe_interval` s apart (None: not known)."""
    fine = params.fine_flow_interval > 0 and (keyframe_interval or 0.0) >= params.fine_flow_interval
    return max(0, params.flow_finest_scale - 1) if fine else params.flow_finest_scale


def small_size(height: int, width: int, flow_width: int) -> tuple[int, int]:
    """(h, w) of the small image: `flow_width` wide (never wider than the frame), aspect kept."""
    w = min(width, flow_width)
    return max(1, round(height * w / width)), w


def small_grey(image: np.ndarray, width: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 grey (h, w), `width` wide (or the frame's width if smaller)."""
    h, w = small_size(image.shape[0], image.shape[1], width)
    # Grey first: OpenCV's conversion is cheaper than shrinking three channels (0.37 against 0.8 ms
    # for a 720p frame, one core); the result differs by at most one grey level. INTER_AREA
    # averages away sensor noise.
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    if (h, w) != grey.shape:
        grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
    return grey


def new_dis(finest_scale: int = 2) -> cv2.DISOpticalFlow:
    """DIS with the ultrafast preset (optionally stopping at a finer pyramid level)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    dis.setFinestScale(finest_scale)
    return dis


def dense_flow(
    prev: np.ndarray, nxt: np.ndarray, dis: cv2.DISOpticalFlow | None = None, init: np.ndarray | None = None
) -> np.ndarray:
    """(h, w, 2) float32 flow on `prev`'s pixels to `nxt`: prev(x) ~ nxt(x + flow(x)). DIS ultrafast.

    `init`, a guess of the same flow, starts DIS from it: it then follows motions far larger than
    its coarsest scale sees (a 60 px shift at 320x240: 2 px found from nothing, 60 from a guess)."""
    start = None if init is None else np.array(init, np.float32, copy=True)  # DIS writes into it
    return (dis or new_dis()).calc(prev, nxt, start)


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> np.ndarray:
    """(h, w, 2) float32 pixel coordinates (x, y), read-only."""
    grid = np.empty((h, w, 2), np.float32)
    grid[..., 0] = np.arange(w, dtype=np.float32)
    grid[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    grid.flags.writeable = False
    return grid


def sample_map(flow: np.ndarray) -> np.ndarray:
    """(h, w, 2) float32 positions x + flow(x), the map `cv2.remap` reads from."""
    return _pixel_grid(*flow.shape[:2]) + flow


def _remap(image: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return cv2.remap(image, positions, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def fit_flow(flow: np.ndarray, h: int, w: int) -> np.ndarray:
    """A flow resized to (h, w), its vectors scaled with the picture."""
    fh, fw = flow.shape[:2]
    if (fh, fw) == (h, w):
        return flow
    out = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= w / fw
    out[..., 1] *= h / fh
    return out


def warp(matte: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """out(x) = matte(x + flow(x)) (bilinear; outside the picture the border is repeated).

    `flow` is resized to the matte's size when they differ. Works for any float32 (h, w) or
    (h, w, C) image, so flows and grey images are warped the same way."""
    h, w = matte.shape[:2]
    return _remap(matte, sample_map(fit_flow(flow, h, w)))


def consistency(
    forward: np.ndarray, backward: np.ndarray, tolerance: float = 0.5, relative: float = 0.05
) -> np.ndarray:
    """(h, w) float32 reliability in [0, 1] of `backward`, on its own pixels.

    `forward` is a flow A -> B on A's pixels, `backward` the flow B -> A on B's pixels (the one a
    matte is warped by). Following `backward` and then `forward` must come back to the start:
    a mismatch up to `tolerance` + `relative` x the motion's length is trusted (1), twice that
    not at all (0), linearly in between. Occluded pixels (seen in B, hidden in A) fail it."""
    there = warp(forward, backward)
    mismatch = np.sqrt(((backward + there) ** 2).sum(axis=2))
    motion = np.sqrt((backward**2).sum(axis=2)) + np.sqrt((there**2).sum(axis=2))
    bound = tolerance + relative * motion + 1e-6
    return np.clip(2.0 - mismatch / bound, 0.0, 1.0).astype(np.float32)


def residual(target: np.ndarray, source: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(h, w) float32 grey-level mismatch in 0..1 of `flow` (target -> source, on target's
    pixels): how unlike the target's uint8 grey image the source's looks once warped by it."""
    return _residual(target, source, sample_map(flow))


def _residual(target: np.ndarray, source: np.ndarray, positions: np.ndarray) -> np.ndarray:
    # uint8 throughout (OpenCV's fast paths); a 3x3 box filter, so that one noisy pixel is not an
    # occlusion but a patch that does not match is.
    warped = _remap(source, positions)
    gain = exposure_gain(target, warped)
    if gain != 1.0:
        warped = cv2.convertScaleAbs(warped, alpha=gain)
    out = cv2.blur(cv2.absdiff(warped, target), (3, 3))
    return out.astype(np.float32) * np.float32(1.0 / 255.0)


def exposure_gain(target: np.ndarray, source: np.ndarray) -> float:
    """How much brighter `target` is than `source` (uint8 grey images of the same pixels) as a
    whole: the median ratio over a sample of the pixels well exposed in both, within 0.5..2.

    A webcam's auto exposure, or a lamp switched on, scales the whole picture: the flow still
    holds, and without this the residual would take it for a mismatch everywhere (a false cut,
    the matte frozen). The median ignores what moved or was hidden in between. 1 when within 2%
    (sensor noise) or when too few pixels are usable."""
    t = target[::4, ::4].astype(np.float32)
    s = source[::4, ::4].astype(np.float32)
    usable = (t > 16) & (t < 240) & (s > 16) & (s < 240)
    if np.count_nonzero(usable) < 64:
        return 1.0
    gain = min(max(float(np.median(t[usable] / s[usable])), 0.5), 2.0)
    return 1.0 if abs(gain - 1.0) < 0.02 else gain


def photometric(mismatch: np.ndarray, params: PropagationParams) -> np.ndarray:
    """(h, w) float32 reliability in [0, 1] from a `residual` map: 1 below `params.residual`,
    falling linearly to 0 over `params.residual_range`."""
    trust = 1.0 - (mismatch - params.residual) / params.residual_range
    return np.clip(trust, 0.0, 1.0, out=trust)


def is_scene_cut(mismatch: np.ndarray, params: PropagationParams) -> bool:
    """A cut: even after following the flow, the picture does not look like the one before.
    (Motion-compensated, so fast motion is not mistaken for a cut.)"""
    return float(mismatch.mean()) > params.scene_cut


def _resize(matte: np.ndarray, h: int, w: int) -> np.ndarray:
    if matte.shape[:2] == (h, w):
        return matte
    shrink = matte.shape[0] > h and matte.shape[1] > w
    return cv2.resize(matte, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _as_matte(alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[2] == 1:
        alpha = alpha[..., 0]
    if alpha.ndim != 2:
        raise ValueError(f"a matte must be (H, W), not {alpha.shape}")
    return np.ascontiguousarray(alpha, dtype=np.float32)


@dataclass
class _Seen:
    """What is kept of a stepped frame: its small grey image and its flow to the anchor."""

    frame_id: int
    grey: np.ndarray
    anchor: int | None = None
    flow: np.ndarray | None = None  # to the anchor, at a quarter of the small size (a guess only)


@dataclass
class _Anchor:
    """The keyframe the current matte is carried from: its frame's grey image and its matte."""

    frame_id: int
    grey: np.ndarray
    matte: np.ndarray
    raw: np.ndarray
    """The keyframe's network matte as it came: a vote in the next keyframe's median."""
    prior: np.ndarray | None = None
    """The network matte before it, carried to this frame: the median's third vote."""
    prior_trust: np.ndarray | None = None
    """Where `prior` may be used (0 where the picture moved between the two keyframes)."""
    correction: np.ndarray | None = None
    """Where this keyframe corrected the matte carried to its frame (see `Propagator.correction`)."""


class Propagator:
    """Carries the network's keyframe mattes to every frame of one stream.

    Call `step` for every frame in order, and `keyframe` whenever a network result for an earlier
    (already stepped) frame arrives. Not thread-safe: one thread calls it. `.params` may be
    replaced between calls (a changed `flow_width` restarts the flow history).

    Each frame's matte is the newest keyframe's matte warped directly from the keyframe's own
    frame (the anchor) to this frame, by one DIS per frame started from the previous frame's
    flow to the anchor. Warping from the anchor every time, rather than from frame to frame, keeps
    the matte sharp (one interpolation, not one per frame) and keeps errors from piling up; the
    warm start keeps DIS on track over the large motions that pile up between keyframes.
    """

    def __init__(self, params: PropagationParams | None = None) -> None:
        self.params = params or PropagationParams()
        self._dis = new_dis(self.params.flow_finest_scale)
        self._dis_scale = self.params.flow_finest_scale
        self.keyframes = 0
        """Keyframe results taken."""
        self.cuts = 0
        """Scene cuts seen."""
        self.last_carry = 0
        """Frames the last keyframe result was carried over (0 = it was the newest frame)."""
        self.reset()

    def reset(self) -> None:
        self._frame_size: tuple[int, int] | None = None
        self._history: deque[_Seen] = deque()
        self._newest: int | None = None
        self._matte: np.ndarray | None = None  # small, on the newest frame's pixels
        self._source: int | None = None  # the keyframe the current matte comes from
        self._latest: np.ndarray | None = None  # the newest network result as it came (no propagation)
        self._anchor: _Anchor | None = None
        self._flow: np.ndarray | None = None  # newest frame -> anchor, on the newest frame's pixels
        self._cut: int | None = None  # the first frame of the current scene, after a cut
        self._correction: np.ndarray | None = None  # small, on the newest frame's pixels
        self._correction_due = False  # the next step shows a new keyframe's correction

    @property
    def newest(self) -> int | None:
        return self._newest

    def current(self) -> np.ndarray | None:
        """The newest frame's matte at the frame's size, as `step` would return it now (after a
        `keyframe` for the newest frame, when the network kept up)."""
        if self._frame_size is None:
            return None
        matte = self._latest if not self.params.enabled or self._matte is None else self._matte
        if matte is None:
            return None
        out = _resize(matte, *self._frame_size)
        return out.copy() if out is matte else out  # never the state itself

    def correction(self) -> np.ndarray | None:
        """Where the last `step`'s matte shows a keyframe's correction, (H, W) float32 in 0..1,
        or None (no keyframe came in before that step, or nothing to tell).

        A correction is where the picture moved since the keyframe before, and the new keyframe
        differs from the matte carried to its frame by more than the network's noise
        (`fuse_agree`), or that carry was not trusted: the carried matte had drifted or the
        subject changed shape. A temporal smoother should take it at once, not ease it in as
        it eases in a still picture's keyframe noise."""
        if self._correction is None or self._frame_size is None:
            return None
        out = _resize(self._correction, *self._frame_size)
        return out.copy() if out is self._correction else out  # never the state itself

    def step(
        self, frame_id: int, image: np.ndarray, keyframe_interval: float | None = None
    ) -> np.ndarray | None:
        """The matte of this frame, (H, W) float32 in 0..1, or None before the first keyframe.
        `keyframe_interval`: seconds between the network's results, when known (it picks the
        flow's precision: `fine_flow_interval`)."""
        params = self.params
        height, width = image.shape[:2]
        if self._frame_size != (height, width) or (self._newest is not None and frame_id <= self._newest):
            # Another picture size, or time went back (a seek): nothing before applies.
            self.reset()
            self._frame_size = (height, width)
        self._newest = frame_id
        self._correction = None
        if not params.enabled:
            self._history.clear()
            self._matte = self._anchor = self._flow = None
            return self.current()
        scale = finest_scale(params, keyframe_interval)
        if scale != self._dis_scale:
            # Flows keep their units (small-image pixels) across levels: the warm start still holds.
            self._dis, self._dis_scale = new_dis(scale), scale
        grey = small_grey(image, params.flow_width)
        if self._history and self._history[-1].grey.shape != grey.shape:
            # flow_width changed: the stored images cannot be compared; restart from the matte.
            self._history.clear()
            self._anchor = self._flow = None
            if self._matte is not None:
                self._matte = _resize(self._matte, *grey.shape)
        seen = _Seen(frame_id, grey)
        if self._anchor is not None:
            self._follow(seen)
        elif self._history:
            # Nothing to carry (before the first keyframe, or held across a cut): still watch for cuts.
            before = self._history[-1].grey
            if is_scene_cut(residual(grey, before, dense_flow(grey, before, self._dis)), params):
                self._on_cut(frame_id)
        if self._matte is None and self._latest is not None and self._cut is None:
            self._matte = _resize(self._latest, *grey.shape)  # switched on: start from the newest result
        self._history.append(seen)
        while len(self._history) > params.history:
            self._history.popleft()
        return self.current()

    def _follow(self, seen: _Seen) -> None:
        """Carry the anchor's matte to this frame (or notice a cut)."""
        anchor, params = self._anchor, self.params
        back = dense_flow(seen.grey, anchor.grey, self._dis, init=self._flow)
        positions = sample_map(back)
        mismatch = _residual(seen.grey, anchor.grey, positions)
        if is_scene_cut(mismatch, params):
            self._on_cut(seen.frame_id)
            return
        self._flow = back
        seen.anchor, seen.flow = anchor.frame_id, _coarse(back)
        self._matte = self._blend(
            _remap(anchor.matte, positions), mismatch, seen.grey, anchor.grey, back, self._matte
        )
        if self._correction_due and anchor.correction is not None:
            self._correction = _remap(anchor.correction, positions)
        self._correction_due = False

    def _on_cut(self, frame_id: int) -> None:
        # Nothing can be carried across a cut: the matte is held as it is until the new scene's
        # first keyframe arrives.
        self.cuts += 1
        self._cut = frame_id
        self._history.clear()
        self._anchor = self._flow = None

    def keyframe(self, frame_id: int, alpha: np.ndarray) -> None:
        """A network result for an earlier frame: carried to the newest frame, then taken."""
        if self._newest is None or frame_id > self._newest:
            raise ValueError(f"keyframe {frame_id} is newer than the newest stepped frame {self._newest}")
        alpha = _as_matte(alpha)
        if self._source is not None and frame_id < self._source:
            return  # older than the result already in use
        # The current matte may only stand in for unreliable flow if it shows the current scene.
        in_scene = self._source is not None and (self._cut is None or self._source >= self._cut)
        params = self.params
        self.keyframes += 1
        self._source = frame_id
        self._latest = alpha
        self.last_carry = self._newest - frame_id
        if not params.enabled or not self._history:
            self._matte = None
            return
        newest = self._history[-1]
        small = _resize(alpha, *newest.grey.shape)
        if self._cut is not None and frame_id < self._cut:
            # From before the cut: it cannot be carried across it. It is still the newest network
            # result, so it is shown as it is (as without propagation), and not carried further.
            self._matte, self._anchor, self._flow = small, None, None
            return
        stored = self._stored(frame_id)
        guess = None if stored is newest else self._initial_flow(stored, newest)
        anchor = _Anchor(stored.frame_id, stored.grey, small, small)
        if in_scene and self._matte is not None and (params.fuse < 1.0 or params.fuse_median):
            small = anchor.matte = self._fuse(anchor, stored, newest)
        self._anchor = anchor
        self._correction_due = anchor.correction is not None
        if stored is newest:
            self._matte = small  # the network kept up: nothing to carry
            self._flow = np.zeros((*small.shape, 2), np.float32)
            newest.anchor, newest.flow = frame_id, _coarse(self._flow)
            return
        back = dense_flow(newest.grey, stored.grey, self._dis, init=guess)
        self._flow = back
        newest.anchor, newest.flow = stored.frame_id, _coarse(back)
        positions = sample_map(back)
        mismatch = _residual(newest.grey, stored.grey, positions)
        fallback = self._matte if in_scene else None
        carried = _remap(small, positions)
        self._matte = self._blend(carried, mismatch, newest.grey, stored.grey, back, fallback)

    def _fuse(self, new: _Anchor, stored: _Seen, newest: _Seen) -> np.ndarray:
        """A keyframe's matte (on `stored`'s pixels) fused with what was shown on that frame (the
        last keyframe carried to it), where the picture has not moved between the two keyframes'
        frames and that carry is trusted: there they differ only by the network's noise. Where
        the picture moved they are averaged only where they agree that closely (`fuse_agree`);
        where the carry is not trusted, the new matte is taken.

        The partner is the matte *of the keyframe's frame*, not the matte in use carried back to
        it: the matte in use may have been carried over motion since, and its drift would be
        carried back into a still picture's keyframe. The median's votes are network results
        only (this one and the two before it): a fused matte is no independent vote."""
        params, anchor = self.params, self._anchor
        h, w = new.raw.shape
        if stored.flow is None or anchor is None or stored.anchor != anchor.frame_id:
            return new.raw  # how far the picture moved since the last keyframe is not known
        # Where the picture barely moved the kept coarse flow is as good as a fresh one; elsewhere
        # the new matte is taken anyway.
        to_anchor = self._flow if stored is newest and self._flow is not None else fit_flow(stored.flow, h, w)
        positions = sample_map(to_anchor)
        take = np.sqrt((to_anchor**2).sum(axis=2)) * np.float32(1.0 / params.fuse_motion)
        np.clip(take, 0.0, 1.0, out=take)
        trust = photometric(_residual(stored.grey, anchor.grey, positions), params)
        np.maximum(take, 1.0 - trust, out=take)
        still = new.raw
        if params.fuse_median:
            before = _remap(anchor.raw, positions)
            # Where there is no third vote (the second keyframe, or the picture moved before the
            # last one) the new result takes its place: then only the average below remains.
            third = new.raw
            if anchor.prior is not None:
                ok = _remap(anchor.prior_trust, positions)
                third = third + ok * (_remap(anchor.prior, positions) - third)
            still = np.maximum(np.minimum(new.raw, before), np.minimum(np.maximum(new.raw, before), third))
            new.prior, new.prior_trust = before, 1.0 - take
        previous = _remap(anchor.matte, positions)
        still = previous + np.float32(params.fuse) * (still - previous)
        disagree = _disagreement(new.raw, previous, params)
        new.correction = take * np.maximum(disagree, 1.0 - trust)
        return still + take * (_agreeing(new.raw, previous, trust, disagree, params) - still)

    def _initial_flow(self, older: _Seen, newest: _Seen) -> np.ndarray | None:
        """A guess of the flow newest -> older from both frames' flows to the same old anchor
        (follow newest's flow to the anchor, then older's flow back from it)."""
        if older.flow is None or self._flow is None or older.anchor is None or older.anchor != newest.anchor:
            return None
        h, w = newest.grey.shape
        to_anchor, older_to_anchor = self._flow, fit_flow(older.flow, h, w)
        guess = to_anchor - older_to_anchor
        return to_anchor - warp(older_to_anchor, guess)

    def _stored(self, frame_id: int) -> _Seen:
        """The kept frame `frame_id` (or the newest kept frame before it, or else the oldest)."""
        found = self._history[0]
        for seen in self._history:
            if seen.frame_id > frame_id:
                break
            found = seen
        return found

    def _blend(
        self,
        carried: np.ndarray,
        mismatch: np.ndarray,
        grey_to: np.ndarray,
        grey_from: np.ndarray,
        back: np.ndarray,
        fallback: np.ndarray | None,
    ) -> np.ndarray:
        """The carried matte where its flow (grey_to -> grey_from) is trusted, `fallback` (the
        last matte, on grey_to's pixels) where it is not; soft weights, so no seams."""
        params = self.params
        if fallback is None:
            return carried
        trust = photometric(mismatch, params)
        if params.forward_backward:
            forward = dense_flow(grey_from, grey_to, self._dis, init=-back)
            np.minimum(trust, consistency(forward, back, params.fb_tolerance, params.fb_relative), out=trust)
        carried -= fallback
        carried *= trust
        carried += fallback
        return carried


def _disagreement(new: np.ndarray, carried: np.ndarray, params: PropagationParams) -> np.ndarray:
    """0 where a keyframe differs from the carried matte by no more than the network's noise
    (`fuse_agree`), rising to 1 over `fuse_agree_range` (the carry drifted, the shape changed)."""
    differ = np.abs(new - carried)
    differ -= np.float32(params.fuse_agree)
    differ *= np.float32(1.0 / params.fuse_agree_range)
    return np.clip(differ, 0.0, 1.0, out=differ)


def _agreeing(
    new: np.ndarray, carried: np.ndarray, trust: np.ndarray, disagree: np.ndarray, params: PropagationParams
) -> np.ndarray:
    """A keyframe's matte where the picture moved: averaged (`fuse`) with the carried matte where
    the two agree and the carry is trusted; as it is where they disagree."""
    keep = (1.0 - disagree) * trust * np.float32(1.0 - params.fuse)
    return new + keep * (carried - new)


def _coarse(flow: np.ndarray) -> np.ndarray:
    """A flow kept only as a starting guess: a quarter of the size (~40 kB at 320x240, not 600)."""
    h, w = flow.shape[:2]
    return fit_flow(flow, max(1, h // 4), max(1, w // 4))
