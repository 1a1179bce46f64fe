"""Compositor: push (image, alpha) in, check the picture that comes out."""

import av
import numpy as np
import pytest
import torch
from PIL import Image

from streamer.compose.background import VideoBackground
from streamer.compose.blur import working_scale
from streamer.compose.compositor import CompositeParams, Compositor, blend_u8
from streamer.compose.edges import feather, gamma, grow, threshold
from streamer.errors import ConfigError
from tests.harness import params_switched
from tests.media import make_clip, read_video

H, W = 40, 60


def subject() -> tuple[torch.Tensor, torch.Tensor]:
    """A white square (alpha 1) on a grey textured frame (alpha 0)."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(60, 120, (H, W, 3), generator=gen, dtype=torch.uint8)
    alpha = torch.zeros(H, W)
    alpha[10:30, 20:40] = 1.0
    image[10:30, 20:40] = 255
    return image, alpha


def compose(image, alpha, t=0.0, **kwargs):
    out = Compositor(CompositeParams(**kwargs), "cpu")(image, alpha, t)
    assert out.dtype == torch.uint8 and out.device.type == "cpu"
    return out


def portrait(h: int = 140, w: int = 180) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    alpha = ((40 - torch.sqrt((xx - w / 2) ** 2 + (yy - h / 2) ** 2)) / 6 + 0.5).clamp(0, 1)
    return torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8), alpha


@pytest.mark.parametrize(
    ("mode", "size", "radius", "step"),
    [
        ("rgba", (140, 180), 12, 2),
        ("color", (140, 180), 12, 2),
        ("blur", (140, 180), 12, 2),
        # The blur's coarser grids, reached by halvings (odd sizes round up at each one).
        ("blur", (141, 183), 25, 4),
        ("blur", (141, 183), 60, 8),
        ("blur", (480, 640), 25, 4),
    ],
)
def test_torch_path_matches_the_opencv_cpu_path(mode, size, radius, step):
    """The torch path is what runs on a GPU: on the CPU it must draw the same picture."""
    assert working_scale(radius, *size) == step
    image, alpha = portrait(*size)
    compositor = Compositor(CompositeParams(mode=mode, blur_radius=radius), "cpu")
    fast = compositor(image, alpha, 0.0)
    compositor.opencv_on_cpu = False
    slow = compositor(image, alpha, 0.0)
    assert fast.shape == slow.shape
    # The CPU path truncates F*255 like the official code and reads an 8-bit matte: 2 levels;
    # blur: the coarse grid is resampled differently.
    tolerance = 3 if mode == "blur" else 2
    assert (fast.int() - slow.int()).abs().max() <= tolerance


def test_the_8_bit_blend_is_within_a_level_of_the_float_blend():
    """Every (foreground, background, matte) triple of 8-bit values."""
    levels = np.arange(256, dtype=np.uint8)
    fg = np.repeat(np.repeat(levels[:, None, None], 256, axis=1), 3, axis=2)
    back = np.ascontiguousarray(fg.transpose(1, 0, 2))
    for a in range(256):
        out = blend_u8(fg, back, np.full((256, 256), a, np.uint8)).astype(int)
        exact = np.floor(fg * (a / 255) + back * (1 - a / 255) + 0.5)
        assert np.abs(out - exact).max() <= 1, a
        if a in (0, 255):
            assert np.array_equal(out, back if a == 0 else fg)


def test_matte_mode_is_the_alpha():
    alpha = torch.linspace(0, 1, H * W).reshape(H, W)
    out = compose(torch.zeros(H, W, 3, dtype=torch.uint8), alpha, mode="matte")
    assert out.shape == (H, W, 1)
    assert torch.equal(out[..., 0], (alpha * 255).round().to(torch.uint8))  # the CPU path's rounding


@pytest.mark.parametrize("refine", [False, True])
def test_green_screen_by_default(refine):
    image, alpha = subject()
    out = compose(image, alpha, refine_foreground=refine)
    assert out.shape == (H, W, 3)
    assert (out[alpha == 0] == torch.tensor([0, 255, 0], dtype=torch.uint8)).all()
    assert (out[alpha == 1].int() - 255).abs().max() <= 1


def test_rgba_is_straight_alpha():
    image, alpha = subject()
    alpha[0, 0] = 0.5
    out = compose(image, alpha, mode="rgba", refine_foreground=False)
    assert out.shape == (H, W, 4)
    assert torch.equal(out[..., :3], image)
    assert out[0, 0, 3] == 128 and out[15, 25, 3] == 255 and out[0, 1, 3] == 0


def test_image_background_covers_and_centre_crops(tmp_path):
    wide = np.zeros((H, 2 * W, 3), np.uint8)
    wide[:, :W] = (255, 0, 0)  # the centre W columns: left half red, right half blue
    wide[:, W:] = (0, 0, 255)
    wide[:, : W // 2] = (0, 255, 0)  # cropped away on both sides
    wide[:, W + W // 2 :] = (255, 255, 0)
    path = tmp_path / "bg.png"
    Image.fromarray(wide).save(path)
    out = compose(*subject(), mode="image", background=str(path), refine_foreground=False)
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, W - 1].tolist() == [0, 0, 255]
    assert out[20, 30].tolist() == [255, 255, 255]


def write_video(path, colours, fps=10):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "rgb24"
        for colour in colours:
            frame = av.VideoFrame.from_ndarray(np.full((16, 32, 3), colour, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_video_background_loops_by_time(tmp_path):
    path = tmp_path / "bg.mov"
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    write_video(path, [red, green, blue])
    compositor = Compositor(CompositeParams(mode="video", background=str(path), refine_foreground=False))
    image, alpha = torch.zeros(H, W, 3, dtype=torch.uint8), torch.zeros(H, W)
    seen = [tuple(compositor(image, alpha, t)[5, 5].tolist()) for t in (0.0, 0.15, 0.25, 0.35, 0.45, 0.05)]
    assert seen == [red, green, blue, red, green, red]


def test_a_phone_clip_background_is_upright(tmp_path):
    """Stored 64x48 with a display matrix that turns it a quarter: shown 48x64, as the source shows it."""
    path = make_clip(tmp_path / "phone.mp4", frames=2, size=(64, 48), rotate=-90, audio=False)
    stored = read_video(path)[0][0]
    shown = VideoBackground(path).frame(64, 48, 0.0, torch.device("cpu"))  # the upright size: no scaling
    np.testing.assert_allclose(shown.numpy() * 255, np.rot90(stored, -1), atol=0.01)


def test_a_damaged_background_video_plays_past_the_damage(tmp_path):
    """A packet that does not decode used to end the job at that frame ("finish stage failed")."""
    clip = make_clip(tmp_path / "waves.mp4", frames=60, size=(320, 240), audio=False)
    data = bytearray(clip.read_bytes())
    third = len(data) // 3
    data[third : third + 3000] = bytes((b * 7 + 13) % 256 for b in data[third : third + 3000])
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    background = VideoBackground(damaged)
    shown = [background.frame(64, 96, i / 25, torch.device("cpu")) for i in range(80)]  # past the end: loops
    background.close()
    assert all(picture.shape == (64, 96, 3) for picture in shown)


def test_blur_does_not_smear_the_subject_into_the_background():
    image, alpha = subject()
    out = compose(image, alpha, mode="blur", blur_radius=8, refine_foreground=False)
    ring = torch.zeros(H, W, dtype=torch.bool)
    ring[6:34, 16:44] = True
    ring[10:30, 20:40] = False
    naive = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None].float(), 17, 1, 8)[0].permute(1, 2, 0)
    assert out[ring].float().mean() < 100  # the grey background, not lightened by the white subject
    assert naive[ring].mean() > 125
    assert (out[alpha == 1] == 255).all()


def test_mirror_flips_the_subject_not_the_background(tmp_path):
    image, alpha = subject()
    alpha[:, :5] = 1.0
    plain = compose(image, alpha, refine_foreground=False)
    mirrored = compose(image, alpha, refine_foreground=False, mirror=True)
    assert torch.equal(mirrored, plain.flip(1))


def test_alpha_of_another_size_is_resized_and_params_are_live():
    image, alpha = subject()
    compositor = Compositor(CompositeParams(mode="matte"))
    small = torch.nn.functional.interpolate(alpha[None, None], size=(H // 2, W // 2))[0, 0]
    assert compositor(image, small, 0.0).shape == (H, W, 1)
    compositor.params = CompositeParams(mode="color", color=(10, 20, 30), refine_foreground=False)
    assert compositor(image, alpha, 0.0)[0, 0].tolist() == [10, 20, 30]


def test_edge_controls():
    alpha = torch.tensor([[0.0, 0.2, 0.6, 1.0]]).repeat(5, 1)
    assert threshold(alpha, 0.5)[0].tolist() == [0, 0, 1, 1]
    assert gamma(alpha, 2.0)[0, 1] == pytest.approx(0.04)
    dot = torch.zeros(9, 9)
    dot[4, 4] = 1.0
    assert grow(dot, 1).sum() == 9 and grow(grow(dot, 1), -1).sum() == 1
    soft = feather(threshold(torch.linspace(0, 1, 20).repeat(20, 1), 0.5), 4)
    assert 0 < soft[10, 10] < 1 and soft[10, 0] == 0 and soft[10, 19] == 1
    out = compose(*subject(), mode="matte", grow=2)
    assert (out[..., 0] > 0).sum() == 24 * 24


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"mode": "foo"},
            "composite.mode: bad value 'foo': expected 'matte', 'rgba', 'color', 'image', 'video' or 'blur'",
        ),
        ({"mode": "image"}, "composite.background: mode 'image' needs a file (pass --background PATH)"),
        (
            {"mode": "video", "background": "nope.mp4"},
            "composite.background: not found: nope.mp4 (pass --background PATH)",
        ),
        (
            {"color": (0, 300, 0)},
            "composite.color: bad value (0, 300, 0): expected a colour like '#00ff00', '0,255,0' "
            "or a name (green, blue, black, ...)",
        ),
        ({"blur_radius": -1}, "composite.blur_radius: bad value -1: expected at least 0"),
        ({"gamma": float("nan")}, "composite.gamma: bad value nan: expected a finite number"),
        ({"threshold": 2}, "composite.threshold: bad value 2: expected at most 1"),
    ],
)
def test_bad_params_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        CompositeParams(**kwargs)
    assert str(err.value) == message


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["matte", "rgba", "color", "blur"])
def test_gpu_compositor_matches_the_cpu_and_returns_cpu_uint8(mode):
    image, alpha = portrait()
    params = CompositeParams(mode=mode, blur_radius=12)
    on_gpu = Compositor(params, "cuda")(image, alpha.cuda(), 0.0)
    on_cpu = Compositor(params, "cpu")(image, alpha, 0.0)
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.uint8
    assert (on_gpu.int() - on_cpu.int()).abs().max() <= (3 if mode == "blur" else 2)


def live_modes(tmp_path) -> list[CompositeParams]:
    path = tmp_path / "bg.png"
    Image.fromarray(np.full((H, W, 3), (200, 10, 10), np.uint8)).save(path)
    video = tmp_path / "bg.mov"
    write_video(video, [(0, 0, 255), (255, 0, 0)])
    return [
        CompositeParams(mode="color", refine_foreground=False),
        CompositeParams(mode="blur", blur_radius=3),
        CompositeParams(mode="image", background=str(path)),
        CompositeParams(mode="matte", mirror=True),
        CompositeParams(mode="rgba"),
        CompositeParams(mode="video", background=str(video), refine_foreground=False),
        CompositeParams(mode="color", color=(1, 2, 3), threshold=0.5),
    ]


class SwitchOnEveryRead(Compositor):
    """A live change lands between any two reads of `.params`: the worst timing, made certain."""

    def __init__(self, modes, **kwargs):
        super().__init__(modes[0], **kwargs)
        self.modes, self.reads = modes, 0

    @property
    def params(self):
        self.reads += 1
        return self.modes[self.reads % len(self.modes)]

    @params.setter
    def params(self, value):
        pass


@pytest.mark.parametrize("opencv", [True, False])
def test_each_frame_reads_the_params_once(tmp_path, opencv):
    modes = live_modes(tmp_path)
    compositor = SwitchOnEveryRead(modes)
    compositor.opencv_on_cpu = opencv
    image, alpha = subject()
    for i in range(2 * len(modes)):
        reads = compositor.reads
        out = compositor(image, alpha, i / 10)
        assert compositor.reads == reads + 1
        p = modes[compositor.reads % len(modes)]
        plain = Compositor(p)
        plain.opencv_on_cpu = opencv
        assert torch.equal(out, plain(image, alpha, i / 10)), p.mode


def test_modes_switched_from_another_thread_while_compositing(tmp_path):
    """The bug seen live: `KeyError: 'blur'` when the page switched colour -> blur mid-frame."""
    modes = live_modes(tmp_path)
    compositor = Compositor(modes[0])
    image, alpha = subject()
    with params_switched(compositor, modes) as switches:
        for i in range(400):
            out = compositor(image, alpha, i / 30)
            assert out.shape[:2] == (H, W) and out.shape[2] in (1, 3, 4)
    assert switches[0] > 400
