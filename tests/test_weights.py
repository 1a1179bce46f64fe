"""Weights from local files and from an offline Hugging Face cache; one-line errors with the fix."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from streamer.errors import WeightsError
from streamer.model.weights import load_model, read_state_dict, resolve_weights
from tests.media import make_clip, one_line_error

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


def closed_port() -> int:
    """A local port with nothing listening (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def online(tmp_path, monkeypatch):
    """An empty cache, network allowed; returns a setter for the Hub's endpoint (HF_ENDPOINT)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub read HF_HUB_OFFLINE when first imported (an earlier test may have set it).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return lambda url: monkeypatch.setenv("HF_ENDPOINT", url)


def test_unreachable_hub_is_one_line_naming_the_fixes(online, capsys):
    online(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(WeightsError) as err:
        resolve_weights(None, "lite")
    message = one_line_error(err)
    assert "cannot reach http://127.0.0.1:" in message and REPO in message
    assert "--weights PATH" in message and "HF_HUB_OFFLINE" in message
    assert "fetching" not in capsys.readouterr().err  # nothing claims a download that never starts


def test_a_hub_that_does_not_answer_is_given_up_on(monkeypatch):
    from streamer.model import weights

    never = threading.Event()

    def hang(*args, **kwargs):
        never.wait()
        raise ConnectionRefusedError  # released when the test is over

    monkeypatch.setattr(weights.socket, "create_connection", hang)
    try:
        assert (
            weights.unreachable("https://hub.example", timeout=0.2)
            == "hub.example:443: no answer within 0.2 s"
        )
    finally:
        never.set()


def test_cli_without_network_fails_in_one_line(tmp_path):
    """The README's first command with no network: one line naming the fixes, not a long silence."""
    clip = make_clip(tmp_path / "clip.mp4", frames=2, audio=False)
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    args = ["run", "--source", clip, "--sink", tmp_path / "out.mp4", "--variant", "lite", "--device", "cpu"]
    # The timeout only guards against a hang; the connectivity check itself gives up after 3 s.
    result = subprocess.run(
        [sys.executable, "-m", "streamer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("streamer: error: cannot reach http://127.0.0.1:"), line
    assert "--weights" in line and "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob("out.*"))


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The two requests hf_hub_download makes: HEAD for the metadata, then GET for the bytes."""

    body = b"\0" * 300_000
    commit = "0123456789abcdef0123456789abcdef01234567"

    def do_HEAD(self):
        self._headers()

    def do_GET(self):
        self._headers()
        self.wfile.write(self.body)

    def _headers(self):
        # (huggingface_hub also asks for /api/agent-harnesses, best-effort telemetry: a 404 is fine)
        if self.path != f"/{REPO}/resolve/main/model.safetensors":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", '"fake-etag"')
        self.send_header("X-Repo-Commit", self.commit)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_download_says_what_it_fetches_from_where_with_a_progress_bar(online, tmp_path, capsys, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        online(endpoint)
        monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub's switch to show its bar off a terminal
        path = resolve_weights(None, "lite")
    finally:
        server.shutdown()
        server.server_close()
    assert path.read_bytes() == FakeHub.body and str(path).startswith(str(tmp_path / "hub"))
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first == (
        f"streamer: fetching the weights of {REPO} (model.safetensors) from {endpoint} into {tmp_path / 'hub'} "
        "(once; later runs use the cache)"
    )
    assert "100%" in err  # the download's progress bar
