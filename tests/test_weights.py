"""Weights from local files and from an offline Hugging Face cache; one-line errors with the fix."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from streamer.errors import WeightsError
from streamer.model.weights import load_model, read_state_dict, resolve_weights

REPO = "ZhengPeng7/BiRefNet_lite"


def assert_same_weights(model, state):
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def put_in_cache(cache, repo_id, source):
    """The layout huggingface_hub itself writes: refs/main names a snapshot holding the file."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(source)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_local_safetensors(recipe_weights, recipe_state_dict):
    model = load_model("lite", recipe_weights("lite"))
    assert not model.training
    assert_same_weights(model, recipe_state_dict("lite"))


def test_official_pth_with_training_prefixes_and_half_floats(tmp_path, recipe_state_dict):
    state = recipe_state_dict("lite")
    wrapped = {f"module._orig_mod.{k}": v.half() if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "BiRefNet_lite-epoch_100.pth"
    torch.save(wrapped, path)
    read = read_state_dict(path)
    assert read.keys() == state.keys()
    assert all(v.dtype in (torch.float32, torch.int64) for v in read.values())
    model = load_model("lite", path)
    key = "decoder.conv_out1.0.weight"
    assert torch.equal(model.state_dict()[key], state[key].half().float())


def test_missing_file_is_one_line():
    with pytest.raises(WeightsError, match=r"not found: .*nowhere\.pth \(check the path") as err:
        load_model("lite", "weights/nowhere.pth")
    assert "\n" not in str(err.value)


def test_other_architecture_names_the_variant(recipe_weights):
    with pytest.raises(WeightsError) as err:
        load_model("portrait", recipe_weights("lite"))
    message = str(err.value)
    assert "\n" not in message
    assert "do not fit variant 'portrait'" in message
    assert "168 keys missing, 0 unexpected" in message
    assert message.endswith("look like lite: use --variant lite")


def test_not_birefnet_at_all(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(WeightsError, match="not a BiRefNet"):
        load_model("lite", path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match=r"cannot read weights file .*broken\.safetensors"):
        load_model("lite", path)


def test_default_repo_from_offline_cache(hub_cache, recipe_weights, recipe_state_dict):
    put_in_cache(hub_cache, REPO, recipe_weights("lite"))
    path = resolve_weights(None, "lite")
    assert path.name == "model.safetensors"
    assert str(path).startswith(str(hub_cache))
    assert_same_weights(load_model("lite"), recipe_state_dict("lite"))
    assert resolve_weights(REPO, "lite") == path


def test_offline_without_cache_names_repo_cache_and_fix(hub_cache):
    with pytest.raises(WeightsError) as err:
        load_model("portrait")
    message = str(err.value)
    assert "\n" not in message
    assert "ZhengPeng7/BiRefNet-portrait" in message
    assert str(hub_cache) in message
    assert "--weights PATH" in message


def test_hf_home_is_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match=str(tmp_path / "hf" / "hub")):
        resolve_weights("someone/some-model", "lite")
