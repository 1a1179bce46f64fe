"""The network replayed as a CUDA graph: one launch a forward instead of hundreds.

BiRefNet runs hundreds of small kernels per forward. At live sizes (256-512) on a fast GPU the
Python code that launches them is slower than the GPU that runs them, and it competes for the GIL
with decoding, compositing and encoding; a captured graph replays them all in one call. A graph
holds fixed shapes, so one is captured per input shape (batch size and model size) and kept.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

log = logging.getLogger(__name__)

KEPT = 4
"""Captured shapes kept at once (live batches vary with the number of peers)."""
WARMUP = 3
"""Eager forwards on a side stream before capture (lazy cuDNN/cuBLAS setup must not be captured)."""


class GraphedForward:
    """Calls `model(x)` on CUDA through a captured graph per input shape, eagerly if capture fails.

    The returned tensor is the graph's own output buffer: it is overwritten by the next call with
    that shape, so callers use it before calling again (the engine turns it into alpha at once).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        self.captures = 0
        self.failed = False
        self._pool = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed or x.device.type != "cuda":
            return self.model(x)
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(x)
            if entry is None:
                return self.model(x)
            self.graphs[key] = entry
            while len(self.graphs) > KEPT:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _capture(self, x: torch.Tensor):
        try:
            static_in = x.clone()
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    self.model(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # thread_local: the compositing threads keep using the GPU while the worker captures.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                static_out = self.model(static_in)
        except Exception as err:  # an op that cannot be captured: run eagerly from now on
            self.failed = True
            log.warning("CUDA graph capture failed, running the network eagerly: %s", err)
            return None
        self.captures += 1
        log.info("captured a CUDA graph for input %s", tuple(x.shape))
        return graph, static_in, static_out
