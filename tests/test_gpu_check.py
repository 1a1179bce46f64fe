"""scripts/gpu_check.sh on a machine without CUDA: every GPU step is skipped and the call finishes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs for minutes")
def test_gpu_check_skips_what_needs_cuda_and_writes_one_report(tmp_path):
    out = tmp_path / "gpu.md"
    env = os.environ | {
        "GPU_CHECK_PYTEST_ARGS": "tests/test_engine.py",  # collect little: the point is the skip
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    report = out.read_text()
    assert "GPU: none (CUDA not available)" in report
    for step in (
        "model eager + CUDA graph",
        "model torch.compile",
        "file pipeline 1024",
        "live portrait 512/1024",
    ):
        assert f"| {step}" in report and "skipped: no CUDA" in report.split(f"| {step}")[1].splitlines()[0]
    tests_row = report.split("| CUDA tests |")[1].splitlines()[0]
    assert tests_row.startswith(" ok |") and "skipped" in tests_row
