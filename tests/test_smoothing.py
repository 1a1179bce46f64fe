"""Temporal smoothing: push mattes and images in, check what comes out."""

import math

import pytest
import torch

from streamer.errors import ConfigError
from streamer.smoothing import (
    SmoothingParams,
    TemporalSmoother,
    blend,
    grey_cells_opencv,
    grey_cells_torch,
    grow_max_opencv,
    grow_max_torch,
    still_weight,
)
from tests.harness import params_switched

H, W = 48, 64


def textured_image(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(40, 200, (H, W, 3), generator=gen, dtype=torch.uint8)


def disc(cx: float, cy: float = H / 2, r: float = 12) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    return ((r - torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)) / 2 + 0.5).clamp(0, 1)


def scene(cx: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose subject (a bright disc) sits where the matte says."""
    alpha = disc(cx)
    image = (textured_image().float() * (1 - alpha[..., None]) + 250 * alpha[..., None]).to(torch.uint8)
    return alpha, image


def test_still_scene_converges_and_flicker_drops():
    gen = torch.Generator().manual_seed(1)
    truth, image = scene(30)
    smoother = TemporalSmoother(SmoothingParams(), "cpu")
    raw_flicker = out_flicker = 0.0
    prev_raw = prev_out = None
    for i in range(60):
        raw = (truth + torch.randn(H, W, generator=gen) * 0.1).clamp(0, 1)
        out = smoother(raw, image, i / 30)
        if i >= 30:  # after one second: the converged regime
            raw_flicker += float((raw - prev_raw).abs().mean())
            out_flicker += float((out - prev_out).abs().mean())
        prev_raw, prev_out = raw, out
    assert out_flicker < 0.4 * raw_flicker
    assert float((out - truth).abs().mean()) < float((raw - truth).abs().mean())


def test_motion_is_followed_without_lag():
    smoother = TemporalSmoother(SmoothingParams(strength=1.0), "cpu")
    for i in range(30):
        alpha, image = scene(20)
        smoother(alpha, image, i / 30)
    alpha, image = scene(44)  # the subject jumps: image and matte change together
    out = smoother(alpha, image, 1.0)
    assert float((out - alpha).abs().max()) < 0.05
    alpha2, image2 = scene(44)
    out = smoother(alpha2, image2, 1.0 + 1 / 30)
    assert float((out - alpha).abs().max()) < 0.05


def test_matte_change_without_image_change_is_smoothed_then_accepted():
    params = SmoothingParams(strength=0.5)
    smoother = TemporalSmoother(params, "cpu")
    _, image = scene(30)
    zero, one = torch.zeros(H, W), torch.ones(H, W)
    smoother(zero, image, 0.0)
    first = smoother(one, image, 1 / 30)
    assert float(first.mean()) == pytest.approx(still_weight(1 / 30, params), abs=1e-5)
    for i in range(2, 31):
        out = smoother(one, image, i / 30)
    assert float(out.min()) > 0.99  # a persistent change gets through within a second


@pytest.mark.parametrize("fps", [30, 60])
def test_time_constant_is_in_seconds(fps):
    params = SmoothingParams(strength=0.5)
    smoother = TemporalSmoother(params, "cpu")
    _, image = scene(30)
    smoother(torch.zeros(H, W), image, 0.0)
    for i in range(1, int(0.2 * fps) + 1):
        out = smoother(torch.ones(H, W), image, i / fps)
    expected = 1 - math.exp(-0.2 / params.time_constant)
    assert float(out.mean()) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("interval", "expected"),
    [(None, 0.15), (1 / 30, 0.15), (0.2, 0.3), (0.77, 1.155), (5.0, 1.25)],
)
def test_propagated_mattes_are_averaged_over_a_few_keyframes(interval, expected):
    """Strength 0.5: 0.15 s for a network's own mattes; with keyframes `interval` apart, three
    intervals at strength 1 (halved), between 0.3 s and 2.5 s at strength 1."""
    params = SmoothingParams(strength=0.5)
    assert params.still_time_constant(interval) == pytest.approx(expected)
    smoother = TemporalSmoother(params, "cpu")
    _, image = scene(30)
    smoother(torch.zeros(H, W), image, 0.0, interval)
    for i in range(1, 7):
        out = smoother(torch.ones(H, W), image, i / 30, interval)
    assert float(out.mean()) == pytest.approx(1 - math.exp(-0.2 / expected), abs=1e-4)


def test_keyframe_noise_of_a_still_picture_is_averaged_not_just_eased_in():
    """A still picture whose propagated matte changes only when a keyframe arrives (every 0.5 s,
    each with its own noise): told the interval, the smoother cuts the matte's movement from
    frame to frame by a third or more, its error no worse; without it (0.15 s) each keyframe's noise comes through whole."""
    gen = torch.Generator().manual_seed(2)
    truth, image = scene(30)
    told, untold = TemporalSmoother(SmoothingParams(), "cpu"), TemporalSmoother(SmoothingParams(), "cpu")
    moved = {"raw": 0.0, "told": 0.0, "untold": 0.0}
    error = dict.fromkeys(moved, 0.0)
    before = None
    for i in range(150):
        if i % 15 == 0:
            raw = (truth + torch.randn(H, W, generator=gen) * 0.1).clamp(0, 1)
        now = {"raw": raw, "told": told(raw, image, i / 30, 0.5), "untold": untold(raw, image, i / 30)}
        if i >= 30:
            for k in now:
                moved[k] += float((now[k] - before[k]).abs().mean())
                error[k] += float((now[k] - truth).abs().mean())
        before = now
    assert moved["untold"] > 0.8 * moved["raw"]
    assert moved["told"] < 0.7 * moved["raw"]
    assert error["told"] < error["untold"]


def test_scene_cut_resets_immediately():
    smoother = TemporalSmoother(SmoothingParams(strength=1.0), "cpu")
    alpha, image = scene(30)
    for i in range(10):
        smoother(alpha, image, i / 30)
    resets = smoother.resets
    new_alpha = torch.rand(H, W, generator=torch.Generator().manual_seed(3))
    out = smoother(new_alpha, 255 - image, 10 / 30)
    assert torch.equal(out, new_alpha)
    assert smoother.resets == resets + 1


@pytest.mark.parametrize(
    "next_time, size",
    [(5.0, (H, W)), (0.1, (H, W)), (11 / 30, (H // 2, W))],
    ids=["gap", "time-backwards", "size-change"],
)
def test_gaps_and_size_changes_reset(next_time, size):
    smoother = TemporalSmoother(SmoothingParams(strength=1.0), "cpu")
    alpha, image = scene(30)
    for i in range(10):
        smoother(alpha, image, 0.2 + i / 30)
    new_alpha = torch.full(size, 0.25)
    out = smoother(new_alpha, image[: size[0], : size[1]], next_time)
    assert torch.equal(out, new_alpha)


def test_disabled_is_identity_and_params_are_live():
    smoother = TemporalSmoother(SmoothingParams(enabled=False), "cpu")
    _, image = scene(30)
    for i in range(3):
        alpha = torch.rand(H, W)
        assert smoother(alpha, image, i / 30) is alpha
    smoother.params = SmoothingParams(strength=1.0)
    smoother(torch.zeros(H, W), image, 3 / 30)
    out = smoother(torch.ones(H, W), image, 4 / 30)
    assert float(out.mean()) < 0.5  # now smoothing
    smoother.params = SmoothingParams(strength=0.0)
    alpha = torch.rand(H, W)
    assert smoother(alpha, image, 5 / 30) is alpha


def test_runs_on_the_alpha_device_with_a_cpu_image():
    smoother = TemporalSmoother(SmoothingParams(), "cpu")
    alpha, image = scene(30)
    out = smoother(alpha.double().float(), image, 0.0)
    assert out.device == alpha.device and out.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strength": 1.5}, "smoothing.strength: bad value 1.5: expected at most 1"),
        ({"max_gap": -1}, "smoothing.max_gap"),
        ({"motion_scale": 0}, "smoothing.motion_scale: bad value 0: expected at least 1"),
    ],
)
def test_bad_params_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as err:
        SmoothingParams(**kwargs)
    assert "\n" not in str(err.value)


def test_grey_cells_agree_on_cpu_and_gpu_paths():
    image = textured_image(4)
    fast, torch_path = grey_cells_opencv(image, 2), grey_cells_torch(image, 2)
    assert fast.shape == torch_path.shape == (H // 2, W // 2)
    assert float((fast - torch_path).abs().max()) < 0.003  # OpenCV rounds luma to 8 bits first


@pytest.mark.parametrize("reach", [1, 3])
def test_max_filter_is_exactly_the_same_on_both_paths(reach):
    weight = torch.rand(H // 2 + 1, W // 2, generator=torch.Generator().manual_seed(reach))
    weight[weight < 0.9] = 0  # sparse peaks: every output is some neighbour's value, or 0
    fast, torch_path = grow_max_opencv(weight, reach), grow_max_torch(weight, reach)
    assert torch.equal(fast, torch_path)
    assert float(fast.sum()) > float(weight.sum())


@pytest.mark.parametrize("floored", [False, True], ids=["no-floor", "floor"])
@pytest.mark.parametrize("size", [(H, W), (H + 1, W - 1)])
def test_cpu_blend_matches_the_bilinear_blend(size, floored):
    gen = torch.Generator().manual_seed(5)
    previous, current = torch.rand(size, generator=gen), torch.rand(size, generator=gen)
    cells = torch.rand(-(-size[0] // 2), -(-size[1] // 2), generator=gen)
    floor = torch.rand(size, generator=gen) if floored else None
    weight = torch.nn.functional.interpolate(cells[None, None], size=size, mode="bilinear")[0, 0]
    weight = weight.clamp(min=0.3) if floor is None else torch.maximum(weight.clamp(min=0.3), floor)
    expected = previous + weight * (current - previous)
    kept = previous.clone(), current.clone()
    assert float((blend(previous, current, cells, 0.3, floor) - expected).abs().max()) < 1e-4
    assert torch.equal(previous, kept[0]) and torch.equal(current, kept[1])  # inputs untouched


def test_a_keyframes_correction_is_taken_at_once_and_its_noise_eased_in():
    """Keyframes 0.77 s apart on a still picture (a time constant of over a second): where the
    propagator marks a correction, the new matte is taken at once, elsewhere eased in; a
    correction of 0.5 takes half of it."""
    _, image = scene(30)
    smoother = TemporalSmoother(SmoothingParams(), "cpu")
    smoother(torch.zeros(H, W), image, 0.0, 0.77)
    correction = torch.zeros(H, W)
    correction[:, : W // 2] = 1.0
    correction[:10, :10] = 0.5
    out = smoother(torch.ones(H, W), image, 1 / 30, 0.77, correction)
    assert torch.equal(out[10:, : W // 2], torch.ones(H - 10, W // 2))
    assert float(out[:10, :10].mean()) == pytest.approx(0.5)
    eased = still_weight(1 / 30, SmoothingParams(), 0.77)
    assert eased < 0.05 and float(out[:, W // 2 :].max()) == pytest.approx(eased)


@pytest.mark.cuda
def test_smoother_runs_on_the_gpu_like_on_the_cpu():
    gen = torch.Generator().manual_seed(2)
    on_cpu, on_gpu = TemporalSmoother(SmoothingParams(), "cpu"), TemporalSmoother(SmoothingParams(), "cuda")
    _, image = scene(30)
    for i in range(5):
        alpha, correction = torch.rand(H, W, generator=gen), torch.rand(H, W, generator=gen)
        a = on_cpu(alpha, image, i / 30, 0.5, correction)
        b = on_gpu(alpha.cuda(), image, i / 30, 0.5, correction.cuda())
    assert b.device.type == "cuda"
    assert float((a - b.cpu()).abs().max()) < 0.02


LIVE = [
    SmoothingParams(motion_scale=2),
    SmoothingParams(motion_scale=4, strength=1.0),
    SmoothingParams(enabled=False),
    SmoothingParams(motion_scale=3, motion_reach=0, max_gap=0.01),
    SmoothingParams(strength=0.0),
    SmoothingParams(motion_scale=1, scene_cut=0.0),
]


class SwitchOnEveryRead(TemporalSmoother):
    """A live change lands between any two reads of `.params`: the worst timing, made certain."""

    reads = 0

    @property
    def params(self):
        self.reads += 1
        return LIVE[self.reads % len(LIVE)]

    @params.setter
    def params(self, value):
        pass


def test_each_frame_reads_the_params_once():
    smoother, reference = SwitchOnEveryRead(), TemporalSmoother()
    for i in range(4 * len(LIVE)):
        alpha, image = scene(20 + i % 5)
        reads = smoother.reads
        out = smoother(alpha, image, i / 30)
        assert smoother.reads == reads + 1
        reference.params = LIVE[smoother.reads % len(LIVE)]
        assert torch.equal(out, reference(alpha, image, i / 30))


def test_params_switched_from_another_thread_while_smoothing():
    smoother = TemporalSmoother(LIVE[0], "cpu")
    with params_switched(smoother, LIVE) as switches:
        for i in range(400):
            alpha, image = scene(20 + i % 5)
            assert smoother(alpha, image, i / 30).shape == (H, W)
    assert switches[0] > 400


def test_propagated_mattes_with_keyframes_a_second_apart_never_reset():
    """A live job on a CPU: the network delivers about once a second, propagation gives every
    camera frame a matte, and the smoother sees every frame 1/30 s apart. Frame times, not the
    time between network results, decide a gap: no reset after the first frame, while a real
    camera gap still resets."""
    from streamer.propagation import Propagator
    from streamer.synthetic import Scene, SimulatedNetwork

    fps = 30.0
    scene = Scene(60, 80, seed=3, follow=True)
    propagator, network = Propagator(), SimulatedNetwork(latency=1.0, fps=fps)
    smoother = TemporalSmoother(SmoothingParams(max_gap=0.5), "cpu")
    shown = 0
    for i in range(int(3.5 * fps)):
        clock = i / fps
        truth = scene.truth(clock)
        image = scene.image(truth, clock)
        start = network.arrived(i)
        if start is not None:
            propagator.keyframe(start, scene.network(start / fps).numpy())
        matte = propagator.step(i, image.numpy())
        network.start(i)
        if matte is not None:
            out = smoother(torch.from_numpy(matte), image, i / fps)
            shown += 1
            assert out.shape == truth.shape
    starts = [s for s, _ in network.results]
    assert starts == [0, 30, 60]  # keyframes 1 s apart
    assert shown == int(3.5 * fps) - 30 and smoother.resets == 1
    smoother(torch.from_numpy(matte), image, 3.5 + 0.6)  # the camera itself stalled 0.6 s
    assert smoother.resets == 2
