"""The OpenVINO CPU backend: fixture parity (exact and default precision), the on-disk cache, and
that `run`, `serve` and `image` all get it from `auto`.

Conversions take seconds each, so the module shares one cache folder and converts the lite
network at two sizes only: 256x256 for the fixture, 64x64 for a size change at run time.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import DATA

from streamer.backends import ENV_BACKEND, choose_backend, openvino_available
from streamer.engine import EngineParams, MattingEngine
from streamer.errors import ConfigError

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")

SIZE = (256, 256)
PREPARING = "preparing the lite network for this CPU"


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    return tmp_path_factory.mktemp("cache-home")


@pytest.fixture(autouse=True)
def openvino_by_default(monkeypatch, cache_home):
    """`auto` as a user gets it, with the converted models in this module's own cache folder."""
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))


@pytest.fixture(scope="module")
def fixture_data():
    with np.load(DATA / "fixture-lite-256.npz") as f:
        return {"image": f["image_u8"][0].transpose(1, 2, 0), "pred": f["pred_legacy_patch_order"][0, 0]}


def make_engine(recipe_weights, **overrides) -> MattingEngine:
    values = {"variant": "lite", "weights": str(recipe_weights("lite")), "size": SIZE, "device": "cpu"}
    return MattingEngine.from_params(EngineParams(**(values | overrides)))


def preparing_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "preparing" in line]


@pytest.fixture(scope="module")
def exact_engine(recipe_weights, cache_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_BACKEND, raising=False)
        mp.setenv("XDG_CACHE_HOME", str(cache_home))
        return make_engine(recipe_weights, dtype="float32")


def test_auto_chooses_openvino_on_the_cpu_and_torch_elsewhere(monkeypatch):
    assert choose_backend("auto", "cpu", "auto", False) == "openvino"
    assert choose_backend("auto", "cuda", "auto", False) == "torch"
    assert choose_backend("auto", "cpu", "float16", False) == "torch"
    assert choose_backend("auto", "cpu", "auto", True) == "torch"
    assert choose_backend("torch", "cpu", "auto", False) == "torch"
    monkeypatch.setenv(ENV_BACKEND, "torch")
    assert choose_backend("auto", "cpu", "auto", False) == "torch"
    assert choose_backend("openvino", "cpu", "auto", False) == "openvino"
    monkeypatch.setenv(ENV_BACKEND, "tensorrt")
    with pytest.raises(ConfigError, match="STREAMER_BACKEND"):
        choose_backend("auto", "cpu", "auto", False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cuda"}, "runs on the CPU"),
        ({"dtype": "float16"}, "float16 is not run by the openvino backend"),
        ({"compile": True}, "torch.compile"),
    ],
)
def test_openvino_refuses_what_it_cannot_run_in_one_line(kwargs, message):
    args = {"device": "cpu", "dtype": "auto", "compile": False} | kwargs
    with pytest.raises(ConfigError, match=message):
        choose_backend("openvino", args["device"], args["dtype"], args["compile"])
    with pytest.raises(ConfigError, match="model.backend"):
        EngineParams(backend="onnx")


def test_exact_path_matches_the_fixture_and_says_once_it_prepares(exact_engine, fixture_data, capfd):
    assert exact_engine.backend == "openvino" and exact_engine.precision == "float32"
    alpha = exact_engine.predict(fixture_data["image"])
    assert alpha.shape == SIZE and alpha.dtype == torch.float32
    assert np.abs(alpha.numpy() - fixture_data["pred"]).max() <= 1e-4
    # The first call converted, saying so in one line; the next ones say nothing.
    assert exact_engine.model.conversions == 1
    lines = preparing_lines(capfd.readouterr().err)
    assert len(lines) == 1 and PREPARING in lines[0] and "256x256" in lines[0]
    exact_engine.predict(fixture_data["image"])
    assert preparing_lines(capfd.readouterr().err) == []


def test_default_precision_hits_the_cache_and_stays_within_1e_2(
    recipe_weights, exact_engine, fixture_data, capfd
):
    from streamer.backends.openvino import default_precision

    exact_engine.predict(fixture_data["image"])  # the entry exists before this test
    capfd.readouterr()
    engine = make_engine(recipe_weights)
    assert engine.precision == default_precision()
    alpha = engine.predict(fixture_data["image"])
    assert np.abs(alpha.numpy() - fixture_data["pred"]).max() <= 1e-2
    assert engine.model.conversions == 0
    assert preparing_lines(capfd.readouterr().err) == []


def test_a_new_batch_size_reuses_the_converted_model(exact_engine, fixture_data):
    image = fixture_data["image"]
    batch = exact_engine.predict(np.stack([image, image[::-1].copy()]))
    assert exact_engine.model.conversions == 1
    torch.testing.assert_close(batch[0], exact_engine.predict(image), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch[1], exact_engine.predict(image[::-1].copy()), atol=1e-5, rtol=0)


def test_a_damaged_entry_is_rebuilt_with_one_line_and_stale_ones_go(
    recipe_model, exact_engine, fixture_data, tmp_path
):
    from streamer.backends.openvino import OpenVINOForward

    exact_engine.predict(fixture_data["image"])
    source = exact_engine.model.entry_dir(SIZE)
    lines: list[str] = []
    forward = OpenVINOForward(
        recipe_model("lite"), "lite", "float32", cache_dir=tmp_path, notify=lines.append
    )
    entry = forward.entry_dir(SIZE)
    shutil.copytree(source, entry)
    with open(entry / "model.bin", "r+b") as f:
        f.truncate(1000)
    stale = tmp_path / "lite-legacy-256x256-0123456789abcdef"  # written by another OpenVINO version
    stale.mkdir()
    (stale / "entry.json").write_text('{"openvino": "2023.0.0", "format": 2}')
    # The conversion itself is the other tests' subject: here the intact model stands in for it.
    forward._convert = lambda size: forward._core.read_model(str(source / "model.xml"))
    forward.prepare(1, SIZE)
    assert forward.conversions == 1
    assert not stale.exists()
    assert len(lines) == 1 and "damaged" in lines[0] and "256x256" in lines[0]
    again = OpenVINOForward(recipe_model("lite"), "lite", "float32", cache_dir=tmp_path, notify=lines.append)
    again.prepare(1, SIZE)
    assert again.conversions == 0 and len(lines) == 1
    assert not list(tmp_path.glob(".partial-*"))


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_job(
    recipe_model, exact_engine, fixture_data, tmp_path, caplog
):
    from streamer.backends.openvino import OpenVINOForward

    exact_engine.predict(fixture_data["image"])
    source = exact_engine.model.entry_dir(SIZE)
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would go (a full disk or read-only home alike)")
    forward = OpenVINOForward(recipe_model("lite"), "lite", "float32", cache_dir=blocked, notify=print)
    forward._convert = lambda size: forward._core.read_model(str(source / "model.xml"))
    x = torch.rand(1, 3, *SIZE)
    out = forward(x)
    assert out.shape == (1, 1, *SIZE) and forward.conversions == 1
    torch.testing.assert_close(out, exact_engine.model(x), atol=1e-5, rtol=0)
    assert "cannot keep the converted network" in caplog.text


def test_the_cache_key_follows_the_weights_and_patch_order(recipe_model, tmp_path):
    import copy

    from streamer.backends.openvino import OpenVINOForward

    model = recipe_model("lite")
    base = OpenVINOForward(model, "lite", cache_dir=tmp_path).entry_dir(SIZE)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.decoder.conv_out1[0].bias.add_(1)
    assert OpenVINOForward(other, "lite", cache_dir=tmp_path).entry_dir(SIZE) != base
    other = copy.deepcopy(model)
    other.patch_order = "einops"
    assert OpenVINOForward(other, "lite", cache_dir=tmp_path).entry_dir(SIZE) != base
    assert OpenVINOForward(model, "lite", cache_dir=tmp_path).entry_dir((256, 288)) != base
    assert str(base).startswith(str(tmp_path))


def test_the_default_cache_is_in_the_users_cache_folder(recipe_model, cache_home):
    from streamer.backends.openvino import OpenVINOForward

    assert OpenVINOForward(recipe_model("lite"), "lite").cache_dir == cache_home / "streamer" / "openvino"


# -- every command that runs the network on the CPU gets the backend ----------------------------


def test_run_gets_openvino(recipe_weights, exact_engine):
    from streamer.config import load_config
    from streamer.job import build_processing

    model = {"variant": "lite", "weights": str(recipe_weights("lite")), "size": "256x256", "device": "cpu"}
    engine, _, _ = build_processing(load_config(None, {"model": model}))
    assert engine.backend == "openvino"


def test_image_gets_openvino(recipe_weights, exact_engine):
    from streamer.cli import build_parser
    from streamer.commands.image import build

    args = build_parser().parse_args(
        ["image", "in.png", "-o", "out", "--variant", "lite", "--weights", str(recipe_weights("lite"))]
        + ["--size", "256x256", "--device", "cpu", "--threads", "2"]
    )
    engine, _ = build(args)
    assert engine.backend == "openvino"
    args = build_parser().parse_args(
        ["image", "in.png", "-o", "out", "--backend", "torch", "--variant", "lite"]
    )
    assert args.backend == "torch"


@pytest.mark.timeout(900)  # a conversion in the worker's low-priority thread, on a loaded machine
async def test_serve_worker_gets_openvino_and_converts_a_new_size_once(recipe_weights, exact_engine, capfd):
    from streamer.config import load_config
    from streamer.frame import Frame
    from streamer.live.serve import build_server

    model = {"variant": "lite", "weights": str(recipe_weights("lite")), "size": "256x256", "device": "cpu"}
    server = build_server(load_config(None, {"model": model}))
    worker = server.worker
    assert worker.engine.backend == "openvino"
    capfd.readouterr()
    worker.start()
    peers = [worker.open_slot(), worker.open_slot()]

    async def round_trip(size):
        for n, slot in enumerate(peers):
            image = torch.full((48, 80, 3), 40 * n, dtype=torch.uint8)
            slot.put(Frame(image, n, Fraction(1, 30), n, time.monotonic()))
        return [await asyncio.wait_for(slot.get(), 600) for slot in peers]

    try:
        for result in await round_trip(SIZE):
            assert result.alpha.shape == (48, 80)
        worker.set_size((64, 64))
        for result in await round_trip((64, 64)):
            assert result.alpha.shape == (48, 80)
        worker.set_size((64, 64))
        await round_trip((64, 64))
    finally:
        await worker.aclose()
    assert worker.engine.size == (64, 64)
    lines = preparing_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "64x64" in lines[0]


@pytest.mark.parametrize(("bf16", "says"), [(True, "runs bfloat16 by default"), (False, "no bfloat16")])
def test_doctor_says_which_precision_the_cpu_path_runs(bf16, says, cache_home):
    from streamer.doctor import OK, check_cpu_backend

    check = check_cpu_backend(bf16=bf16)
    assert check.status == OK and says in check.line()
    assert str(cache_home / "streamer" / "openvino") in check.line()
