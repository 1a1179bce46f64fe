"""CUDA graph replay of the network: the same output as eager, per input, per shape."""

from __future__ import annotations

import pytest
import torch

from streamer.model.graphed import KEPT, GraphedForward


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(1, keepdim=True)


class Syncs(Tiny):
    """Reads a value back to the host mid-forward, which a stream capture forbids."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float(x.mean())


def test_cpu_inputs_run_the_model_as_it_is():
    model = Tiny().eval()
    graphed = GraphedForward(model)
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(graphed(x), model(x))
    assert graphed.captures == 0 and not graphed.graphs


@pytest.mark.cuda
def test_replays_follow_each_input_and_keep_a_graph_per_shape():
    model = Tiny().cuda().eval()
    graphed = GraphedForward(model)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(2):  # second round: replays only
            for batch in range(1, KEPT + 1):
                x = torch.rand(batch, 3, 16, 24, generator=gen).cuda()
                torch.testing.assert_close(graphed(x).clone(), model(x))
    assert graphed.captures == KEPT and len(graphed.graphs) == KEPT and not graphed.failed
    with torch.inference_mode():
        x = torch.rand(KEPT + 1, 3, 16, 24, generator=gen).cuda()
        torch.testing.assert_close(graphed(x).clone(), model(x))
    assert len(graphed.graphs) == KEPT  # the least recently used shape made room


@pytest.mark.cuda
def test_a_model_that_cannot_be_captured_runs_eagerly():
    model = Syncs().cuda().eval()
    graphed = GraphedForward(model)
    x = torch.rand(1, 3, 16, 16).cuda()
    with torch.inference_mode():
        torch.testing.assert_close(graphed(x), model(x))
        torch.testing.assert_close(graphed(x * 2), model(x * 2))
    assert graphed.failed and graphed.captures == 0
