"""The package as a user installs it: a wheel in a fresh virtual environment, outside the checkout."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _distribution(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def test_every_library_the_package_imports_is_declared():
    # A library present on the developer's machine but missing from pyproject breaks
    # `pip install -e .` on a fresh one: `streamer` imports every command at start.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        _distribution(r) for r in project["dependencies"] + project["optional-dependencies"]["cluster"]
    }
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in (ROOT / "streamer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in (m.partition(".")[0] for m in modules):
                if module in sys.stdlib_module_names or module == "streamer":
                    continue
                dists = {_distribution(d) for d in providers.get(module, [module])}
                if not dists & declared:
                    undeclared.setdefault(module, set()).add(path.relative_to(ROOT).as_posix())
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


@pytest.mark.slow
def test_wheel_ships_the_presets(tmp_path):
    # Build from a copy, so the checkout gets no build/ or egg-info, and nothing outside the
    # copied files can leak into the wheel.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "streamer", src / "streamer", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("streamer-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def in_venv(*args) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*map(str, args)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
        )

    listed = in_venv(venv / "bin" / "streamer", "presets")
    assert listed.returncode == 0, listed.stderr
    lines = dict(line.split(maxsplit=1) for line in listed.stdout.splitlines())
    assert {"green-screen", "prores-alpha", "live-cpu"} <= lines.keys()
    assert lines["live-cpu"].startswith("Live on a machine without a GPU")

    loaded = in_venv(
        python,
        "-c",
        "import streamer; from streamer.config import load_config; "
        "c = load_config('live-cpu'); print(streamer.__file__); print(c.model.variant, c.model.size)",
    )
    assert loaded.returncode == 0, loaded.stderr
    where, values = loaded.stdout.splitlines()
    # The installed wheel, not the checkout or an editable install of it.
    assert Path(where).is_relative_to(venv), where
    assert values == "lite (256, 256)"
