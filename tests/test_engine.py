"""MattingEngine: input forms, resizing, fixture parity through the engine, params validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATA

from streamer.engine import EngineParams, MattingEngine
from streamer.errors import ConfigError, DeviceError
from streamer.model.graphed import GraphedForward

FIXTURE = "lite-160x288"


@pytest.fixture(scope="module")
def fixture_data():
    with np.load(DATA / f"fixture-{FIXTURE}.npz") as f:
        return {k: f[k] for k in ("image_u8", "pred_legacy_patch_order")}


def make_engine(recipe_weights, **overrides) -> MattingEngine:
    values = {"variant": "lite", "weights": str(recipe_weights("lite")), "size": (64, 64), "device": "cpu"}
    return MattingEngine.from_params(EngineParams(**(values | overrides)))


@pytest.fixture(scope="module")
def engine(recipe_weights):
    return make_engine(recipe_weights)


def frame(h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_defaults():
    params = EngineParams()
    assert (params.variant, params.size, params.device, params.dtype) == (
        "portrait",
        (1024, 1024),
        "auto",
        "auto",
    )
    assert params.patch_order is None and params.batch_size == 1 and not params.compile


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "size",
            (500, 512),
            r"model\.size: bad value \(500, 512\): expected two multiples of 32 \(e\.g\. 1024x1024",
        ),
        ("size", (0, 512), r"model\.size: bad value \(0, 512\): expected a size like 512x512"),
        ("variant", "huge", r"model\.variant: bad value 'huge': expected 'portrait', 'lite', 'general'"),
        (
            "dtype",
            "int8",
            r"model\.dtype: bad value 'int8': expected 'auto', 'float32', 'float16' or 'bfloat16'",
        ),
        ("device", "gpu", r"model\.device: bad value 'gpu': expected auto, cpu, cuda, cuda:N or mps"),
        ("patch_order", "zigzag", r"model\.patch_order: bad value 'zigzag': expected 'legacy' or 'einops'"),
        ("batch_size", 0, r"model\.batch_size: bad value 0: expected at least 1"),
        ("threads", -1, r"model\.threads: bad value -1: expected at least 0"),
    ],
)
def test_params_validation(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        EngineParams(**{field: value})
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without a GPU")
def test_cuda_requested_without_gpu(recipe_weights):
    with pytest.raises(DeviceError, match=r"no CUDA GPU .*\(use --device cpu\)"):
        make_engine(recipe_weights, device="cuda")


def test_engine_on_cpu_is_float32(engine):
    assert engine.device == torch.device("cpu")
    assert engine.dtype == torch.float32


def test_matches_fixture_through_engine(recipe_weights, fixture_data):
    """At the network's own size the engine's uint8 -> normalise -> sigmoid path is the official one
    (in the default, legacy, patch order; test_model covers the other)."""
    engine = make_engine(recipe_weights, size=(160, 288))
    alpha = engine.predict(fixture_data["image_u8"][0].transpose(1, 2, 0))
    assert alpha.shape == (160, 288) and alpha.dtype == torch.float32
    assert np.abs(alpha.numpy() - fixture_data["pred_legacy_patch_order"][0, 0]).max() <= 1e-4


def test_input_forms_agree(engine):
    a, b = frame(96, 128, 1), frame(96, 128, 2)
    single = engine.predict(a)
    assert single.shape == (96, 128) and single.device == engine.device
    assert single.min().item() >= 0.0 and single.max().item() <= 1.0
    assert torch.equal(engine.predict(torch.from_numpy(a)), single)
    batch = engine.predict(np.stack([a, b]))
    assert batch.shape == (2, 96, 128)
    torch.testing.assert_close(batch[0], single, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch[1], engine.predict(b), atol=1e-5, rtol=0)


def test_list_of_different_sizes(engine):
    frames = [frame(48, 80, 3), frame(130, 70, 4), frame(64, 64, 5)]
    alphas = engine.predict(frames)
    assert [tuple(a.shape) for a in alphas] == [(48, 80), (130, 70), (64, 64)]
    for f, a in zip(frames, alphas, strict=True):
        torch.testing.assert_close(a, engine.predict(f), atol=1e-5, rtol=0)
    assert engine.predict([]) == []


def test_output_is_an_ordinary_tensor(engine):
    alpha = engine.predict(frame(64, 64))
    assert not alpha.is_inference()
    alpha.mul_(0.5)  # downstream stages may smooth in place


def test_downscale_is_antialiased(engine):
    """A 1-pixel checkerboard shrunk 4x must become flat grey, not an aliased pattern."""
    board = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    resized = engine.resize(torch.from_numpy(np.repeat(board[..., None], 3, axis=2))[None])
    assert resized.shape == (1, 3, 64, 64)
    assert (resized - 127.5).abs().max().item() < 1.0


def test_rejects_wrong_input(engine):
    with pytest.raises(ValueError, match="uint8 RGB"):
        engine.predict(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        engine.predict(np.zeros((32, 32, 4), dtype=np.uint8))


@pytest.mark.cuda
@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-3), ("float16", 1e-2), ("bfloat16", 1e-2)])
def test_cuda_matches_fixture(recipe_weights, fixture_data, dtype, tolerance):
    engine = make_engine(recipe_weights, size=(160, 288), device="cuda", dtype=dtype)
    assert engine.device.type == "cuda"
    alpha = engine.predict(fixture_data["image_u8"][0].transpose(1, 2, 0))
    assert alpha.device.type == "cuda" and alpha.dtype == torch.float32
    assert np.abs(alpha.cpu().numpy() - fixture_data["pred_legacy_patch_order"][0, 0]).max() <= tolerance


@pytest.mark.cuda
def test_cuda_graph_matches_the_fixture_and_eager_for_each_input(recipe_weights, fixture_data):
    graphed = make_engine(recipe_weights, size=(160, 288), device="cuda", dtype="float32", cuda_graph=True)
    eager = make_engine(recipe_weights, size=(160, 288), device="cuda", dtype="float32")
    assert isinstance(graphed.model, GraphedForward) and not isinstance(eager.model, GraphedForward)
    alpha = graphed.predict(fixture_data["image_u8"][0].transpose(1, 2, 0))
    assert np.abs(alpha.cpu().numpy() - fixture_data["pred_legacy_patch_order"][0, 0]).max() <= 1e-3
    frames = [frame(120, 200, seed) for seed in (1, 2)]
    for image in [*frames, np.stack(frames)]:  # the batch of two is a second shape
        assert (graphed.predict(image) - eager.predict(image)).abs().max() <= 1e-4
    assert graphed.model.captures == 2 and not graphed.model.failed


def test_cpu_runs_the_network_eagerly_even_when_cuda_graphs_are_asked_for(recipe_weights):
    engine = make_engine(recipe_weights, cuda_graph=True)
    assert not isinstance(engine.model, GraphedForward)


@pytest.mark.cuda
def test_cuda_auto_defaults_to_float16(recipe_weights):
    engine = make_engine(recipe_weights, device="auto")
    assert engine.device.type == "cuda" and engine.dtype == torch.float16
    assert engine.predict([frame(48, 80), frame(90, 60)])[1].shape == (90, 60)
