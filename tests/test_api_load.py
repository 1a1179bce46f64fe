"""The image API under load: 200 requests from 8 concurrent clients to a real
`streamer serve --no-webrtc` (tests/load_api.py), in a network namespace of its own (only
loopback), every answer compared byte for byte with the one the same picture got alone, and
the server's descriptors, threads and memory back to their warmed-up baseline after.
Takes about half a minute (lite recipe weights at 32x32)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_load import run_in_namespace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HELPER = Path(__file__).with_name("load_api.py")
RSS_GROWTH_MB = 50
"""Allowed growth of the server's RSS over the run (the allocator keeps some freed memory)."""


def test_two_hundred_requests_from_eight_clients_all_answered_right(recipe_weights, tmp_path):
    options = ["--weights", str(recipe_weights("lite")), "--requests", "200", "--clients", "8"]
    report = run_in_namespace(HELPER, options, tmp_path / "report.json", timeout=280)
    assert report["requests"] == 200 and report["statuses"] == {"200": 216}, report["statuses"]
    assert report["wrong"] == []
    assert report["error_lines"] == [], report["log_tail"]
    assert report["exit_code"] == 143, report["log_tail"]  # SIGTERM, after closing every peer
    first, last = report["baseline"], report["after"]
    assert last["fds"] <= first["fds"] and last["threads"] <= first["threads"], (first, last)
    assert last["rss_mb"] - first["rss_mb"] < RSS_GROWTH_MB, (first, last)
