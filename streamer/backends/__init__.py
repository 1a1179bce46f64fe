"""Which runtime executes the network: torch (any device) or OpenVINO (the CPU).

The engine asks `choose_backend` once; the chosen backend only provides the forward
`x -> logits`, so pre- and post-processing and predict()'s contract stay the engine's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from streamer.errors import ConfigError

BACKENDS = ("auto", "torch", "openvino")
ENV_BACKEND = "STREAMER_BACKEND"
"""Replaces `auto` (e.g. STREAMER_BACKEND=torch keeps every command on torch); explicit values win."""


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_backend(requested: str, device_type: str, dtype: str, compile: bool) -> str:
    """'torch' or 'openvino' for a model.backend value on a device ('cpu', 'cuda', 'mps')."""
    if requested == "auto":
        requested = os.environ.get(ENV_BACKEND, "").strip().lower() or "auto"
        if requested not in BACKENDS:
            raise ConfigError(f"{ENV_BACKEND}={requested!r} is not one of {', '.join(BACKENDS)}")
    if requested == "auto":
        # OpenVINO runs float32 and bfloat16 on the CPU; torch keeps what only it does.
        fits = device_type == "cpu" and dtype != "float16" and not compile
        return "openvino" if fits and openvino_available() else "torch"
    if requested == "openvino":
        if device_type != "cpu":
            raise ConfigError(
                f"model.backend openvino runs on the CPU, not {device_type} (use --device cpu or --backend torch)"
            )
        if dtype == "float16":
            raise ConfigError(
                "model.dtype float16 is not run by the openvino backend (use --dtype float32 or bfloat16)"
            )
        if compile:
            raise ConfigError("model.compile is torch.compile: use it with --backend torch, not openvino")
        if not openvino_available():
            raise ConfigError("model.backend openvino: openvino is not installed (pip install openvino)")
    return requested


def cache_root() -> Path:
    """The user's cache folder for streamer (XDG_CACHE_HOME is honoured on every system)."""
    if os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"])
    elif sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path("~/Library/Caches")
    else:
        base = Path("~/.cache")
    return base.expanduser() / "streamer"
