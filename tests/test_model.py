"""The network against the official manifests and the golden fixtures (fp32 on CPU; fp32/fp16/bf16 on CUDA)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import DATA

from streamer.model import build_model
from streamer.model.decoder import stack_patches

LITE_FIXTURES = ["lite-256", "lite-192x320", "lite-160x288"]
ORDERS = {"legacy": "pred_legacy_patch_order", "einops": "pred"}


def read_manifest(variant: str) -> dict[str, tuple[tuple[int, ...], str]]:
    rows = {}
    for line in (DATA / f"manifest-{variant}.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        rows[key] = (tuple(int(s) for s in shape.split(",")) if shape else (), dtype)
    return rows


def load_fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"fixture-{name}.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize(
    ("variant", "manifest"), [("portrait", "portrait"), ("general", "portrait"), ("lite", "lite")]
)
def test_state_dict_matches_official_manifest(variant, manifest):
    with torch.device("meta"):
        state = build_model(variant).state_dict()
    expected = read_manifest(manifest)
    assert list(state) == list(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(state[key].shape) == shape, key
        assert str(state[key].dtype) == f"torch.{dtype}", key


def test_default_patch_orders():
    with torch.device("meta"):
        assert build_model("portrait").patch_order == "legacy"
        assert build_model("lite").patch_order == "legacy"
        assert build_model("general").patch_order == "einops"
        assert build_model("lite", patch_order="einops").patch_order == "einops"
    with pytest.raises(ValueError, match="patch order"):
        build_model("lite", patch_order="zigzag")
    with pytest.raises(ValueError, match="variant"):
        build_model("huge")


def test_stack_patches_orders():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    einops = stack_patches(x, (2, 3), "einops")
    legacy = stack_patches(x, (2, 3), "legacy")
    assert einops.shape == legacy.shape == (2, 18, 2, 2)
    for c in range(3):
        for a in range(2):
            for b in range(3):
                tile = x[:, c, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2]
                assert torch.equal(einops[:, c * 6 + a * 3 + b], tile)
                assert torch.equal(legacy[:, (b * 2 + a) * 3 + c], tile)


def test_rejects_sizes_not_multiple_of_32(recipe_model):
    with pytest.raises(ValueError, match="multiples of 32"):
        recipe_model("lite")(torch.zeros(1, 3, 64, 80))


def run_both_orders(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits of each patch order; the encoder does not depend on the order, so it runs once."""
    logits = {}
    try:
        with torch.inference_mode():
            feats = model.encode(x)
            for order in ORDERS:
                model.patch_order = order
                logits[order] = model.decoder(x, *feats)
    finally:
        model.patch_order = "legacy"
    return logits


@pytest.mark.parametrize("name", [*LITE_FIXTURES, "portrait-256"])
def test_matches_fixture_both_orders(recipe_model, name):
    fx = load_fixture(name)
    logits = run_both_orders(recipe_model(name.split("-")[0]), torch.from_numpy(fx["input"]))
    for order, key in ORDERS.items():
        assert logits[order].shape == fx["logits"].shape
        pred = torch.sigmoid(logits[order]).numpy()
        assert np.abs(pred - fx[key]).max() <= 1e-4, order
    assert np.abs(logits["einops"].numpy() - fx["logits"]).max() <= 5e-4
    # The fixtures tell the orders apart (they differ by ~0.1), so a swapped order cannot pass.
    assert np.abs(fx["pred"] - fx["pred_legacy_patch_order"]).max() > 1e-2


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 1e-3), (torch.float16, 1e-2), (torch.bfloat16, 1e-2)]
)
@pytest.mark.parametrize("name", [*LITE_FIXTURES, "portrait-256"])
def test_matches_fixture_both_orders_on_cuda(recipe_model, name, dtype, tolerance):
    fx = load_fixture(name)
    model = copy.deepcopy(recipe_model(name.split("-")[0])).to("cuda", dtype)
    logits = run_both_orders(model, torch.from_numpy(fx["input"]).to("cuda", dtype))
    for order, key in ORDERS.items():
        assert logits[order].dtype == dtype
        pred = torch.sigmoid(logits[order].float()).cpu().numpy()
        assert np.abs(pred - fx[key]).max() <= tolerance, order


@pytest.mark.parametrize("name", ["lite-160x288"])
def test_matches_fixture_both_orders_in_bfloat16_on_cpu(recipe_model, name):
    # bfloat16 on the CPU runs the gathered deformable convolution in bfloat16 too.
    fx = load_fixture(name)
    model = copy.deepcopy(recipe_model(name.split("-")[0])).to(torch.bfloat16)
    logits = run_both_orders(model, torch.from_numpy(fx["input"]).to(torch.bfloat16))
    for order, key in ORDERS.items():
        assert logits[order].dtype == torch.bfloat16
        pred = torch.sigmoid(logits[order].float()).numpy()
        assert np.abs(pred - fx[key]).max() <= 1e-2, order


def test_forward_runs_the_default_order(recipe_model):
    fx = load_fixture("lite-160x288")
    with torch.inference_mode():
        pred = torch.sigmoid(recipe_model("lite")(torch.from_numpy(fx["input"]))).numpy()
    assert np.abs(pred - fx["pred_legacy_patch_order"]).max() <= 1e-4


def capture_activations(model) -> tuple[dict[str, torch.Tensor], list]:
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name):
        return lambda _m, _i, out: acts.__setitem__(name, out)

    def backbone(_m, _i, out):
        prefix = "bb_half" if "bb_full.x1" in acts else "bb_full"
        acts.update({f"{prefix}.x{k + 1}": o for k, o in enumerate(out)})

    handles.append(model.bb.register_forward_hook(backbone))
    handles.append(model.squeeze_module.register_forward_hook(keep("squeeze.out")))
    for name in ["ipt_blk5", "decoder_block4", "gdt_convs_attn_4", "lateral_block3", "decoder_block1"]:
        handles.append(getattr(model.decoder, name).register_forward_hook(keep(f"dec.{name}")))
    return acts, handles


@pytest.mark.parametrize("name", ["lite-160x288"])
def test_intermediate_activations(recipe_model, name):
    fx = load_fixture(name)
    model = recipe_model(name.split("-")[0])
    acts, handles = capture_activations(model)
    model.patch_order = "einops"  # the activations were recorded from the current official code
    try:
        with torch.inference_mode():
            model(torch.from_numpy(fx["input"]))
    finally:
        model.patch_order = "legacy"
        for h in handles:
            h.remove()
    assert len(acts) == 14  # 8 backbone maps, squeeze, 5 decoder modules
    for key, value in acts.items():
        assert list(value.shape) == fx[f"act.{key}.shape"].tolist(), key
        assert abs(value.mean().item() - fx[f"act.{key}.mean"]) <= 1e-4, key
        assert abs(value.std().item() - fx[f"act.{key}.std"]) <= 1e-4, key
        sample = value[0, :4, :4, :4].numpy()
        assert np.abs(sample - fx[f"act.{key}.sample"]).max() <= 1e-4, key
