"""
Test harness: child processes (Node reference peers, our own CLI) that speak
JSON lines on stdout, started on the running reactor and always ended.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, List, Optional

from twisted.internet import defer, error, protocol

TESTS = Path(__file__).resolve().parent
NODE_DIR = TESTS / "node"
NODE_MODULES = NODE_DIR / "node_modules"
REPO = TESTS.parent


def node_binary() -> Optional[str]:
    return shutil.which("node")


class ProcessGone(Exception):
    """The child exited before printing what the test waited for."""


class JSONLinesProcess(protocol.ProcessProtocol):
    """
    A child process whose stdout is one JSON object per line.

    ``lines`` holds every decoded object; :meth:`wait_for` fires with the
    first (past or future) object matching a predicate, or fails after a
    timeout or when the process exits.
    """

    def __init__(self, reactor, name: str) -> None:
        self._reactor = reactor
        self.name = name
        self.lines: List[dict] = []
        self.raw_stdout = b""
        self.stderr = b""
        self._buf = b""
        self._waiters: list = []
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code: Optional[int] = None
        self.running = False

    # ProcessProtocol
    def connectionMade(self) -> None:
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.raw_stdout += data
        self._buf += data
        *complete, self._buf = self._buf.split(b"\n")
        for line in complete:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"_text": line.decode("utf-8", "replace")}
            self.lines.append(obj)
            for w in list(self._waiters):
                pred, d, call = w
                if pred(obj):
                    self._waiters.remove(w)
                    call.cancel()
                    d.callback(obj)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        self.running = False
        self.exit_code = getattr(reason.value, "exitCode", None)
        for pred, d, call in self._waiters:
            call.cancel()
            d.errback(ProcessGone(f"{self.name} exited ({self.exit_code}); stderr:\n{self.stderr.decode(errors='replace')[-3000:]}"))
        self._waiters = []
        self.ended.callback(self.exit_code)

    # API
    def wait_for(self, predicate: Callable[[dict], bool] = lambda o: True, timeout: float = 20.0) -> defer.Deferred:
        for obj in self.lines:
            if predicate(obj):
                return defer.succeed(obj)
        if not self.running and self.ended.called:
            return defer.fail(ProcessGone(f"{self.name} already exited ({self.exit_code}); stderr:\n{self.stderr.decode(errors='replace')[-3000:]}"))
        d: defer.Deferred = defer.Deferred()

        def expire():
            entry = next((w for w in self._waiters if w[1] is d), None)
            if entry:
                self._waiters.remove(entry)
                d.errback(defer.TimeoutError(f"{self.name}: nothing matching after {timeout}s; stdout:\n{self.raw_stdout.decode(errors='replace')[-3000:]}\nstderr:\n{self.stderr.decode(errors='replace')[-3000:]}"))

        call = self._reactor.callLater(timeout, expire)
        self._waiters.append((predicate, d, call))
        return d

    def send(self, obj: dict) -> None:
        """Write one JSON line to the child's stdin."""
        self.transport.write(json.dumps(obj).encode() + b"\n")

    def signal(self, sig: str = "TERM") -> None:
        if self.running:
            try:
                self.transport.signalProcess(sig)
            except error.ProcessExitedAlready:
                pass

    def stop(self, grace: float = 5.0) -> defer.Deferred:
        """SIGTERM, then SIGKILL after ``grace`` seconds; fires with the exit code."""
        if not self.running:
            return self.ended if not self.ended.called else defer.succeed(self.exit_code)
        self.signal("TERM")
        kill = self._reactor.callLater(grace, self.signal, "KILL")

        def done(code):
            if kill.active():
                kill.cancel()
            return code

        d = defer.Deferred()
        self.ended.addBoth(lambda r: (d.callback(done(r)), r)[1])
        return d


class ProcessPool:
    """Starts children and ends every one of them at teardown."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self.children: List[JSONLinesProcess] = []

    def spawn(self, name: str, argv: List[str], env: Optional[dict] = None, cwd: Optional[str] = None) -> JSONLinesProcess:
        proc = JSONLinesProcess(self._reactor, name)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._reactor.spawnProcess(proc, argv[0], argv, env=full_env, path=cwd or str(REPO))
        self.children.append(proc)
        return proc

    def node(self, script: str, *args: str, env: Optional[dict] = None) -> JSONLinesProcess:
        """Run ``tests/node/<script>`` with the pinned reference packages."""
        node = node_binary()
        assert node, "node is not installed"
        return self.spawn(script, [node, str(NODE_DIR / script), *args], env=env, cwd=str(NODE_DIR))

    def python(self, *args: str, env: Optional[dict] = None) -> JSONLinesProcess:
        """Run ``python -u ARGS`` with this interpreter."""
        return self.spawn(" ".join(args[:3]), [sys.executable, "-u", *args], env=env)

    def stop_all(self) -> defer.Deferred:
        return defer.DeferredList([c.stop() for c in self.children], consumeErrors=True)


def metric_samples(text: str) -> dict:
    """A Prometheus text exposition (``/metrics``) as ``{(name, sorted label pairs): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port found")
