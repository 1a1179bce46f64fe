"""The network's forward on the CPU through OpenVINO, converted once per input size and cached on disk.

Conversion traces our torch module, which freezes the input's height and width into the graph
as constants, so each (height, width) is its own converted model; the batch dimension is not
frozen, so a new batch size is only a reshape and a compile. Converted models live in the
user's cache folder, keyed by the weights' digest, variant, patch order, size and OpenVINO
version; OpenVINO's own compiled-model cache beside them is keyed by batch size and precision,
so the second start of a key skips both the conversion and most of the compile.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from streamer.backends import cache_root

log = logging.getLogger(__name__)

FORMAT = 2
"""Bumped when what an entry holds changes, so older entries are rebuilt (2: portable forms)."""
_HINTS = {"float32": "f32", "bfloat16": "bf16"}
"""model.dtype -> OpenVINO inference precision; `auto` leaves OpenVINO's default (bf16 where the CPU has it)."""
# Seconds per million input pixels and fixed seconds of one conversion, measured on a 2-core
# AVX512 CPU (lite: 12 s at 256x256, 30 s at 512x512); Swin-L variants take about 2.5x.
_CONVERT_FIXED_S = 10.0
_CONVERT_PER_MPIX_S = 80.0
_SLOWER = {"lite": 1.0}


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of every tensor of the model's state: a cache key that changes with the weights."""
    digest = hashlib.blake2b(digest_size=16)
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def default_precision() -> str:
    """What the CPU runs with `--dtype auto`: bfloat16 where the CPU has it, else float32."""
    return "bfloat16" if cpu_has_bf16() else "float32"


def expected_seconds(variant: str, size: tuple[int, int]) -> int:
    pixels = size[0] * size[1] / 1e6
    return round((_CONVERT_FIXED_S + _CONVERT_PER_MPIX_S * pixels) * _SLOWER.get(variant, 2.5))


class OpenVINOForward:
    """`forward(x)`: normalised (B, 3, H, W) float32 -> logits (B, 1, H, W), like the torch module.

    Holds the torch module so that a new size at run time can be converted (once) and go on.
    Calls come from one thread at a time (the engine's caller); a lock keeps it so.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        variant: str,
        dtype: str = "auto",
        threads: int = 0,
        cache_dir: Path | None = None,
        notify=None,
    ):
        import openvino as ov

        self._ov = ov
        self._model = model.float().eval()
        self.variant = variant
        self.patch_order = getattr(model, "patch_order", "legacy")
        self.precision = default_precision() if dtype == "auto" else dtype
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "openvino"
        self._notify = notify or _print_line
        self._digest = weights_digest(model)
        self._core = ov.Core()
        self._config: dict[str, object] = {}
        if dtype in _HINTS:
            self._config["INFERENCE_PRECISION_HINT"] = _HINTS[dtype]
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._requests: dict[tuple[int, int, int], object] = {}
        self._lock = threading.Lock()
        self.conversions = 0
        """Conversions this object ran (a cache hit runs none)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        with self._lock:
            request = self._request(n, h, w)
            request.infer({0: x.detach().float().contiguous().numpy()}, share_inputs=True)
            # The request reuses its output buffer on the next call: copy out.
            return torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True))

    def prepare(self, batch: int, size: tuple[int, int]) -> None:
        """Convert and compile ahead of the first frame (otherwise the first call does it)."""
        with self._lock:
            self._request(batch, *size)

    # --- cache entries -------------------------------------------------------------------------

    def entry_dir(self, size: tuple[int, int]) -> Path:
        key = json.dumps(
            [FORMAT, self._ov.__version__, self._digest, self.variant, self.patch_order, list(size)]
        )
        digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        return self.cache_dir / f"{self.variant}-{self.patch_order}-{size[0]}x{size[1]}-{digest}"

    def _request(self, n: int, h: int, w: int):
        request = self._requests.get((n, h, w))
        if request is None:
            compiled = self._compile(n, (h, w))
            request = compiled.create_infer_request()
            self._requests[(n, h, w)] = request
        return request

    def _compile(self, batch: int, size: tuple[int, int]):
        entry = self.entry_dir(size)
        config = {**self._config, "CACHE_DIR": str(entry / "compiled")}
        damaged = False
        if (entry / "entry.json").is_file():
            try:
                model = self._read(entry)
                model.reshape([batch, 3, *size])
                return self._core.compile_model(model, "CPU", config)
            except Exception as err:  # any unreadable or inconsistent file: rebuild the entry
                log.info("openvino: cache entry %s unusable (%s: %s)", entry, type(err).__name__, err)
                damaged = True
        elif entry.exists():
            damaged = True  # a folder without its manifest: an interrupted or foreign write
        model = self._build(entry, size, damaged)
        model.reshape([batch, 3, *size])
        if not entry.is_dir():  # not stored: no compiled-model cache either
            config.pop("CACHE_DIR")
        return self._core.compile_model(model, "CPU", config)

    def _read(self, entry: Path):
        manifest = json.loads((entry / "entry.json").read_text())
        for name, size in manifest["bytes"].items():
            actual = (entry / name).stat().st_size
            if actual != size:
                raise ValueError(f"{name} has {actual} bytes, expected {size}")
        return self._core.read_model(str(entry / "model.xml"))

    def _build(self, entry: Path, size: tuple[int, int], damaged: bool):
        eta = expected_seconds(self.variant, size)
        what = f"the {self.variant} network for this CPU at {size[0]}x{size[1]}"
        if damaged:
            self._notify(
                f"streamer: cached network in {entry} is damaged; preparing {what} again (about {eta} s)"
            )
        else:
            self._notify(f"streamer: preparing {what} (once, about {eta} s; cached in {self.cache_dir})")
        started = time.monotonic()
        model = self._convert(size)
        self.conversions += 1
        try:
            self._store(model, entry, size, started)
        except (OSError, RuntimeError) as err:  # a full disk, a read-only home: the cache is only a cache
            log.warning(
                "openvino: cannot keep the converted network in %s (%s); it is converted again next run",
                self.cache_dir,
                err,
            )
        return model

    def _store(self, model, entry: Path, size: tuple[int, int], started: float) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache_dir))
        try:
            # Weights stay float32: compressing them to f16 would cost the exact path its precision.
            self._ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            files = {name: (tmp / name).stat().st_size for name in ("model.xml", "model.bin")}
            manifest = {
                "openvino": self._ov.__version__,
                "format": FORMAT,
                "variant": self.variant,
                "patch_order": self.patch_order,
                "size": list(size),
                "convert_s": round(time.monotonic() - started, 1),
                "bytes": files,
            }
            (tmp / "entry.json").write_text(json.dumps(manifest, indent=1))
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            try:
                os.rename(tmp, entry)
            except OSError:  # another process stored the same entry meanwhile: theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(entry)

    def _convert(self, size: tuple[int, int]):
        example = torch.zeros(1, 3, *size)
        with warnings.catch_warnings(), torch.no_grad(), _portable_forms():
            # The trace warns that sizes become constants: that is why each size is its own entry.
            warnings.simplefilter("ignore")
            return self._ov.convert_model(self._model, example_input=example)

    def _prune(self, keep: Path) -> None:
        """Remove entries written by another OpenVINO version or entry format: never read again."""
        for entry in self.cache_dir.glob("*/entry.json"):
            if entry.parent == keep:
                continue
            try:
                manifest = json.loads(entry.read_text())
                stale = manifest.get("openvino") != self._ov.__version__ or manifest.get("format") != FORMAT
            except (OSError, ValueError):
                stale = False  # unreadable: its own key's next use rebuilds it
            if stale:
                shutil.rmtree(entry.parent, ignore_errors=True)


# The torch CPU path's own forms (gathered deformable convolution, 4-D attention, linear layers
# as 1x1 convolutions over flattened tokens) are for torch's kernels: traced, they become gathers
# and reshapes with the batch frozen in, and bfloat16 matte errors of 1.9e-2 were measured. The
# portable forms convert to OpenVINO's own DeformableConvolution, MatMul and softmax.
_TORCH_CPU_FORMS = (
    ("streamer.model.blocks", "GATHER_ON_CPU"),
    ("streamer.model.swin", "ONEDNN_CPU_LINEAR"),
    ("streamer.model.swin", "FUSED_CPU_ATTENTION"),
)


@contextlib.contextmanager
def _portable_forms():
    saved = []
    for module_name, flag in _TORCH_CPU_FORMS:
        module = importlib.import_module(module_name)
        if hasattr(module, flag):
            saved.append((module, flag, getattr(module, flag)))
            setattr(module, flag, False)
    try:
        yield
    finally:
        for module, flag, value in saved:
            setattr(module, flag, value)


def _print_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
