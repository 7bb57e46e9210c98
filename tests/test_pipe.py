"""``hyperswarm pipe`` as real processes: netcat over a topic."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.harness import REPO, free_port

CLI = [sys.executable, "-m", "txhyperswarm.cli", "pipe"]
SIZE = 16 * 1024 * 1024


def start_pipe(topic, *args, stdin, stdout):
    return subprocess.Popen([*CLI, topic, *args], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                            cwd=str(REPO))


@defer.inlineCallbacks
def wait_all(reactor, procs, timeout):
    """Wait (keeping the reactor running) until every process has exited."""
    end = reactor.seconds() + timeout
    while any(p.poll() is None for p in procs):
        if reactor.seconds() > end:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            raise AssertionError("pipes did not exit in time: " + " | ".join(
                p.stderr.read().decode("utf-8", "replace") for p in procs))
        yield task.deferLater(reactor, 0.1, lambda: None)
    return [p.returncode for p in procs]


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@defer.inlineCallbacks
def exchange(reactor, tmp_path, topic, extra):
    """Two pipes on ``topic``: each sends its own 16 MiB file, gets the other's."""
    files = {}
    for name in ("a", "b"):
        data = os.urandom(SIZE)
        path = tmp_path / f"{name}.in"
        path.write_bytes(data)
        files[name] = path
    procs = []
    handles = []
    try:
        for name in ("a", "b"):
            fin = open(files[name], "rb")
            fout = open(tmp_path / f"{name}.out", "wb")
            handles += [fin, fout]
            procs.append(start_pipe(topic, *extra, stdin=fin, stdout=fout))
        codes = yield wait_all(reactor, procs, 120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for h in handles:
            h.close()
    errs = [p.stderr.read().decode("utf-8", "replace") for p in procs]
    assert codes == [0, 0], errs
    assert sha(tmp_path / "a.out") == sha(files["b"]), errs
    assert sha(tmp_path / "b.out") == sha(files["a"]), errs
    assert (tmp_path / "a.out").stat().st_size == SIZE
    return errs


@pytest_twisted.inlineCallbacks
def test_two_pipes_exchange_16_mib_both_ways_through_a_bootstrap_node(reactor, tmp_path, twist_bootstrap_node):
    _, port = twist_bootstrap_node
    errs = yield exchange(reactor, tmp_path, "pipe-test-dht",
                          ["--bootstrap", f"127.0.0.1:{port}", "--no-mdns", "--timeout", "60"])
    # one connection each: the pipes did not open (and keep) two
    for err in errs:
        assert err.count("connected to") == 1, err
        assert hashlib.sha256(b"pipe-test-dht").hexdigest() in err


@pytest_twisted.inlineCallbacks
def test_two_pipes_exchange_16_mib_both_ways_over_mdns(reactor, tmp_path, private_netns):
    errs = yield exchange(reactor, tmp_path, "pipe-test-mdns", ["--bootstrap", "none", "--timeout", "60"])
    for err in errs:
        assert err.count("connected to") == 1, err


def test_no_peer_within_timeout_exits_1(twist_bootstrap_node):
    _, port = twist_bootstrap_node
    result = subprocess.run([*CLI, "nobody-here", "--bootstrap", f"127.0.0.1:{port}", "--no-mdns",
                             "--timeout", "2"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=30, cwd=str(REPO))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "no peer connected within 2s" in result.stderr.splitlines()[-1]


def test_no_bootstrap_answer_and_no_mdns_exits_1():
    port = free_port()  # nobody there
    result = subprocess.run([*CLI, "nobody-here", "--bootstrap", f"127.0.0.1:{port}", "--no-mdns"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert result.returncode == 1, result.stderr
    assert "no DHT bootstrap node answered" in result.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        ([], "TOPIC"),
        ([""], "empty topic"),
        (["t", "--timeout", "0"], "timeout"),
        (["t", "--timeout", "x"], "timeout"),
        (["t", "--bootstrap", "127.0.0.1"], "HOST:PORT"),
        (["t", "--bootstrap", "none", "--no-mdns"], "no way to find a peer"),
        (["t", "--bootstrap", "none", "--bootstrap", "127.0.0.1:5"], "'none' excludes"),
        (["t", "--frobnicate"], "unrecognized"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says):
    result = subprocess.run([*CLI, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=30, cwd=str(REPO))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# -- the one-connection rule, on a clock (no sockets) -----------------------

class FakeSwarm:
    def __init__(self, port):
        self.port = port
        self.dials = []
        self.network = None

    def address(self):
        return ("0.0.0.0", self.port)

    def connect(self, peer):
        d = defer.Deferred()
        self.dials.append((peer, d))
        return d


def record(port, host="127.0.0.1"):
    from txhyperswarm.peer_record import PeerRecord

    return PeerRecord(b"\x01" * 32, host, port, False, ("127.0.0.1", 49737), None, "dht")


def job_on(port, announce=True, lookup=True):
    from twisted.internet.task import Clock

    from txhyperswarm.cli import PipeJob

    clock = Clock()
    swarm = FakeSwarm(port)
    return clock, swarm, PipeJob(clock, swarm, announce=announce, lookup=lookup)


def connection(job):
    from twisted.internet.testing import StringTransport

    from txhyperswarm.cli import _PeerSide

    protocol = _PeerSide(job)
    protocol.makeConnection(StringTransport())
    return protocol


def test_the_lower_port_dials_at_once():
    clock, swarm, job = job_on(5000)
    assert job.validate_peer(record(6000)) is False  # the swarm's queue never dials for the pipe
    assert [p.port for p, _ in swarm.dials] == [6000]


def test_the_higher_port_waits_for_the_peer_to_dial_first():
    from txhyperswarm.cli import DIAL_GRACE

    clock, swarm, job = job_on(7000)
    job.validate_peer(record(6000))
    assert swarm.dials == []
    first = connection(job)  # the lower port's dial arrived
    clock.advance(DIAL_GRACE + 1)
    assert swarm.dials == []  # so this side never dials
    assert job.peer is first and job.connected.fired


def test_the_higher_port_dials_after_the_grace_period_if_nobody_dialled():
    from txhyperswarm.cli import DIAL_GRACE

    clock, swarm, job = job_on(7000)
    job.validate_peer(record(6000))
    job.validate_peer(record(6000))  # reported again: one timer, one dial
    clock.advance(DIAL_GRACE)
    assert [p.port for p, _ in swarm.dials] == [6000]


def test_lookup_only_dials_at_once_whatever_the_ports():
    _, swarm, job = job_on(7000, announce=False)
    job.validate_peer(record(6000))
    assert len(swarm.dials) == 1


def test_later_connections_are_closed_and_dials_cancelled():
    clock, swarm, job = job_on(5000)
    job.validate_peer(record(6000))
    job.validate_peer(record(6001))
    (_, pending), = swarm.dials  # one dial at a time
    first = connection(job)
    assert pending.called  # cancelled
    second = connection(job)
    assert job.peer is first
    assert second.transport.disconnecting and not first.transport.disconnecting
    assert job.duplicates == 1
    job.validate_peer(record(6002))
    clock.advance(60)
    assert len(swarm.dials) == 1  # no dial once connected


def test_own_record_is_not_dialled():
    _, swarm, job = job_on(5000)
    job.validate_peer(record(5000))
    assert swarm.dials == []


# -- memory and drops ---------------------------------------------------------


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest_twisted.inlineCallbacks
def test_a_reader_that_pauses_does_not_grow_either_pipe(reactor, tmp_path, twist_bootstrap_node):
    # A sends 96 MiB; B's stdout is a pipe nobody reads for 4 s. With
    # stdin/stdout as producers and consumers, neither process buffers it.
    _, port = twist_bootstrap_node
    size = 96 * 1024 * 1024
    data = tmp_path / "big.in"
    with open(data, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
    extra = ["--bootstrap", f"127.0.0.1:{port}", "--no-mdns", "--timeout", "60"]
    with open(data, "rb") as fin:
        a = start_pipe("pipe-test-memory", *extra, "--announce", stdin=fin, stdout=subprocess.DEVNULL)
        b = start_pipe("pipe-test-memory", *extra, "--lookup", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    # the same command waiting for a peer that never comes: what a pipe weighs
    idle = start_pipe("pipe-test-memory-idle", *extra, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        peak = {a.pid: 0.0, b.pid: 0.0}
        for _ in range(50):  # 5 s, B's stdout unread
            yield task.deferLater(reactor, 0.1, lambda: None)
            for p in (a, b):
                if p.poll() is None:
                    peak[p.pid] = max(peak[p.pid], rss_mib(p.pid))
        assert a.poll() is None and b.poll() is None
        assert idle.poll() is None
        base = rss_mib(idle.pid)
        idle.kill()
        idle.wait()
        got = hashlib.sha256()
        total = 0
        os.set_blocking(b.stdout.fileno(), False)
        end = reactor.seconds() + 90
        while reactor.seconds() < end:
            chunk = b.stdout.read()
            if chunk:
                got.update(chunk)
                total += len(chunk)
            elif b.poll() is not None:
                break
            else:
                yield task.deferLater(reactor, 0.01, lambda: None)
        codes = yield wait_all(reactor, [a, b], 30)
    finally:
        for p in (a, b, idle):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert total == size and got.hexdigest() == sha(data)
    assert codes == [0, 0], [p.stderr.read() for p in (a, b)]
    for p in (a, b):
        assert peak[p.pid] - base < 32, (peak, base)


@pytest_twisted.inlineCallbacks
def test_a_peer_that_dies_makes_the_other_exit_1_once_it_sends(reactor, tmp_path, twist_bootstrap_node):
    _, port = twist_bootstrap_node
    extra = ["--bootstrap", f"127.0.0.1:{port}", "--no-mdns", "--timeout", "60"]
    a = start_pipe("pipe-test-drop", *extra, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    b = start_pipe("pipe-test-drop", *extra, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        # both connected: each has said so on stderr
        end = reactor.seconds() + 60
        seen = {a.pid: b"", b.pid: b""}
        for p in (a, b):
            os.set_blocking(p.stderr.fileno(), False)
        while not all(b"connected to" in v for v in seen.values()):
            assert reactor.seconds() < end, seen
            for p in (a, b):
                seen[p.pid] += p.stderr.read() or b""
            yield task.deferLater(reactor, 0.05, lambda: None)
        b.kill()
        b.wait()
        # B's kernel ended B's side with a FIN (a clean end: A keeps its
        # stdin open, as netcat); what A sends next is answered with a reset
        # (found at A's next write after it)
        for _ in range(3):
            try:
                a.stdin.write(b"x" * 65536)
                a.stdin.flush()
            except BrokenPipeError:  # A has exited
                break
            yield task.deferLater(reactor, 0.5, lambda: None)
        try:
            (code,) = yield wait_all(reactor, [a], 60)
        except AssertionError as e:
            raise AssertionError(f"{e} {seen}") from None
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    err = seen[a.pid] + (a.stderr.read() or b"")
    assert code == 1, err
    assert b"the connection dropped" in err, err
