"""
Shared fixtures.

The whole suite runs inside a private network namespace: ``tests/run.sh``
starts pytest under ``unshare -rn`` with ``lo`` up, multicast on and
224.0.0.0/4 routed to ``lo``. Started some other way, pytest makes that
namespace itself at start-up (before any socket exists); where it cannot,
the tests that need one (multicast, Node hyperswarm peers) skip and say why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import subprocess
from pathlib import Path

import sys

import pytest
import pytest_twisted
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.harness import NODE_MODULES, ProcessPool, free_port, node_binary

_NETNS_STATE = {"private": False, "why": ""}


def _interfaces():
    # if_nameindex asks the kernel about this process's namespace (sysfs
    # shows the namespace it was mounted in).
    return sorted(name for _, name in socket.if_nameindex())


def _setup_lo() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up", "multicast", "on"], check=True)
    subprocess.run(["ip", "route", "replace", "224.0.0.0/4", "dev", "lo"], check=True)


def _enter_private_netns() -> str:
    """Return '' when this process is in a namespace with only ``lo``; else why not."""
    if _interfaces() == ["lo"]:
        try:
            _setup_lo()
        except (OSError, subprocess.CalledProcessError) as e:
            return f"cannot configure lo in the namespace: {e}"
        return ""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNET) != 0:
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            return f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
        try:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
            Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        except OSError as e:
            return f"cannot map ids in the user namespace: {e}"
    if _interfaces() != ["lo"]:
        return "a new network namespace still shows other interfaces"
    try:
        _setup_lo()
    except (OSError, subprocess.CalledProcessError) as e:
        return f"cannot configure lo in the new namespace: {e}"
    return ""


def pytest_configure(config):
    # Until someone begins logging, Twisted's global publisher buffers the
    # last 65,536 events and what they reference (connections, protocols):
    # memory that memory tests (the soak) would count as growth. Begin
    # logging to nothing: the logged_errors fixture observes the publisher
    # itself and goes on working.
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    why = _enter_private_netns()
    _NETNS_STATE["private"] = not why
    _NETNS_STATE["why"] = why


def pytest_report_header(config):
    if _NETNS_STATE["private"]:
        return "network: private namespace (lo only, multicast routed on lo)"
    return f"network: NOT private ({_NETNS_STATE['why']}); multicast and Node hyperswarm tests skip"


@pytest.fixture
def private_netns():
    """Skip unless the suite runs in a private network namespace."""
    if not _NETNS_STATE["private"]:
        pytest.skip(f"needs a private network namespace: {_NETNS_STATE['why']}")


@pytest.fixture
def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest.fixture
def node():
    """The ``node`` binary with the pinned reference installed, or a skip."""
    path = node_binary()
    if path is None:
        pytest.skip("node is not installed: the interop tests need Node >= 18")
    if not (NODE_MODULES / "hyperswarm").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm ci --prefix tests/node` (tests/run.sh does)")
    return path


@pytest.fixture
def processes(reactor):
    """A :class:`ProcessPool`; every child is ended at teardown."""
    pool = ProcessPool(reactor)
    yield pool
    pytest_twisted.blockon(pool.stop_all())


@pytest.fixture
def twist_bootstrap_node(processes):
    """
    A real ``twist hyperswarm --bootstrap-node`` process on 127.0.0.1, up and
    listening; yields ``(process, port)``.
    """
    port = free_port()
    boot = processes.spawn(
        "twist",
        [sys.executable, "-m", "twisted", "--log-format", "text", "hyperswarm",
         "--bootstrap-node", "--host", "127.0.0.1", "--port", str(port)],
    )
    pytest_twisted.blockon(boot.wait_for(lambda o: "listening" in o.get("_text", ""), timeout=20))
    return boot, port


class LoggedErrors:
    """
    Every error logged while a test runs: a ``log.failure`` (an exception
    caught and logged inside a connection, a handler, a queue or a
    receiver, including the counters of internal errors, which are always
    logged so), ``log.error``, ``log.critical``, or an unhandled error in a
    Deferred.

    The autouse fixture fails a test that leaves any behind; a test that
    provokes errors on purpose claims them with :meth:`take`.
    """

    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event: dict) -> None:
        if (
            event.get("log_failure") is not None
            or event.get("isError")
            or event.get("log_level") in (LogLevel.error, LogLevel.critical)
        ):
            self.events.append(event)

    def take(self, *types) -> list:
        """
        Remove and return the logged failures whose exception is one of
        ``types``; with no types, every logged error (a failure as its
        Failure, an error line without one as its event).
        """
        taken, kept = [], []
        for event in self.events:
            failure = event.get("log_failure")
            if not types:
                taken.append(failure if failure is not None else event)
            elif failure is not None and failure.check(*types):
                taken.append(failure)
            else:
                kept.append(event)
        self.events = kept
        return taken

    def describe(self) -> str:
        lines = []
        for event in self.events:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            lines.append(text)
        return "\n---\n".join(lines)


@pytest.fixture(autouse=True)
def logged_errors():
    """Fail the test if an error was logged and not claimed (:class:`LoggedErrors`)."""
    errors = LoggedErrors()
    globalLogPublisher.addObserver(errors)
    try:
        yield errors
    finally:
        globalLogPublisher.removeObserver(errors)
    if errors.events:
        pytest.fail(f"{len(errors.events)} error(s) were logged and swallowed during the test:\n{errors.describe()}",
                    pytrace=False)
