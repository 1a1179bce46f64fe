"""Matte propagation on synthetic moving pictures with known mattes.

Each scene moves a textured subject (its texture moves with it) over a textured background; the
truth is the subject's matte warped the same way. The propagated matte must be clearly closer to
the truth than the stale keyframe matte (what a live job shows without propagation), and never
torn: its worst frame no worse than the stale matte's worst, and fewer pixels off by more than
half (holes, smears, pieces left behind) than the stale matte has at its worst.
"""

import cv2
import numpy as np
import pytest

from streamer.config import load_config
from streamer.errors import ConfigError
from streamer.propagation import (
    PropagationParams,
    Propagator,
    consistency,
    dense_flow,
    exposure_gain,
    finest_scale,
    small_grey,
    warp,
)

H, W = 240, 320
CENTRE = (150.0, 120.0)


def texture(seed: int, h: int = H, w: int = W, base: int = 120) -> np.ndarray:
    """uint8 RGB with detail at a few scales (flow needs texture to hold on to)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((6, 60.0), (24, 40.0), (80, 25.0)):
        coarse = rng.uniform(-1, 1, (cells * h // w + 1, cells, 3)).astype(np.float32)
        out += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * amp
    return np.clip(out + base, 0, 255).astype(np.uint8)


def ellipse_matte(axes: tuple[float, float] = (60, 40), h: int = H, w: int = W) -> np.ndarray:
    """Soft (about 2 px) ellipse at CENTRE, float32 0..1."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - CENTRE[0]) / axes[0]) ** 2 + ((yy - CENTRE[1]) / axes[1]) ** 2)
    return np.clip((1 - r) * min(axes) / 2 + 0.5, 0, 1).astype(np.float32)


class Scene:
    """A subject moved by an affine transform per frame, over a still background."""

    def __init__(self, seed: int = 0, axes=(60, 40)):
        self.background = texture(seed).astype(np.float32)
        self.subject = texture(seed + 100, base=150).astype(np.float32)
        self.matte = ellipse_matte(axes)

    def frame(self, affine: np.ndarray, occluder: np.ndarray | None = None):
        """(image uint8, truth float32) with the subject moved by `affine` (2x3)."""
        alpha = cv2.warpAffine(self.matte, affine, (W, H), flags=cv2.INTER_LINEAR)
        subject = cv2.warpAffine(self.subject, affine, (W, H), flags=cv2.INTER_LINEAR)
        a = alpha[..., None]
        image = a * subject + (1 - a) * self.background
        if occluder is not None:  # (mask, picture): in front of everything, not part of the matte
            mask, picture = occluder
            image = mask[..., None] * picture + (1 - mask[..., None]) * image
            alpha = alpha * (1 - mask)
        return np.clip(image, 0, 255).astype(np.uint8), alpha


def translation(i: int, speed: float = 2.5) -> np.ndarray:
    return np.float32([[1, 0, speed * i], [0, 1, 0.8 * i]])


def rotation(i: int, degrees: float = 2.0) -> np.ndarray:
    return cv2.getRotationMatrix2D(CENTRE, degrees * i, 1.0).astype(np.float32)


def deformation(i: int) -> np.ndarray:
    """Stretched sideways and squashed, growing frame by frame (the matte changes shape)."""
    sx, sy = 1 + 0.02 * i, 1 - 0.008 * i
    cx, cy = CENTRE
    return np.float32([[sx, 0, cx * (1 - sx) + i], [0, sy, cy * (1 - sy)]])


def noisy(truth: np.ndarray, seed: int) -> np.ndarray:
    """The truth as a network returns it: a little off everywhere, at the network's own size."""
    rng = np.random.default_rng(seed)
    small = cv2.resize(truth, (128, 128), interpolation=cv2.INTER_AREA)
    return np.clip(small + rng.normal(0, 0.005, small.shape), 0, 1).astype(np.float32)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def torn(a: np.ndarray, truth: np.ndarray) -> float:
    """Share of pixels off by more than half: holes, smears, pieces left behind."""
    return float((np.abs(a - truth) > 0.5).mean())


def run(
    scene_frames,
    keyframes: dict[int, int],
    params: PropagationParams | None = None,
    keyframe_interval: float | None = None,
):
    """Step through `scene_frames` [(image, truth)]; `keyframes` maps a frame to the keyframe
    whose result arrives right after it was stepped (shown from the next frame on). Returns per
    frame (propagated, stale, truth) from the first shown result on; stale = the newest result
    as it is, what a live job shows without propagation."""
    prop = Propagator(params or PropagationParams())
    out, stale = [], None
    for i, (image, truth) in enumerate(scene_frames):
        matte = prop.step(i, image, keyframe_interval)
        if stale is not None:
            out.append((matte, stale, truth))
        if i in keyframes:
            k = keyframes[i]
            result = noisy(scene_frames[k][1], k)
            prop.keyframe(k, result)
            stale = cv2.resize(result, (W, H), interpolation=cv2.INTER_LINEAR)
    return prop, out


def assert_better(results, factor: float):
    """Propagated MAD at most `factor` x the stale matte's, and no frame torn: the worst frame no
    worse than the stale matte's worst, and no more pixels off by more than half."""
    prop_mad = np.mean([mad(m, t) for m, _, t in results])
    stale_mad = np.mean([mad(s, t) for _, s, t in results])
    assert prop_mad < factor * stale_mad, (prop_mad, stale_mad)
    assert max(mad(m, t) for m, _, t in results) < max(mad(s, t) for _, s, t in results)
    assert max(torn(m, t) for m, _, t in results) < max(torn(s, t) for _, s, t in results)


def test_pure_functions():
    tex = texture(3)
    a = small_grey(tex, 160)
    assert a.shape == (120, 160) and a.dtype == np.uint8
    assert small_grey(tex, 1000).shape == (H, W)  # never wider than the frame
    shifted = np.roll(tex, (2, 5), axis=(0, 1))
    b = small_grey(shifted, 320)
    flow = dense_flow(small_grey(tex, 320), b)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    inner = flow[20:-20, 20:-20]
    assert np.median(inner[..., 0]) == pytest.approx(5, abs=0.3)
    assert np.median(inner[..., 1]) == pytest.approx(2, abs=0.3)
    # Warping b by the flow a -> b (on a's pixels) brings b back to a.
    restored = warp(b.astype(np.float32), flow)
    assert np.abs(restored - small_grey(tex, 320))[20:-20, 20:-20].mean() < 3
    # A constant flow shifts; a flow of another size is scaled to the matte's.
    m = ellipse_matte()
    moved = warp(m, np.full((H // 2, W // 2, 2), (-2.0, 0.0), np.float32))
    assert np.abs(moved[:, 4:] - m[:, :-4]).max() < 1e-5
    # Forward-backward: flows that undo each other are trusted, others are not.
    f = np.full((H, W, 2), (3.0, 1.0), np.float32)
    assert consistency(f, -f).min() == pytest.approx(1.0)
    assert consistency(f, f).max() == pytest.approx(0.0)
    # Exposure: the whole picture's gain, even with a third of it changed; noise is no gain.
    grey = small_grey(tex, 320)
    brighter = np.clip(grey.astype(np.float32) * 1.3, 0, 255).astype(np.uint8)
    brighter[:, : W // 3] = 255 - brighter[:, : W // 3]
    assert exposure_gain(brighter, grey) == pytest.approx(1.3, abs=0.03)
    noise = np.random.default_rng(0).normal(0, 2, grey.shape)
    assert exposure_gain(np.clip(grey + noise, 0, 255).astype(np.uint8), grey) == 1.0
    assert exposure_gain(np.zeros_like(grey), grey) == 1.0  # nothing usable


def test_params_are_a_config_section():
    config = load_config(overrides={"propagation": {"flow_width": "160", "enabled": "off"}})
    assert config.propagation == PropagationParams(flow_width=160, enabled=False)
    with pytest.raises(ConfigError, match=r"^propagation.keyframe_every: bad value 0: expected at least 1$"):
        PropagationParams(keyframe_every=0)
    with pytest.raises(ConfigError, match=r"^propagation.residual: bad value -1: expected at least 0"):
        PropagationParams(residual=-1)


@pytest.mark.parametrize(
    ("motion", "frames"),
    [(translation, 24), (rotation, 24), (deformation, 24)],
    ids=["translation", "rotation", "deformation"],
)
@pytest.mark.parametrize("late", [0, 10], ids=["keyframe-at-once", "keyframe-10-frames-late"])
def test_moving_subject_is_followed(motion, frames, late):
    scene = Scene()
    pictures = [scene.frame(motion(i)) for i in range(frames)]
    # A keyframe on frame 0, arriving `late` frames later; then nothing more.
    _, results = run(pictures, {late: 0})
    assert_better(results, 0.4 if motion is translation else 0.6)


def test_the_flow_level_follows_the_keyframe_interval():
    params = PropagationParams()  # finest level 2, one finer from keyframes 0.5 s apart
    assert [finest_scale(params, t) for t in (None, 0.2, 0.49, 0.5, 2.0)] == [2, 2, 2, 1, 1]
    assert finest_scale(PropagationParams(fine_flow_interval=0), 2.0) == 2  # 0 = never
    assert finest_scale(PropagationParams(flow_finest_scale=0), 2.0) == 0  # none finer than 0


@pytest.mark.parametrize("motion", [translation, rotation, deformation], ids=lambda m: m.__name__)
def test_keyframes_far_apart_are_carried_by_a_finer_flow(motion):
    """A slow network: the keyframe is 22 frames old when it arrives, the next one 22 frames
    later. Told that keyframes are 0.75 s apart, the propagator finds the flow one level finer
    and its mattes are clearly closer to the truth; told 0.25 s, it does exactly what it did."""
    scene = Scene(seed=1)
    pictures = [scene.frame(motion(i)) for i in range(40)]
    arrivals = {2: 0, 24: 2}

    def error(interval: float, **params) -> float:
        _, results = run(pictures, arrivals, PropagationParams(**params), keyframe_interval=interval)
        return float(np.mean([mad(m, t) for m, _, t in results]))

    coarse = error(0.75, fine_flow_interval=0)
    assert error(0.75) < 0.9 * coarse
    assert error(0.25) == coarse


def test_consecutive_late_keyframes_keep_up():
    """The CPU case: the network takes 6 frames, then starts again on the newest frame."""
    scene = Scene(seed=4)
    pictures = [scene.frame(translation(i, speed=3.0)) for i in range(40)]
    arrivals = {k + 6: k for k in range(0, 34, 6)}
    _, results = run(pictures, arrivals)
    assert_better(results, 0.35)
    # Keyframes keep the drift down: the last frames are as good as the first.
    first = np.mean([mad(m, t) for m, _, t in results[:6]])
    last = np.mean([mad(m, t) for m, _, t in results[-6:]])
    assert last < 2 * first + 0.002


def test_occluding_object():
    """A textured bar sweeps across the subject; it hides part of it (truth: subject minus bar)."""
    scene = Scene(seed=5)
    bar_picture = texture(9, base=60).astype(np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = []
    for i in range(24):
        x0 = 40 + 6 * i
        mask = np.clip(np.minimum(xx - x0, x0 + 30 - xx) / 2 + 0.5, 0, 1).astype(np.float32)
        moved_bar = np.roll(bar_picture, 6 * i, axis=1)  # its texture moves with it
        frames.append(scene.frame(translation(i, speed=1.5), occluder=(mask, moved_bar)))
    _, results = run(frames, {4: 0, 12: 8})
    assert_better(results, 0.6)


def test_scene_cut_takes_the_new_keyframe_as_it_comes():
    before = Scene(seed=1)
    after = Scene(seed=2, axes=(40, 70))
    frames = [before.frame(translation(i)) for i in range(10)]
    frames += [after.frame(translation(-i)) for i in range(12)]
    # Keyframe of frame 2 arrives at 6 (before the cut), of frame 9 (old scene) at 12, of
    # frame 12 (new scene) at 16.
    prop, results = run(frames, {6: 2, 12: 9, 16: 12})
    assert prop.cuts == 1
    tail = results[-(len(frames) - 17) :]  # from the frame that shows the new scene's keyframe
    assert_better(tail, 0.4)
    # Across the cut the old matte is held, not dragged along by meaningless flow.
    prop = Propagator()
    for i, (image, _) in enumerate(frames[:11]):
        out = prop.step(i, image)
        if i == 6:
            prop.keyframe(2, noisy(frames[2][1], 2))
        if i == 9:
            last = out
    assert np.array_equal(out, last)


@pytest.mark.parametrize("gains", ["ramp", "step", "darker"])
def test_a_change_of_exposure_is_followed_not_taken_for_a_cut(gains):
    """A webcam's auto exposure (or a lamp switched on) scales the whole picture: the flow still
    holds, so the matte must go on following the subject, not freeze as at a cut."""
    gain = {
        "ramp": lambda i: 1.0 + 0.3 * min(i, 20) / 20,  # 30% brighter over 20 frames
        "step": lambda i: 1.0 if i < 8 else 1.4,  # one jump
        "darker": lambda i: 1.0 - 0.35 * min(i, 10) / 10,
    }[gains]

    def frames(exposure):
        scene = Scene(seed=6)
        out = []
        for i in range(30):
            image, truth = scene.frame(translation(i, speed=2.0))
            out.append((np.clip(image.astype(np.float32) * exposure(i), 0, 255).astype(np.uint8), truth))
        return out

    # One keyframe before the change, arriving late; the next only near the end.
    keyframes = {6: 0, 26: 20}
    prop, results = run(frames(gain), keyframes)
    _, steady = run(frames(lambda i: 1.0), keyframes)
    assert prop.cuts == 0
    assert_better(results, 0.65)
    # About as close to the truth as under a steady exposure (a frozen matte: 1.5x).
    assert np.mean([mad(m, t) for m, _, t in results]) < 1.2 * np.mean([mad(m, t) for m, _, t in steady])


def test_newest_keyframe_is_used_as_is_and_off_means_the_newest_result():
    scene = Scene()
    image, truth = scene.frame(translation(0))
    alpha = noisy(truth, 0)
    for params in (PropagationParams(), PropagationParams(enabled=False)):
        prop = Propagator(params)
        assert prop.step(0, image) is None
        prop.keyframe(0, alpha)
        # The network kept up (its result is for the newest frame): used as it is, no flow.
        assert np.array_equal(prop.current(), cv2.resize(alpha, (W, H), interpolation=cv2.INTER_LINEAR))
        image1, _ = scene.frame(translation(1))
        out = prop.step(1, image1)
        assert out.shape == (H, W) and out.dtype == np.float32
    # Off: no flow at all, the newest result resized as it is.
    assert np.array_equal(out, cv2.resize(alpha, (W, H), interpolation=cv2.INTER_LINEAR))


def test_keyframe_checks_and_history():
    scene = Scene()
    prop = Propagator(PropagationParams(history=5))
    frames = [scene.frame(translation(i)) for i in range(12)]
    for i, (image, _) in enumerate(frames):
        prop.step(i, image)
    with pytest.raises(ValueError, match="newer than the newest"):
        prop.keyframe(12, frames[0][1])
    # Older than the history: carried from the oldest kept frame (7), so only the motion of
    # frames 7..11 is known; still better than stale.
    prop.keyframe(2, frames[2][1])
    assert prop.last_carry == 9
    out = prop.step(12, scene.frame(translation(12))[0])
    truth12 = scene.frame(translation(12))[1]
    assert mad(out, truth12) < mad(frames[2][1], truth12)
    # An older result than the one in use is ignored.
    prop.keyframe(1, np.zeros((H, W), np.float32))
    assert prop.keyframes == 1


def test_settings_change_mid_stream_and_frame_size_resets():
    """Live controls replace `.params`: switching off gives the newest result as it is, switching
    back on or changing the flow width restarts the flow history without losing the matte."""
    scene = Scene()
    frames = [scene.frame(translation(i)) for i in range(16)]
    prop = Propagator()
    outs = []
    for i, (image, _) in enumerate(frames):
        if i == 4:
            prop.params = PropagationParams(enabled=False)
        elif i == 7:
            prop.params = PropagationParams()
        elif i == 10:
            prop.params = PropagationParams(flow_width=160)
        out = prop.step(i, image)
        outs.append(out)
        if i in (1, 8, 12):
            prop.keyframe(i - 1, noisy(frames[i - 1][1], i))
    assert outs[0] is None and all(o.shape == (H, W) for o in outs[2:])
    assert np.array_equal(outs[5], cv2.resize(noisy(frames[0][1], 1), (W, H)))  # off: as it is
    assert mad(outs[15], frames[15][1]) < mad(cv2.resize(noisy(frames[11][1], 12), (W, H)), frames[15][1])
    # Another frame size: a new stream, nothing carried over.
    assert prop.step(16, np.zeros((60, 80, 3), np.uint8)) is None


def test_keyframes_are_averaged_where_the_picture_is_still_and_taken_where_it_moved():
    """`fuse`: a still picture's keyframes differ only by the network's noise, so each new one is
    averaged with the matte in use; where the subject moved since the last keyframe the new one
    is taken as it is (the carried matte may have drifted there)."""
    scene = Scene()
    still_image, truth = scene.frame(translation(0))
    first, second = np.zeros((H, W), np.float32), np.ones((H, W), np.float32)
    for fuse, expected in ((0.5, 0.5), (1.0, 1.0)):
        prop = Propagator(PropagationParams(fuse=fuse, fuse_median=False))
        prop.step(0, still_image)
        prop.keyframe(0, first)
        for i in range(1, 4):
            prop.step(i, still_image)
        prop.keyframe(2, second)  # late: carried over frame 3, but nothing moved
        assert np.allclose(prop.current(), expected, atol=1e-3), fuse

    # The subject moves between the keyframes: on it, the new keyframe is taken as it is, while
    # the background far from it (still) is averaged: with only two network results so far the
    # median (the default) has no third vote, and the new result stands in for it.
    frames = [scene.frame(translation(i, speed=4.0))[0] for i in range(6)]
    on_subject = scene.frame(translation(5, speed=4.0))[1] > 0.99
    for median in (False, True):
        prop = Propagator(PropagationParams(fuse=0.5, fuse_median=median))
        prop.step(0, frames[0])
        prop.keyframe(0, first)
        for i in range(1, 6):
            prop.step(i, frames[i])
        prop.keyframe(5, second)
        out = prop.current()
        assert out[on_subject].mean() > 0.95, median
        assert abs(out[:20, :20].mean() - 0.5) < 0.05, median  # a still corner of the background


def test_where_the_subject_moved_keyframes_that_agree_are_averaged_and_a_new_shape_is_taken():
    """`fuse_agree`: on a moving subject, a new keyframe that differs from the carried matte by
    the network's noise (0.1 here) is averaged with it, so that noise does not travel with the
    subject; one that differs by more (a drifted carry, a new shape: 1.0 here) is taken as it is."""
    scene = Scene()
    shots = [scene.frame(translation(i, speed=4.0)) for i in range(6)]
    on_subject = (shots[0][1] > 0.99) & (shots[5][1] > 0.99)
    for later, expected in ((0.8, 0.85), (0.0, 0.0)):  # the first keyframe says 0.9 on the subject
        for agree, want in ((0.2, expected), (0.0, later)):  # fuse_agree 0: every difference counts
            prop = Propagator(PropagationParams(fuse=0.5, fuse_agree=agree, fuse_agree_range=0.05))
            prop.step(0, shots[0][0])
            prop.keyframe(0, 0.9 * shots[0][1])
            for i in range(1, 6):
                prop.step(i, shots[i][0])
            prop.keyframe(5, later * shots[5][1])
            out = prop.current()
            assert abs(float(np.median(out[on_subject])) - want) < 0.02, (later, agree)
            assert np.allclose(out[:20, :20], 0, atol=1e-3)  # the background: 0 in both


def test_a_keyframe_that_corrects_the_carried_matte_is_marked_for_the_next_frame():
    """`correction()`: on the first frame after a keyframe, where the subject moved since the
    keyframe before and the new one disagrees with the carried matte (1.0 here), the matte shows a
    correction; where they agree within the network's noise (0.1), or nothing moved, it does not.
    The mark is for that one frame, carried with the matte, and None on every other frame."""
    scene = Scene()
    shots = [scene.frame(translation(i, speed=4.0)) for i in range(8)]
    on_subject = (shots[5][1] > 0.99) & (shots[6][1] > 0.99)
    for later, expected in ((0.0, 1.0), (0.8, 0.0)):  # the first keyframe says 0.9 on the subject
        prop = Propagator(PropagationParams(fuse_agree_range=0.05))
        prop.step(0, shots[0][0])
        prop.keyframe(0, 0.9 * shots[0][1])
        for i in range(1, 6):
            prop.step(i, shots[i][0])
            assert prop.correction() is None
        prop.keyframe(4, later * shots[4][1])  # late: carried over frame 5
        prop.step(6, shots[6][0])
        mark = prop.correction()
        assert mark.shape == (H, W)
        assert abs(float(np.median(mark[on_subject])) - expected) < 0.02, later
        assert np.allclose(mark[:20, :20], 0)  # the background far from the subject: still
        prop.step(7, shots[7][0])
        assert prop.correction() is None

    # A still picture: its keyframes differ only by noise, never a correction.
    still_image, truth = scene.frame(translation(0))
    prop = Propagator(PropagationParams())
    prop.step(0, still_image)
    prop.keyframe(0, truth)
    prop.step(1, still_image)
    prop.keyframe(1, np.zeros_like(truth))
    prop.step(2, still_image)
    assert np.allclose(prop.correction(), 0)


def test_a_still_pictures_one_off_keyframe_error_is_dropped_and_a_lasting_change_shows():
    """`fuse_median`: where nothing moved, each keyframe becomes the median of itself, the one
    before and the matte in use. A blob in one keyframe alone never shows; a change the network
    keeps seeing shows from its second keyframe on (then eased in by `fuse`)."""
    still_image, _ = Scene().frame(translation(0))
    clean = np.zeros((H, W), np.float32)
    blob = clean.copy()
    blob[40:80, 60:120] = 1.0
    seen = []
    for fuse in (1.0, 0.5):
        prop = Propagator(PropagationParams(fuse=fuse))
        frame = 0
        means = []
        for matte in (clean, clean, blob, clean, clean, blob, blob, blob):
            prop.step(frame, still_image)
            prop.step(frame + 1, still_image)
            prop.keyframe(frame, matte)  # a frame late, as from a network that takes a frame
            means.append(float(prop.current()[40:80, 60:120].mean()))
            frame += 2
        seen.append(means)
    taken, eased = seen
    assert np.allclose(taken, [0, 0, 0, 0, 0, 0, 1, 1], atol=1e-3), taken
    assert np.allclose(eased, [0, 0, 0, 0, 0, 0, 0.5, 0.75], atol=1e-3), eased
    assert np.allclose(prop.current()[150:, 200:], 0, atol=1e-3)  # away from the change: untouched
