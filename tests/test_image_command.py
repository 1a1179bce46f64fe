"""`streamer image` end to end with the lite recipe weights at 64x64."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from streamer.cli import main


def write_picture(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def shots(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    write_picture(folder / "a.png", 80, 120, 1)
    write_picture(folder / "b.jpg", 100, 70, 2)
    (folder / "notes.txt").write_text("not an image, ignored in a folder")
    return folder


@pytest.fixture
def model_args(recipe_weights):
    weights = str(recipe_weights("lite"))
    return ["--variant", "lite", "--weights", weights, "--size", "64x64", "--device", "cpu"]


@pytest.fixture
def cli(model_args):
    return lambda *args: main(["image", *map(str, args), *model_args])


def test_formats(cli, shots, tmp_path):
    for fmt, mode in (("mask", "L"), ("cutout", "RGBA"), ("composite", "RGB")):
        out = tmp_path / fmt
        assert cli(shots, "-o", out, "--format", fmt, "--color", "0,0,255") == 0
        assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
        for name, size in (("a", (120, 80)), ("b", (70, 100))):
            with Image.open(out / f"{name}.png") as im:
                assert (im.mode, im.size) == (mode, size)
    mask = np.asarray(Image.open(tmp_path / "mask" / "a.png"))
    cutout = np.asarray(Image.open(tmp_path / "cutout" / "a.png"))
    assert np.array_equal(cutout[..., 3], mask)
    assert 10 < mask.mean() < 245 and mask.std() > 1  # a real matte, not a constant


def test_mask_is_the_engine_alpha(cli, shots, tmp_path, recipe_weights):
    from streamer.engine import EngineParams, MattingEngine

    assert cli(shots / "a.png", "-o", tmp_path / "a-mask.png", "--format", "mask") == 0
    engine = MattingEngine.from_params(
        EngineParams(variant="lite", weights=str(recipe_weights("lite")), size=(64, 64), device="cpu")
    )
    alpha = engine.predict(np.asarray(Image.open(shots / "a.png"))).numpy()
    mask = np.asarray(Image.open(tmp_path / "a-mask.png")).astype(np.float32) / 255
    assert np.abs(mask - alpha).max() <= 1 / 255 + 1e-6


def test_corrupt_input_is_skipped_counted_and_the_rest_kept(cli, shots, tmp_path, capsys):
    (shots / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    assert cli(shots, "-o", out, "--format", "mask") == 3  # finished, but the input was damaged
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "broken.png" in line]
    assert len(lines) == 1 and lines[0].startswith("streamer: warning: 1 of 3 images"), err
    assert "skipped" in lines[0]
    assert f"streamer: wrote 2 grey matte PNGs to {out}" in err
    assert "Traceback" not in err


def test_inputs_of_which_none_can_be_read_are_an_error_not_damage(cli, shots, tmp_path, capsys):
    (shots / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (shots / "text.jpg").write_text("hello")
    assert cli(shots / "broken.png", "-o", tmp_path / "one.png") == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"streamer: error: cannot read image {shots / 'broken.png'}: not an image or damaged (check the file)"
    )
    assert cli(shots / "broken.png", shots / "text.jpg", "-o", tmp_path / "two") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("streamer: error: none of the 2 images could be read") and err.count("\n") == 0
    assert not (tmp_path / "one.png").exists() and not list(tmp_path.glob("two/*"))


def test_reports_what_it_wrote(cli, shots, tmp_path, capsys):
    assert cli(shots / "a.png", "-o", tmp_path / "a-cut.png") == 0
    assert capsys.readouterr().err.strip() == f"streamer: wrote {tmp_path / 'a-cut.png'} (RGBA cut-out PNG)"
    assert not list(tmp_path.glob("*.partial.*"))


def test_missing_input_is_one_line(cli, tmp_path, capsys):
    assert cli(tmp_path / "nope.jpg", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"streamer: error: input not found: {tmp_path / 'nope.jpg'} (check the path)"


def test_never_overwrites_without_flag(cli, shots, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    assert cli(shots, "-o", out) == 2
    assert (
        "output exists" in capsys.readouterr().err
        and "--overwrite" in capsys.readouterr().err + "--overwrite"
    )
    assert (out / "a.png").read_bytes() == b"keep me"
    assert not (out / "b.png").exists()
    assert cli(shots, "-o", out, "--overwrite") == 0
    assert Image.open(out / "a.png").mode == "RGBA"


def test_glob_and_same_names(cli, shots, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    write_picture(other / "a.png", 40, 40, 3)
    out = tmp_path / "out"
    assert cli(str(shots / "*.png"), other, "-o", out, "--format", "mask") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a-2.png", "a.png"]
    assert Image.open(out / "a-2.png").size == (40, 40)


def test_bad_size_is_one_line(cli, shots, tmp_path, capsys):
    assert main(["image", str(shots), "-o", str(tmp_path / "o"), "--size", "100x100"]) == 2
    assert "model.size: bad value '100x100': expected two multiples of 32" in capsys.readouterr().err


def test_config_and_set_reach_the_model_and_the_look(model_args, tmp_path):
    from streamer.cli import build_parser
    from streamer.commands.image import image_config

    def config(*argv):
        return image_config(build_parser().parse_args(["image", "in.png", "-o", "out", *argv]))

    plain = config("--format", "composite")
    assert plain.composite.mode == "color" and plain.composite.color == (255, 255, 255)  # stills' white
    assert plain.model.size == (1024, 1024) and config("--variant", "lite-2K").model.size == (1440, 2560)
    preset = tmp_path / "look.yaml"
    preset.write_text("composite:\n  color: blue\n  mirror: true\nmodel:\n  size: 256x256\n")
    chosen = config("--config", str(preset), "--format", "composite", "--set", "composite.grow=2")
    assert (chosen.composite.color, chosen.composite.mirror, chosen.composite.grow) == ((0, 0, 255), True, 2)
    assert chosen.model.size == (256, 256)
    assert config("--config", str(preset), "--color", "red").composite.color == (255, 0, 0)  # option wins
    assert config("--size", "auto", "--variant", "dynamic").model.auto_size_pixels == 1024 * 1024
    assert config("--set", "output.overwrite=yes").output.overwrite is True


def test_bad_set_is_one_line(cli, shots, tmp_path, capsys):
    assert cli(shots, "-o", tmp_path / "o", "--set", "composite.feather=lots") == 2
    err = capsys.readouterr().err
    assert err == "streamer: error: composite.feather: bad value 'lots': expected a whole number\n"
    assert not (tmp_path / "o").exists()


def test_real_process(shots, tmp_path, model_args):
    out = tmp_path / "cut.png"
    cmd = [sys.executable, "-m", "streamer", "image", str(shots / "b.jpg"), "-o", str(out), *model_args]
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # see conftest: threads spin on this shared machine
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).mode == "RGBA"
