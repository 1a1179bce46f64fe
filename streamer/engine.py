"""The matting engine: uint8 RGB frames in, float alpha mattes at each frame's own size out.

Pre- and post-processing run on the model's device so that only uint8 frames cross the bus.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from streamer.backends import BACKENDS, choose_backend
from streamer.config import Maybe, Params, Size, Whole
from streamer.errors import DeviceError
from streamer.model import MULTIPLE, PATCH_ORDERS, VARIANTS
from streamer.model.graphed import GraphedForward

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEVICE = r"^(auto|cpu|mps|cuda(:\d+)?)$"
# ImageNet statistics the network was trained with (spec.md section 8).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _multiples(size: tuple[int, int]) -> tuple[int, int]:
    if any(s % MULTIPLE for s in size):
        raise ValueError(f"expected two multiples of {MULTIPLE} (e.g. 1024x1024 or 512x512)")
    return size


class EngineParams(Params):
    variant: Literal[tuple(VARIANTS)] = "portrait"
    weights: Maybe(str) = None
    """Local .safetensors/.pth file or Hugging Face repo id; None = the variant's official repo."""
    size: Annotated[Size, AfterValidator(_multiples)] = (1024, 1024)
    """Network input (height, width); frames are resized to it and mattes back to frame size."""
    device: Annotated[str, Field(pattern=_DEVICE, description="auto, cpu, cuda, cuda:N or mps")] = "auto"
    dtype: Literal[("auto", *DTYPES)] = "auto"
    """auto = float16 on CUDA; on the CPU, OpenVINO's default (bfloat16 where the CPU has it, else
    float32) or float32 with torch. float32 on the CPU is the exact path."""
    compile: bool = False
    cuda_graph: bool = False
    """Replay the network as a captured CUDA graph per input shape (CUDA only; not with compile).
    Off until it has been measured on a GPU (`scripts/bench_model.py --modes graph`)."""
    channels_last: bool = True
    """Channels-last convolutions on CUDA (ignored on CPU, where it is no faster)."""
    patch_order: Maybe(Literal[tuple(PATCH_ORDERS)]) = None
    """None = the order the variant's weights were trained with (legacy for portrait and lite)."""
    batch_size: Whole(1, 4096) = 1
    """Frames that file jobs group per predict() call; predict() itself runs what it is given."""
    backend: Literal[tuple(BACKENDS)] = "auto"
    """auto = OpenVINO on the CPU where it is installed (torch for float16 or compile), torch elsewhere."""
    threads: Whole(0, 4096) = 0
    """CPU threads for the network (0 = the runtime's default, every core)."""
    auto_size_pixels: Maybe(Whole(MULTIPLE * MULTIPLE)) = None
    """When set, `size` is ignored: each frame keeps its aspect ratio at up to this many network
    pixels (`--size auto`, for the dynamic-resolution release); see `auto_input_size`."""


def auto_input_size(height: int, width: int, pixels: int) -> tuple[int, int]:
    """The largest network size with the frame's aspect ratio, sides multiples of 32, and at most
    `pixels` pixels (each side at least 32)."""
    scale = math.sqrt(pixels / (height * width))

    def tiles(side: float) -> int:
        return max(MULTIPLE, int(side) // MULTIPLE * MULTIPLE)

    h = tiles(height * scale)
    # A side raised to the 32-pixel minimum must not push the other past the budget.
    w = tiles(min(width * scale, pixels / h))
    return tiles(min(h, pixels / w)), w


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name} requested but no CUDA GPU is usable here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name} does not exist: {torch.cuda.device_count()} CUDA GPU(s) (use cuda:0)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name} requested but MPS is not available (use --device cpu)")
    return device


def engine_device(params: EngineParams) -> torch.device:
    """The device `params`' engine runs on (OpenVINO asked for by name runs on the CPU)."""
    if params.backend == "openvino" and params.device == "auto":
        return torch.device("cpu")
    return resolve_device(params.device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _as_hwc_tensor(image) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        # torch cannot wrap read-only arrays (e.g. np.asarray of a PIL image) without a copy.
        image = torch.from_numpy(np.ascontiguousarray(image) if image.flags.writeable else image.copy())
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a uint8 RGB image (numpy array or tensor), got {type(image).__name__}")
    if image.dtype != torch.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 RGB (H, W, 3) or (B, H, W, 3), got {image.dtype} {tuple(image.shape)}"
        )
    return image


class MattingEngine:
    """Owns the network on one device; `predict` is the only call the pipeline needs."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: EngineParams,
        device: torch.device,
        dtype: torch.dtype,
        backend: str = "torch",
    ):
        self.params = params
        self.device = device
        self.size = params.size
        self.backend = backend
        self.channels_last = params.channels_last and device.type == "cuda"
        if backend == "openvino":
            from streamer.backends.openvino import OpenVINOForward

            # OpenVINO takes and returns float32; it computes in its own precision (self.precision).
            self.model = OpenVINOForward(model, params.variant, params.dtype, params.threads)
            self.dtype = torch.float32
            self.precision = self.model.precision
            self._mean = torch.tensor(MEAN).view(1, 3, 1, 1)
            self._std = torch.tensor(STD).view(1, 3, 1, 1)
            return
        self.dtype = dtype
        self.precision = str(dtype).removeprefix("torch.")
        if params.threads and device.type == "cpu":
            torch.set_num_threads(params.threads)
        model = model.to(device=device, dtype=dtype).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if params.compile:
            self.model = torch.compile(model)
        elif params.cuda_graph and device.type == "cuda":
            self.model = GraphedForward(model)
        else:
            self.model = model
        self._mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    @classmethod
    def from_params(cls, params: EngineParams, state: dict | None = None) -> MattingEngine:
        """The engine of `params`; `state` (a checked state dict) stands in for reading `params.weights`."""
        from streamer.model.weights import load_model, model_from_state

        device = engine_device(params)
        backend = choose_backend(params.backend, device.type, params.dtype, params.compile)
        dtype = resolve_dtype(params.dtype, device)
        if state is None:
            model = load_model(params.variant, params.weights, params.patch_order)
        else:
            model = model_from_state(state, params.variant, params.patch_order)
        engine = cls(model, params, device, dtype, backend)
        log.info(
            "engine: %s on %s with %s as %s at %dx%d",
            params.variant,
            device,
            backend,
            engine.precision,
            *params.size,
        )
        return engine

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 on any device -> (B, 3, h, w) float 0..255 at network size, on device."""
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        h, w = self.input_size(*x.shape[-2:])
        if x.shape[-2:] != (h, w):
            # Antialiasing only matters when shrinking; it mirrors the PIL resize of the official recipe.
            shrink = x.shape[-2] > h or x.shape[-1] > w
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
        return x

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input size for a frame of this size."""
        pixels = self.params.auto_size_pixels
        return self.size if pixels is None else auto_input_size(height, width, pixels)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Network-size (B, 3, h, w) 0..255 floats -> (B, h, w) float32 alpha (inference tensors)."""
        x = (x / 255.0 - self._mean) / self._std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.model(x.to(self.dtype)).float())[:, 0]

    @staticmethod
    def _to_size(alpha: torch.Tensor, size) -> torch.Tensor:
        # Outside inference mode: callers may update the matte in place (inference tensors forbid it).
        with torch.no_grad():
            if tuple(alpha.shape[-2:]) == tuple(size):
                return alpha.clone()
            return F.interpolate(alpha[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]

    def predict(self, images):
        """Alpha in [0, 1], float32 on `self.device`, at each input frame's own resolution.

        images: uint8 RGB (H, W, 3) -> (H, W); (B, H, W, 3) -> (B, H, W); or a list/tuple of (H, W, 3)
        frames of any sizes -> list of (H, W), run through the network as one batch.
        """
        if isinstance(images, Sequence):
            frames = [_as_hwc_tensor(image) for image in images]
            if any(f.ndim != 3 for f in frames):
                raise ValueError("a list given to predict() must hold single (H, W, 3) frames")
            if not frames:
                return []
            with torch.inference_mode():
                inputs = [self.resize(f[None]) for f in frames]
                if len({x.shape for x in inputs}) > 1:  # --size auto: frames of other shapes
                    alpha = [self.infer(x)[0] for x in inputs]
                else:
                    alpha = self.infer(torch.cat(inputs))
            return [self._to_size(a[None], f.shape[:2])[0] for a, f in zip(alpha, frames, strict=True)]
        image = _as_hwc_tensor(images)
        batch = image if image.ndim == 4 else image[None]
        with torch.inference_mode():
            alpha = self.infer(self.resize(batch))
        alpha = self._to_size(alpha, batch.shape[1:3])
        return alpha if image.ndim == 4 else alpha[0]
