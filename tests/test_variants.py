"""Every official BiRefNet release by name: repo id, architecture, size and patch order in one table."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from streamer.errors import WeightsError
from streamer.model import MULTIPLE, VARIANTS
from streamer.model.weights import check_architecture, load_model

# From the issue: every release the official project publishes on Hugging Face.
RELEASES = {
    "portrait": "ZhengPeng7/BiRefNet-portrait",
    "lite": "ZhengPeng7/BiRefNet_lite",
    "general": "ZhengPeng7/BiRefNet",
    "matting": "ZhengPeng7/BiRefNet-matting",
    "dynamic": "ZhengPeng7/BiRefNet_dynamic",
    "dynamic-matting": "ZhengPeng7/BiRefNet_dynamic-matting",
    "HR": "ZhengPeng7/BiRefNet_HR",
    "HR-matting": "ZhengPeng7/BiRefNet_HR-matting",
    "lite-2K": "ZhengPeng7/BiRefNet_lite-2K",
    "512x512": "ZhengPeng7/BiRefNet_512x512",
}
SWIN_T_RELEASES = {"lite", "lite-2K"}


def test_table_names_every_release():
    assert {name: v.repo_id for name, v in VARIANTS.items()} == RELEASES
    for name, v in VARIANTS.items():
        assert v.name == name
        assert v.architecture == ("Swin-T" if name in SWIN_T_RELEASES else "Swin-L")
        assert all(s % MULTIPLE == 0 for s in v.size)
        assert v.patch_order in ("legacy", "einops")
    assert VARIANTS["HR"].size == VARIANTS["HR-matting"].size == (2048, 2048)
    assert VARIANTS["lite-2K"].size == (1440, 2560)  # 2560x1440 width x height
    assert VARIANTS["512x512"].size == (512, 512)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_recipe_weights_of_the_architecture_fit_the_name(name, recipe_state_dict):
    recipe = recipe_state_dict("lite" if name in SWIN_T_RELEASES else "portrait")
    check_architecture(recipe, name, "recipe")  # raises if they disagree


@pytest.mark.parametrize("name", ["HR", "dynamic", "512x512"])
def test_other_architecture_is_one_line_naming_what_it_looks_like(name, recipe_weights):
    with pytest.raises(WeightsError) as info:
        load_model(name, recipe_weights("lite"))
    message = str(info.value)
    assert "\n" not in message and f"do not fit variant {name!r}" in message
    assert "look like lite" in message


def test_half_precision_file_loads_into_the_chosen_dtype(recipe_state_dict, tmp_path):
    from streamer.commands.image import build_engine

    half = {k: v.half() if v.is_floating_point() else v for k, v in recipe_state_dict("lite").items()}
    path = tmp_path / "lite-2K-fp16.safetensors"
    save_file(half, str(path))
    args = argparse.Namespace(
        variant="lite-2K",
        weights=str(path),
        size=None,
        device="cpu",
        dtype="bfloat16",
        backend="torch",
        threads=None,
    )
    engine = build_engine(args)
    assert engine.size == (1440, 2560)  # the release's own size when --size is not given
    assert engine.model.patch_order == "legacy"
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    key = "decoder.conv_out1.0.weight"
    assert torch.equal(engine.model.state_dict()[key], half[key].to(torch.bfloat16))


def test_auto_size_keeps_a_portrait_frame_upright():
    from streamer.engine import auto_input_size

    # A phone video held upright (1080 wide, 1920 tall) within the dynamic release's 1024x1024 budget.
    h, w = auto_input_size(1920, 1080, 1024 * 1024)
    assert (h, w) == (1344, 768) and h * w <= 1024 * 1024
    assert abs(h / w - 1920 / 1080) < 0.05
    assert auto_input_size(1080, 1920, 1024 * 1024) == (768, 1344)
    assert auto_input_size(10, 5000, 64 * 64) == (32, 128)  # never below one 32-pixel tile


def test_auto_size_runs_the_network_at_the_frame_aspect(recipe_weights):
    from streamer.engine import EngineParams, MattingEngine

    weights = str(recipe_weights("lite"))
    auto = MattingEngine.from_params(
        EngineParams(variant="lite", weights=weights, device="cpu", auto_size_pixels=96 * 96)
    )
    frame = torch.randint(0, 256, (150, 90, 3), dtype=torch.uint8)  # portrait orientation
    seen = []
    infer = auto.infer
    auto.infer = lambda x: seen.append(tuple(x.shape[-2:])) or infer(x)
    alpha = auto.predict(frame)
    assert seen == [(96, 64)] and alpha.shape == (150, 90)
    fixed = MattingEngine.from_params(
        EngineParams(variant="lite", weights=weights, device="cpu", size=(96, 64))
    )
    assert torch.allclose(alpha, fixed.predict(frame), atol=1e-6)
    # Frames of other shapes in one call each keep their own aspect ratio.
    wide = torch.randint(0, 256, (60, 120, 3), dtype=torch.uint8)
    seen.clear()
    out = auto.predict([frame, wide])
    assert seen == [(96, 64), (64, 128)] and [a.shape for a in out] == [(150, 90), (60, 120)]


def test_size_auto_option_uses_the_variant_budget(recipe_weights):
    from streamer.commands.image import build_engine

    args = argparse.Namespace(
        variant="lite",
        weights=str(recipe_weights("lite")),
        size="auto",
        device="cpu",
        dtype="auto",
        backend="torch",
        threads=None,
    )
    assert build_engine(args).params.auto_size_pixels == 1024 * 1024
