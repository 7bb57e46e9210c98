"""SIGINT/SIGTERM for the processes ``hyperswarm`` and ``twist hyperswarm`` run."""

from __future__ import annotations

import signal
from typing import Callable

__all__ = ["STOP_SIGNALS", "on_stop_signals"]

#: The signals that end a command or the daemon cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop_signals(reactor, callback: Callable[[int], object]) -> None:
    """
    Call ``callback(signum)`` in the reactor thread at SIGINT or SIGTERM,
    instead of the reactor's own handling (``KeyboardInterrupt``, or a stop
    that twist turns into exit status 128+N).

    The handlers are installed now, so a signal before the reactor runs is
    not lost (its call runs once the reactor does), and again once it runs,
    since the reactor installs its own as it starts.
    """

    def handler(signum, frame) -> None:
        reactor.callFromThread(callback, signum)

    def install() -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)

    install()
    reactor.callWhenRunning(install)
