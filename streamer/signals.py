"""Ctrl-C and SIGTERM for a job running on asyncio, on every platform.

`loop.add_signal_handler` exists only on Unix event loops; elsewhere (Windows) the handler is
installed with `signal.signal` and hands the signal to the loop with `call_soon_threadsafe`.
Either way `on_signal(signum)` runs on the event loop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The shell's convention for a job ended by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + int(signum)


def install_stop_handlers(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]
) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to `on_signal` on `loop`; returns the function that undoes it."""
    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
    except NotImplementedError:
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, _frame: loop.call_soon_threadsafe(on_signal, signum))

        def undo() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return undo

    def remove() -> None:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

    return remove
