"""
A benchmark's child process that speaks JSON lines on stdout (bench/utp.py,
bench/connect.py): every wait is bounded, and stop() always ends it. In the
child: emit() writes such a line, serve_role() runs a swarm peer's announce
or dial part (bench/connect.py, bench/swarm_lossy.py).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def emit(**obj) -> None:
    """One JSON line on stdout, flushed: what a child says to its driver."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve_role(swarm, topic: bytes, role: str, state: dict, on_announced=None) -> None:
    """
    A swarm peer's part once ``swarm`` listens (the Python side of
    bench/node/connect_peer.js and swarm_lossy_peer.js): the ``"announce"``
    role joins ``topic`` announcing only, calls ``on_announced`` and emits
    ``announced``; the dialler emits ``ready`` and, on the first line on
    stdin (the driver's "go"), notes ``state["joined_at"]`` and joins with a
    lookup only. Both emit ``port`` and ``pid``; a failed join, ``error``.
    """
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    def failed(f):
        emit(event="error", message=str(f.value))

    def bound():
        if role == "announce":
            def announced(ok):
                if on_announced is not None:
                    on_announced()
                emit(event="announced", ok=ok, port=swarm.address()[1], pid=os.getpid())

            swarm.join(topic, announce=True, lookup=False).addCallback(announced).addErrback(failed)
            return

        class Go(LineReceiver):
            delimiter = b"\n"

            def lineReceived(self, line):
                if state["joined_at"] is None:
                    state["joined_at"] = time.monotonic()
                    swarm.join(topic, lookup=True).addErrback(failed)

        stdio.StandardIO(Go())
        emit(event="ready", port=swarm.address()[1], pid=os.getpid())

    swarm.once("listening", bound)


class Peer:
    """A child speaking JSON lines; every wait is bounded."""

    def __init__(self, argv, env=None, name="", quiet=False) -> None:
        self.name = name or " ".join(argv[:3])
        hide = quiet and not os.environ.get("BENCH_VERBOSE")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL if hide else None,
                                     text=True, env=env, cwd=str(REPO))

    def read(self, event: str, timeout: float) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + timeout
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"no {event!r} from the {self.name} in {timeout}s")
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.name} exited before {event!r}")
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("event") == event:
                    return obj
                if obj.get("event") == "error":
                    raise RuntimeError(f"{self.name}: {obj}")
        finally:
            sel.close()

    def send_line(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        end_process(self.proc)


def end_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s: the child is gone when this returns."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
