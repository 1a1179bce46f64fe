"""Stop signals reach the job on the event loop, also where the loop has no signal handlers (Windows).

The signal is raised in a fresh interpreter: raised inside the test runner, it would also reach
whatever native libraries earlier tests loaded into that process."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from streamer.signals import exit_status

DELIVER = textwrap.dedent(
    """
    import asyncio, signal
    from streamer.signals import install_stop_handlers

    class NoSignalLoop(asyncio.SelectorEventLoop):
        # An event loop like Windows' Proactor: no add_signal_handler.
        def add_signal_handler(self, *args, **kwargs):
            raise NotImplementedError

        def remove_signal_handler(self, *args, **kwargs):
            raise NotImplementedError

    def deliver(loop, signum):
        received = []

        async def main():
            got = asyncio.Event()
            remove = install_stop_handlers(loop, lambda s: (received.append(s), got.set()))
            try:
                signal.raise_signal(signum)
                await asyncio.wait_for(got.wait(), timeout=30)
            finally:
                remove()

        loop.run_until_complete(main())
        loop.close()
        return received

    before = signal.getsignal(signal.SIGTERM)
    assert deliver(asyncio.new_event_loop(), signal.SIGTERM) == [signal.SIGTERM]
    assert deliver(NoSignalLoop(), signal.SIGTERM) == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before  # the fallback is undone
    print("ok")
    """
)


def test_signals_reach_the_loop_with_and_without_loop_signal_handlers():
    done = subprocess.run([sys.executable, "-c", DELIVER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_exit_status_follows_the_shell():
    assert exit_status(signal.SIGINT) == 130
    assert exit_status(signal.SIGTERM) == 143


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_with_its_exit_status(lite, signum):
    port = free_port()
    command = [sys.executable, "-m", "streamer", "serve", "--port", str(port), *lite]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # wait on the condition (listening), not on a delay
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            assert server.poll() is None and time.monotonic() < deadline, server.communicate()[1]
            time.sleep(0.1)
        server.send_signal(signum)
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == exit_status(signum), err
    assert "Traceback" not in err, err
