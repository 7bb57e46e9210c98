"""
A benchmark's child process that speaks JSON lines on stdout (bench/utp.py,
bench/connect.py): every wait is bounded, and stop() always ends it.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
