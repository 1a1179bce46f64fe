from typing import Literal

import pytest

from streamer.config import (
    CONFIG_DIR,
    Colour,
    Maybe,
    Number,
    OutputParams,
    Params,
    Size,
    build_params,
    load_config,
    merge_params,
    parse_assignment,
    parse_colour,
    parse_size,
    update_params,
)
from streamer.errors import ConfigError


class DemoParams(Params):
    prefix = "demo"
    mode: Literal["color", "blur"] = "color"
    color: Colour = (0, 255, 0)
    size: Size = (1024, 1024)
    strength: Number(0, 1) = 0.5
    enabled: bool = True
    background: Maybe(str) = None


def test_loose_values_become_typed_params():
    p = build_params(
        DemoParams,
        {"color": "#ff00ff", "size": "512x288", "strength": "0.8", "enabled": "off", "background": "none"},
        "demo",
    )
    assert p == DemoParams(color=(255, 0, 255), size=(512, 288), strength=0.8, enabled=False)
    assert build_params(DemoParams, {"color": [1, 2, 3], "size": 256}, "demo").size == (256, 256)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"mod": "blur"},
            "demo.mod: unknown option (known: background, color, enabled, mode, size, strength)",
        ),
        ({"color": "purplish"}, "demo.color: bad value 'purplish': expected a colour like"),
        ({"size": "big"}, "demo.size: bad value 'big': expected a size like 512x512"),
        ({"enabled": "maybe"}, "demo.enabled: bad value 'maybe': expected true or false"),
        ({"mode": "sparkle"}, "demo.mode: bad value 'sparkle': expected 'color' or 'blur'"),
        ({"strength": "1.5"}, "demo.strength: bad value '1.5': expected at most 1"),
        ({"strength": "inf"}, "demo.strength: bad value 'inf': expected a finite number"),
        ({"strength": True}, "demo.strength: bad value True: expected a number, not true/false"),
        ({"background": ["a"]}, "demo.background: bad value ['a']: expected text"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        build_params(DemoParams, values, "demo")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_params_made_directly_are_checked_alike():
    with pytest.raises(ConfigError, match=r"^output.crf: bad value 99: expected at most 63$"):
        OutputParams(crf=99)
    with pytest.raises(ConfigError, match=r"^output.crf: bad value True: expected a number"):
        OutputParams(crf=True)


def test_parsers():
    assert parse_colour("green") == (0, 255, 0)
    assert parse_colour("10, 20, 30") == (10, 20, 30)
    assert parse_colour([1, 2, 3]) == (1, 2, 3)
    assert parse_size("512") == (512, 512)
    assert parse_size([256, 320]) == (256, 320)
    assert parse_assignment("composite.mode=blur") == ("composite", "mode", "blur")
    with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
        parse_assignment("mode=blur")


def test_update_params_validates_like_the_file():
    p = update_params(DemoParams(), "demo", "strength", "0.9")
    assert p.strength == 0.9 and p.mode == "color"
    with pytest.raises(ConfigError, match="demo.mode"):
        update_params(p, "demo", "mode", "sparkle")


def test_merge_keeps_what_was_chosen_apart_from_defaults():
    p = build_params(DemoParams, {"mode": "blur"}, "demo")
    merged = merge_params(p, "demo", {"strength": 0.25})
    assert merged.model_fields_set == {"mode", "strength"}
    assert (merged.mode, merged.strength, merged.size) == ("blur", 0.25, (1024, 1024))


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("output:\n  crf: 23\n  overwrite: true\n")
    config = load_config(str(path), {"output": {"crf": "20", "progress": None}})
    assert config.output == OutputParams(crf=20, overwrite=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("output: [1, 2\n", "is not valid YAML"),
        ("outptu:\n  crf: 1\n", "unknown section 'outptu'"),
        ("- a\n- b\n", "expected sections like"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to be a config"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


@pytest.mark.parametrize("data", ["# café\nmodel:\n  variant: lite\n".encode("latin-1"), b"\x00\x01binary"])
def test_a_config_file_that_is_not_utf8_text_says_so(tmp_path, data):
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    with pytest.raises(
        ConfigError, match=r"bad.yaml: is not text a config can hold \(.+\); save it as UTF-8"
    ):
        load_config(str(path))
    path.write_bytes("model:\n  variant: lite\n".encode("utf-16"))  # Windows' "Unicode" is read
    assert load_config(str(path)).model.variant == "lite"


def test_missing_preset_lists_the_presets():
    with pytest.raises(ConfigError, match=r"config not found: nope \(give a YAML path or a preset: "):
        load_config("nope")


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_is_valid(preset):
    config = load_config(preset)
    assert config.model.size[0] % 32 == 0


def test_presets_command_lists_every_preset_with_its_description(capsys):
    from streamer.cli import main

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert all(len(line.split(maxsplit=1)) == 2 and "\n" not in line for line in lines)


def test_serve_help_states_the_size_it_uses(tmp_path, capsys):
    from streamer.cli import build_parser
    from streamer.commands.serve import LIVE_SIZE, config_from_args

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default 512x512)" in help_text and "1024" not in help_text
    assert LIVE_SIZE == (512, 512)

    look_only = tmp_path / "look.yaml"
    look_only.write_text("composite:\n  mode: blur\n")

    def size(*argv):
        return config_from_args(build_parser().parse_args(["serve", *argv])).model.size

    assert size() == LIVE_SIZE
    assert size("--config", str(look_only)) == LIVE_SIZE  # a config that leaves the size alone
    assert size("--config", "live-cpu") == (256, 256)  # ... or sets it
    assert size("--set", "model.size=384") == (384, 384)
    # On a CPU (this machine) the pages get no foreground estimation unless it is asked for.
    serve = config_from_args(build_parser().parse_args(["serve", "--device", "cpu"]))
    assert serve.composite.refine_foreground is False
    asked = ["serve", "--set", "composite.refine_foreground=true"]
    assert config_from_args(build_parser().parse_args(asked)).composite.refine_foreground


@pytest.mark.parametrize("live", [True, False])
def test_live_jobs_default_to_the_live_size_a_realtime_preset_and_no_foreground_estimation_on_a_cpu(
    tmp_path, recipe_weights, live
):
    """Foreground estimation alone takes about a 30 fps frame's interval on a CPU: a live job that
    kept it dropped every fourth frame; so did a 720p recording at x264's medium preset. File
    jobs keep their own defaults; a choice always wins."""
    from streamer.cli import build_parser
    from streamer.commands.run import config_from_args
    from streamer.job import LIVE_PRESET, LIVE_SIZE, build_job
    from tests.media import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=2, audio=False)
    model = ["--variant", "lite", "--weights", str(recipe_weights("lite")), "--backend", "torch"]

    def job(*argv):
        args = build_parser().parse_args(
            ["run", "--source", str(clip), "--sink", str(tmp_path / "out.mp4"), *model, *argv]
        )
        built = build_job(args, config_from_args(args))
        for sink in built.sinks:
            sink.close()
        built.source.close()
        return built

    played = job("--live" if live else "--no-live")
    assert played.engine.params.size == (LIVE_SIZE if live else (1024, 1024))
    assert played.compositor.params.refine_foreground is not live
    assert played.sinks[0].params.preset == (LIVE_PRESET if live else "medium")
    chosen = job(
        "--live" if live else "--no-live",
        "--size",
        "256",
        "--set",
        "composite.refine_foreground=true",
        "--set",
        "output.preset=slow",
    )
    assert chosen.engine.params.size == (256, 256) and chosen.compositor.params.refine_foreground
    assert chosen.sinks[0].params.preset == "slow"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--source", "", "--sink", "o.mp4"],
        ["run", "--source", "a.mp4", "--sink", " "],
        ["run", "--source", "a.mp4", "--sink", "o.mp4", "--config", ""],
        ["run", "--source", "a.mp4", "--sink", "o.mp4", "--weights", ""],
        ["run", "--source", "a.mp4", "--sink", "o.mp4", "--mode", "image", "--background", ""],
        ["image", "", "-o", "out"],
        ["image", "a.png", "-o", ""],
        ["batch", "a.mp4", "", "-o", "out"],
        ["batch", "a.mp4", "-o", ""],
        ["batch", "a.mp4", "-o", "out", "--report", ""],
        ["eval", "--images", "", "--masks", "gt"],
        ["eval", "--predictions", "p", "--masks", ""],
        ["eval", "--predictions", "p", "--masks", "gt", "--sheet", ""],
        ["serve", "--source", ""],
        ["serve", "--backgrounds", ""],
    ],
)
def test_an_empty_name_is_refused_not_read_as_the_current_folder(argv, capsys):
    # `--source "$CAM"` with CAM unset: a path library reads "" as ".", and the job would then
    # matte (or write into) whatever folder the user stands in.
    from streamer.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "is empty (an unset shell variable?)" in capsys.readouterr().err


def test_the_current_folder_named_as_such_is_still_taken():
    from streamer.cli import build_parser

    args = build_parser().parse_args(["batch", ".", "-o", "."])
    assert args.inputs == ["."] and str(args.out_dir) == "."
