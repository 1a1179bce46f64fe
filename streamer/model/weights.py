"""Finding and loading BiRefNet weights: a local .safetensors / .pth file or a Hugging Face repo.

Every failure a user can fix becomes a one-line `WeightsError` naming the fix.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from streamer.errors import WeightsError
from streamer.model.birefnet import VARIANTS, BiRefNet, build_model

FILENAME = "model.safetensors"
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Wrappers that DDP and torch.compile put in front of every key of a training checkpoint.
PREFIXES = ("module.", "_orig_mod.")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE = {"1", "true", "yes", "on"}
CONNECT_TIMEOUT_S = 3.0
"""How long the Hub may take to accept a connection before we call it unreachable."""


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def hub_endpoint() -> str:
    """The Hub's address (HF_ENDPOINT, read now like the cache; passed on to huggingface_hub)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or constants.ENDPOINT


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def fetch_from_hub(repo_id: str) -> Path:
    """`model.safetensors` of `repo_id`: from the cache when present, else downloaded into it."""
    from huggingface_hub import hf_hub_download

    cache = hub_cache_dir()
    try:
        return Path(hf_hub_download(repo_id, FILENAME, cache_dir=cache, local_files_only=True))
    except Exception as err:  # any miss in the cache: fall through to the network
        cached_error = err
    if hub_offline():
        raise WeightsError(
            f"weights of {repo_id} are not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set "
            f"(download them once online, or pass --weights PATH to a local .safetensors/.pth file)"
        ) from cached_error
    endpoint = hub_endpoint()
    fix = (
        f"it is not in the Hugging Face cache {cache}: connect once, or pass --weights PATH to a local "
        ".safetensors/.pth file (and set HF_HUB_OFFLINE=1 to never try the network)"
    )
    # One quick look before huggingface_hub's retries, which take ~30 s to give up when offline.
    problem = unreachable(endpoint)
    if problem:
        raise WeightsError(f"cannot reach {endpoint} to download the weights of {repo_id} ({problem}); {fix}")
    print(
        f"streamer: fetching the weights of {repo_id} ({FILENAME}) from {endpoint} into {cache} "
        "(once; later runs use the cache)",
        file=sys.stderr,
        flush=True,
    )
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    # Its per-retry warnings would print twice (its handler and ours); our one line says it all.
    # Its progress bar still shows in a terminal (it follows the logger's level, not NOTSET).
    hub_log.setLevel(logging.ERROR)
    try:
        return Path(
            hf_hub_download(
                repo_id, FILENAME, cache_dir=cache, endpoint=endpoint, etag_timeout=CONNECT_TIMEOUT_S
            )
        )
    except Exception as err:
        raise WeightsError(
            f"cannot download {FILENAME} of {repo_id} from {endpoint} ({type(err).__name__}); {fix}"
        ) from err
    finally:
        hub_log.setLevel(level)


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why `url`'s server (or the proxy for it) cannot be reached within `timeout` s; None when it can.

    Name lookup and connect run in a daemon thread, so a resolver that hangs cannot hold the
    user longer than `timeout` either.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or "", proxied.port or 80
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(f"{host}:{port}: {err.strerror or err}")

    thread = threading.Thread(target=attempt, name="streamer-hub-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:g} s"


def resolve_weights(weights: str | os.PathLike | None, variant: str) -> Path:
    """Local path of the weights: a file, a Hugging Face repo id, or None for the variant's repo."""
    if weights is None or str(weights) == "":
        return fetch_from_hub(VARIANTS[variant].repo_id)
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / FILENAME).is_file():
            return path / FILENAME
        raise WeightsError(f"weights folder {path} has no {FILENAME} (pass --weights the file itself)")
    text = str(weights)
    if _REPO_ID.match(text) and not text.endswith(FILE_SUFFIXES):
        return fetch_from_hub(text)
    raise WeightsError(f"weights file not found: {path} (check the path, or pass a Hugging Face repo id)")


def _read(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Some training scripts wrap the weights; the official checkpoints are the bare state_dict.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file with training prefixes stripped and half floats made float32."""
    path = Path(path)
    try:
        raw = _read(path)
    except Exception as err:
        raise WeightsError(
            f"cannot read weights file {path}: {type(err).__name__} "
            f"(is it a complete .safetensors or .pth checkpoint? re-download it)"
        ) from err
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"weights file {path} holds no state_dict (pass a BiRefNet .safetensors or .pth)")
    state = {}
    for key, value in raw.items():
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()
        state[key] = value
    return state


def expected_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_model(variant).state_dict().items()}


def mismatch(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, int]:
    """(missing, unexpected, wrong-shape) key counts of `state` against a model's `shapes`."""
    missing = len(shapes.keys() - state.keys())
    unexpected = len(state.keys() - shapes.keys())
    wrong = sum(1 for k in shapes.keys() & state.keys() if tuple(state[k].shape) != shapes[k])
    return missing, unexpected, wrong


def check_architecture(state: dict[str, torch.Tensor], variant: str, source: str) -> None:
    missing, unexpected, wrong = mismatch(state, expected_shapes(variant))
    if not (missing or unexpected or wrong):
        return
    fits = [v for v in VARIANTS if v != variant and not any(mismatch(state, expected_shapes(v)))]
    problem = (
        f"weights {source} do not fit variant {variant!r}: {missing} keys missing, "
        f"{unexpected} unexpected, {wrong} with other shapes"
    )
    if fits:
        raise WeightsError(f"{problem}; they look like {fits[0]}: use --variant {fits[0]}")
    raise WeightsError(f"{problem}; not a BiRefNet {'/'.join(VARIANTS)} checkpoint (check --weights)")


def load_model(variant: str = "portrait", weights=None, patch_order: str | None = None) -> BiRefNet:
    """An eval-mode CPU model of `variant` holding the given (or the variant's default) weights."""
    if variant not in VARIANTS:
        raise WeightsError(f"unknown variant {variant!r} (use one of {', '.join(VARIANTS)})")
    path = resolve_weights(weights, variant)
    state = read_state_dict(path)
    check_architecture(state, variant, str(path))
    return model_from_state(state, variant, patch_order)


def model_from_state(
    state: dict[str, torch.Tensor], variant: str, patch_order: str | None = None
) -> BiRefNet:
    """An eval-mode CPU model holding `state`, already read and checked (e.g. shipped by `streamer batch`)."""
    # Built on the meta device: the state supplies every tensor, so random initialisation is wasted time.
    with torch.device("meta"):
        model = build_model(variant, patch_order)
    model.load_state_dict(state, strict=True, assign=True)
    return model
