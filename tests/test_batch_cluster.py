"""`streamer batch` on a real two-node Ray cluster, inside a network and PID namespace of its own.

`test_cluster` re-runs this file under `unshare -n -p -f --mount-proc` with only loopback up:
Ray's nodes then register 127.0.0.1, every packet stays in the namespace, and every process
Ray starts dies with the namespace (`ray stop --force` runs first, from a trap, and only
sees the namespace's processes). Inside, the tests start a head and a second worker node,
run the command as a user would, kill a worker process mid-clip, and re-run to resume.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from media import count_audio, make_clip, read_video

INSIDE = os.environ.get("STREAMER_TEST_NETNS") == "1"
ROOT = Path(__file__).resolve().parent.parent
PORT = 6390
OBJECT_STORE = str(200 * 1024 * 1024)  # small: by default each node asks for ~30% of the RAM
LONG_OPTIONS = {"preset": "ultrafast", "g": "3", "keyint_min": "3", "sc_threshold": "0"}

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.skipif(INSIDE, reason="the outer half runs outside the namespace")
@pytest.mark.timeout(900)
def test_cluster(tmp_path):
    pytest.importorskip("ray")
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip (iproute2) for a private network namespace")
    namespaces = ["unshare", "-n", "-p", "-f", "--mount-proc"]
    if subprocess.run([*namespaces, "true"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("this machine does not allow new network and PID namespaces (unshare failed)")
    env = _env()
    env["STREAMER_TEST_NETNS"] = "1"
    # Ray 2.60 turns token authentication on for local clusters and keeps the token in ~/.ray; this
    # cluster's token lives in the environment every process of the namespace inherits instead.
    env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"] = "token", secrets.token_hex(32)
    # A Ray folder of our own (nothing shared with another Ray here), short: socket paths stop at 107 bytes.
    env["RAY_TMPDIR"] = ray_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    inner = (
        "ip link set lo up && trap 'ray stop --force >/dev/null 2>&1' EXIT && "
        f"{sys.executable} -m pytest -q -x -p no:cacheprovider -k 'not test_cluster' {Path(__file__)} "
        f"--basetemp {tmp_path / 'inner'}"
    )
    try:
        done = subprocess.run(
            [*namespaces, "bash", "-c", inner],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=840,
        )
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "2 passed" in done.stdout, done.stdout[-2000:]


def _ray(*args: str, env: dict) -> None:
    subprocess.run(["ray", *args], check=True, env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second worker node, one CPU each, torn down even when a test fails."""
    if not INSIDE:
        pytest.skip("runs inside test_cluster's namespace")
    env = _env()
    common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats"]
    try:
        _ray("start", "--head", f"--port={PORT}", "--include-dashboard=false", *common, env=env)
        _ray("start", f"--address=127.0.0.1:{PORT}", '--resources={"node2": 1}', *common, env=env)
        yield f"127.0.0.1:{PORT}"
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from safetensors.torch import save_file

    from streamer.model.recipe import make_state_dict

    path = tmp_path_factory.mktemp("weights") / "lite.safetensors"
    save_file(make_state_dict("lite"), str(path))
    return path


def _batch(args: list[str], weights: Path, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "streamer", "batch", *args, "--variant", "lite", "--size", "64x64"]
    command += ["--weights", str(weights), "--mode", "rgba", "--device", "cpu"]
    return subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def _worker_pids() -> list[int]:
    """Processes of ClipWorker actors busy with a clip (Ray titles them ray::ClipWorker.process)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if title.startswith(b"ray::ClipWorker.process"):
                pids.append(int(entry.name))
    return pids


def _check_output(path: Path, source: Path) -> None:
    frames, pts, tb = read_video(path, "rgba")
    src_frames, src_pts, src_tb = read_video(source)
    assert len(frames) == len(src_frames)
    assert [p * tb for p in pts] == [p * src_tb for p in src_pts]
    assert count_audio(path)[0] > 0
    assert abs(count_audio(path)[1] - count_audio(source)[1]) < 0.05
    assert (frames[0][..., 3] < 255).any()


@pytest.mark.timeout(600)
def test_local_instance_without_address(tmp_path, weights):
    """No --address: a Ray instance of its own on this machine (inside the namespace)."""
    if not INSIDE:
        pytest.skip("runs inside test_cluster's namespace")
    src = make_clip(tmp_path / "one.mp4", frames=4, size=(64, 48))
    proc = _batch([str(src), "-o", str(tmp_path / "out"), "--workers", "1", "--no-progress"], weights)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    _check_output(tmp_path / "out" / "one.mov", src)


@pytest.mark.timeout(600)
def test_batch_on_two_nodes_survives_a_killed_worker_and_resumes(tmp_path, cluster, weights):
    clips = tmp_path / "clips"
    clips.mkdir()
    sources = [make_clip(clips / f"clip{i}.mp4", frames=8 + i, size=(64, 48)) for i in range(4)]
    sources.append(make_clip(clips / "long.mp4", size=(64, 48), frames=24, fps=5, options=LONG_OPTIONS))
    (clips / "broken.mp4").write_bytes(b"\0" * 5000)
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    args = [str(clips), "-o", str(out), "--address", cluster, "--workers", "2", "--segment-frames", "8"]
    args += ["--report", str(report)]
    proc = _batch(args, weights)
    try:
        # Kill a worker's process in the middle of a clip: its output is being written, not done.
        start = time.monotonic()
        killed = None
        while killed is None and time.monotonic() < start + 300 and proc.poll() is None:
            busy = _worker_pids()
            if busy and out.is_dir() and any(".writing" in p.name for p in out.iterdir()):
                killed = busy[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        assert killed is not None, (
            f"no worker was seen at work; after {time.monotonic() - start:.0f} s the batch "
            + ("was still running" if proc.poll() is None else f"had ended with exit code {proc.returncode}")
        )
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr  # the broken input fails; the others do not
    rows = {Path(r["input"]).name: r for r in json.loads(report.read_text())["clips"]}
    assert rows["broken.mp4"]["status"] == "failed"
    assert "broken.mp4" in rows["broken.mp4"]["error"] and "\n" not in rows["broken.mp4"]["error"]
    assert any(r["retried"] for r in rows.values()), rows
    assert rows["long.mp4"]["segments"] == 3
    workers = {w for r in rows.values() for w in r["worker"].split(", ") if w}
    assert len(workers) >= 2
    for row in rows.values():  # a clip whose worker was killed was finished by another process
        if row["retried"] and row["segments"] == 1:
            assert not row["worker"].endswith(f":{killed}"), row
    for source in sources:
        assert rows[source.name]["status"].startswith("done"), rows[source.name]
        assert rows[source.name]["frames"] == len(read_video(source)[0])
        _check_output(out / f"{source.stem}.mov", source)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    # The summary table on stderr names every input once, with its status.
    assert "broken.mp4" in stderr and "failed" in stderr and "done" in stderr

    # Re-run: finished outputs are skipped, the broken one is tried (and reported) again.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "clip0.mov").unlink()
    proc = _batch(args, weights)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, stderr
    rows = {Path(r["input"]).name: r for r in json.loads(report.read_text())["clips"]}
    assert rows["clip0.mp4"]["status"] == "done"
    assert all(rows[s.name]["status"] == "skipped (done)" for s in sources[1:])
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert all(after[name] == stamp for name, stamp in before.items() if name != "clip0.mov")
    _check_output(out / "clip0.mov", sources[0])
