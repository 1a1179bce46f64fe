"""Every surface that takes a still picture reads it the same way: upright, 8-bit RGB, deep
greys scaled rather than clipped."""

import io
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_http_fuzz import png_claiming

from streamer.cli import main
from streamer.commands.image import read_image
from streamer.compose.background import ImageBackground
from streamer.errors import EXIT_DAMAGED_INPUT, MediaError
from streamer.live.http_guard import decode_image
from streamer.sources.images import load_rgb
from streamer.stills import upright_rgb

ORIENTATION = 0x0112


def grey16(height=24, width=40) -> np.ndarray:
    """A left-to-right ramp over the whole 16-bit range."""
    return np.tile(np.linspace(0, 65535, width), (height, 1)).astype(np.uint16)


def save_grey16(path) -> np.ndarray:
    ramp = grey16()
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"  # what Pillow makes of a 16-bit grey PNG
    return ramp


def phone_photo(path) -> np.ndarray:
    """A 30x50 (HxW) JPEG stored sideways with the tag that says "turn 90 degrees clockwise"."""
    stored = np.zeros((30, 50, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the stored picture's left
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    return stored


def expect_scaled(rgb: np.ndarray, ramp: np.ndarray) -> None:
    assert rgb.dtype == np.uint8 and rgb.shape == (*ramp.shape, 3)
    expected = np.rint(ramp / 257).astype(int)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_a_16_bit_grey_is_scaled_not_clipped_white(tmp_path):
    ramp = save_grey16(tmp_path / "scan.png")
    rgb = upright_rgb(Image.open(tmp_path / "scan.png"))
    expect_scaled(rgb, ramp)
    assert rgb[..., 0].mean() == pytest.approx(127.5, abs=2)  # clipping gave ~254


@pytest.mark.parametrize("mode", ["I", "F"])
def test_wide_modes_holding_8_bit_values_keep_them(mode):
    values = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    rgb = upright_rgb(Image.fromarray(values).convert(mode))
    assert (rgb[..., 1] == values).all()


def test_wide_modes_past_8_bits_read_as_16_bit():
    ramp = grey16()
    expect_scaled(upright_rgb(Image.fromarray(ramp.astype(np.int32), "I")), ramp)
    expect_scaled(upright_rgb(Image.fromarray(ramp.astype(np.float32), "F")), ramp)


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F"]),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    orientation=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_any_mode_and_orientation_gives_upright_8_bit_rgb(mode, height, width, orientation, seed):
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    picture.save(buffer, format="TIFF", exif=exif)
    rgb = upright_rgb(Image.open(io.BytesIO(buffer.getvalue())))
    # Orientations 5-8 turn the picture a quarter: height and width swap.
    assert rgb.shape == ((width, height) if orientation >= 5 else (height, width)) + (3,)
    assert rgb.dtype == np.uint8


# Each surface below clipped 16-bit greys to white before it went through `streamer.stills`, and
# the background picture also ignored the EXIF orientation.
def test_the_image_folder_source_reads_16_bit(tmp_path):
    ramp = save_grey16(tmp_path / "0001.png")
    expect_scaled(load_rgb(tmp_path / "0001.png"), ramp)


def test_the_image_command_reads_16_bit(tmp_path):
    ramp = save_grey16(tmp_path / "scan.png")
    expect_scaled(read_image(tmp_path / "scan.png").numpy(), ramp)


def test_an_uploaded_16_bit_picture_is_scaled(tmp_path):
    ramp = save_grey16(tmp_path / "scan.png")
    expect_scaled(decode_image((tmp_path / "scan.png").read_bytes()), ramp)


def test_a_background_photo_is_upright_and_16_bit_is_scaled(tmp_path):
    phone_photo(tmp_path / "beach.jpg")
    upright = ImageBackground(tmp_path / "beach.jpg").image.numpy()
    assert upright.shape == (50, 30, 3)
    assert upright[:10, :, 0].mean() > 200 and upright[-10:, :, 0].mean() < 50  # the band is on top

    ramp = save_grey16(tmp_path / "gradient.png")
    expect_scaled(ImageBackground(tmp_path / "gradient.png").image.numpy(), ramp)


def test_a_picture_over_the_size_limit_is_one_line_not_a_traceback(tmp_path, recipe_weights, capsys):
    """Pillow refuses over ~179 megapixels with a bare Exception, which every surface let through."""
    huge = tmp_path / "panorama.png"
    huge.write_bytes(png_claiming(20000, 10000, b""))
    too_large = f"{huge} is too large to read: Image size (200000000 pixels) exceeds limit of"
    with pytest.raises(MediaError, match=re.escape(too_large)):
        ImageBackground(huge)
    with pytest.raises(MediaError, match=re.escape(too_large)):
        load_rgb(huge)
    model = ["--variant", "lite", "--weights", str(recipe_weights("lite")), "--size", "64x64"]
    # Alone, it is an error (nothing was made); among others, it is skipped and counted.
    assert main(["image", str(huge), "-o", str(tmp_path / "cut.png"), *model]) == 2
    assert f"streamer: error: {too_large}" in capsys.readouterr().err
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    assert main(["image", str(huge), str(small), "-o", str(tmp_path / "cuts"), *model]) == EXIT_DAMAGED_INPUT
    assert f"could not be read and were skipped ({huge})" in capsys.readouterr().err
