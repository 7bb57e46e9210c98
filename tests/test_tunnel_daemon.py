"""
``twist hyperswarm --expose`` / ``--listen`` as real processes on loopback,
with a local ``--bootstrap-node``: a twisted.web page reached by topic.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web import resource, server

from tests.harness import free_port, metric_samples

PAGE = b"hello through the tunnel\n"
TOPIC_TEXT = "txhyperswarm tunnel test"
TOPIC = hashlib.sha256(TOPIC_TEXT.encode()).hexdigest()


class Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return PAGE


def twist(processes, name, *args):
    return processes.spawn(
        name, [sys.executable, "-m", "twisted", "--log-format", "text", "hyperswarm", *args]
    )


def has(text):
    return lambda o: text in o.get("_text", "")


@pytest.fixture
def web(reactor):
    port = reactor.listenTCP(0, server.Site(Page()), interface="127.0.0.1")
    yield port.getHost().port
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest_twisted.inlineCallbacks
def start_pair(processes, boot_port, web_port, *extra_expose, status=True):
    status_e, status_l, listen_port = free_port(), free_port(), free_port()
    common = ["--topic", TOPIC_TEXT, "--bootstrap", f"127.0.0.1:{boot_port}", "--host", "127.0.0.1", "--no-mdns"]
    expose = twist(processes, "expose", *common, "--expose", f"tcp:host=127.0.0.1:port={web_port}",
                   "--status-http", f"tcp:port={status_e}:interface=127.0.0.1", *extra_expose)
    yield expose.wait_for(has("first announce done"), timeout=30)
    listen = twist(processes, "listen", *common, "--listen", f"tcp:port={listen_port}:interface=127.0.0.1",
                   "--status-http", f"tcp:port={status_l}:interface=127.0.0.1")
    yield listen.wait_for(has("accepting local connections"), timeout=30)
    yield listen.wait_for(has("peer found"), timeout=30)
    return expose, listen, listen_port, status_e, status_l


@pytest_twisted.inlineCallbacks
def test_a_page_through_the_tunnel_status_and_metrics(processes, twist_bootstrap_node, web, reactor):
    _, boot_port = twist_bootstrap_node
    expose, listen, listen_port, status_e, status_l = yield start_pair(processes, boot_port, web)
    assert any(TOPIC in o.get("_text", "") for o in expose.lines)  # the hex topic is logged

    response = yield treq.get(f"http://127.0.0.1:{listen_port}/")
    assert response.code == 200 and (yield response.content()) == PAGE

    # 50 concurrent requests, each a tunnel (a swarm connection) of its own
    gets = [treq.get(f"http://127.0.0.1:{listen_port}/", persistent=False) for _ in range(50)]
    responses = yield defer.gatherResults(gets)
    bodies = yield defer.gatherResults([r.content() for r in responses])
    assert all(r.code == 200 for r in responses) and all(b == PAGE for b in bodies)

    # live state: one open tunnel, the figures move with it
    end = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listen_port), Protocol())
    yield listen.wait_for(lambda o: o.get("_text", "").count("tunnel opened") and len(
        [x for x in listen.lines if "tunnel opened" in x.get("_text", "")]) >= 52, timeout=20)
    yield task.deferLater(reactor, 0.5, lambda: None)
    before = metric_samples((yield (yield treq.get(f"http://127.0.0.1:{status_l}/metrics")).text()))
    status = yield (yield treq.get(f"http://127.0.0.1:{status_l}/status")).json()
    assert [t["topic"] for t in status["topics"]] == [TOPIC]
    assert status["topics"][0]["lookup"] is True and status["topics"][0]["peers"] == 1
    assert len(status["connections"]) == before[("hyperswarm_connections", ())] >= 1
    conn = status["connections"][-1]
    assert conn["client"] is True and conn["type"] in ("tcp", "utp") and TOPIC in conn["topics"]
    assert before[("hyperswarm_peers_discovered_total", ())] == 1
    # A request whose body the web server reads whole before it answers, so
    # every byte crosses the tunnel whatever the transport (over uTP the
    # window paces it: poll, bounded).
    body = b"x" * 100_000
    payload = b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    end.transport.write(payload)

    def sent(samples):
        return sum(v for (name, labels), v in samples.items()
                   if name == "hyperswarm_bytes_total" and dict(labels)["transport"] in ("tcp", "utp")
                   and dict(labels)["direction"] == "out")

    for _ in range(40):
        yield task.deferLater(reactor, 0.25, lambda: None)
        after = metric_samples((yield (yield treq.get(f"http://127.0.0.1:{status_l}/metrics")).text()))
        if sent(after) - sent(before) >= len(payload):
            break
    assert sent(after) - sent(before) >= len(payload)
    e_status = yield (yield treq.get(f"http://127.0.0.1:{status_e}/status")).json()
    assert e_status["topics"] == [{"topic": TOPIC, "announce": True, "lookup": False, "peers": 0}]
    assert all(c["client"] is False for c in e_status["connections"])

    # SIGTERM with a tunnel open: exit 0 in under 5 s, the tunnel closed
    class Idle(Protocol):
        def connectionLost(self, reason):
            lost.callback(None)

    lost = defer.Deferred()
    opened = len([x for x in listen.lines if "tunnel opened" in x.get("_text", "")])
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listen_port), Idle())
    yield listen.wait_for(lambda o: len([x for x in listen.lines if "tunnel opened" in x.get("_text", "")]) > opened,
                          timeout=20)
    for p in (listen, expose):
        t0 = time.monotonic()
        code = yield p.stop(grace=5.0)
        assert code == 0 and time.monotonic() - t0 < 5.0, p.stderr.decode()[-2000:]
    assert "Traceback" not in expose.stderr.decode() + listen.stderr.decode()
    yield lost  # the local connection of the open tunnel was closed
    closed = [o["_text"] for o in listen.lines if "tunnel closed" in o.get("_text", "")]
    assert closed and "bytes in" in closed[0] and "bytes out" in closed[0]


class Sink(Protocol):
    """A service that hashes what it gets and stops reading for 5 s at first."""

    def __init__(self, reactor, done):
        self.reactor = reactor
        self.sha = hashlib.sha256()
        self.n = 0
        self.done = done
        self.paused_once = False

    def dataReceived(self, data):
        self.sha.update(data)
        self.n += len(data)
        if not self.paused_once:
            self.paused_once = True
            self.transport.pauseProducing()
            self.reactor.callLater(5.0, self.transport.resumeProducing)

    def connectionLost(self, reason):
        # only the connection that carried the upload reports (an empty one, e.g. a losing dial, does not)
        if self.n and not self.done.called:
            self.done.callback((self.n, self.sha.hexdigest()))


class Upload(Protocol):
    """Writes ``total`` pseudo-random bytes as a streaming producer."""

    def __init__(self, total):
        self.total = total
        self.sent = 0
        self.sha = hashlib.sha256()
        self.paused = False
        self.block = os.urandom(1 << 16)

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.total:
            chunk = self.block[: min(len(self.block), self.total - self.sent)]
            chunk = self.sent.to_bytes(8, "big") + chunk[8:]
            self.sha.update(chunk)
            self.sent += len(chunk)
            self.transport.write(chunk)
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self):
        self.paused = True


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest_twisted.inlineCallbacks
def test_a_256_mib_upload_with_a_pausing_reader_keeps_memory_bounded(processes, twist_bootstrap_node, reactor):
    from twisted.internet.protocol import Factory

    _, boot_port = twist_bootstrap_node
    done = defer.Deferred()
    f = Factory()
    f.buildProtocol = lambda addr: Sink(reactor, done)
    port = reactor.listenTCP(0, f, interface="127.0.0.1")
    try:
        expose, listen, listen_port, _, _ = yield start_pair(processes, boot_port, port.getHost().port)
        pids = [expose.transport.pid, listen.transport.pid]
        base = [rss(p) for p in pids]
        peak = list(base)

        def sample():
            for i, p in enumerate(pids):
                peak[i] = max(peak[i], rss(p))

        sampler = task.LoopingCall(sample)
        sampler.start(0.1)
        upload = Upload(256 * 1024 * 1024)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listen_port), upload)
        n, digest = yield done
        sampler.stop()
        assert n == upload.total and digest == upload.sha.hexdigest()
        growth = [p - b for p, b in zip(peak, base)]
        assert max(growth) < 64 * 1024 * 1024, growth
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_allow_refuses_a_peer_outside_and_says_so(processes, twist_bootstrap_node, web, reactor):
    _, boot_port = twist_bootstrap_node
    expose, listen, listen_port, _, _ = yield start_pair(processes, boot_port, web, "--allow", "10.0.0.0/8")
    d = treq.get(f"http://127.0.0.1:{listen_port}/")
    line = yield expose.wait_for(has("refused inbound connection 127.0.0.1:"), timeout=30)
    assert "10.0.0.0/8" in line["_text"]
    try:
        response = yield d
        body = yield response.content()
        assert body != PAGE
    except Exception:
        pass  # the local connection is closed without an answer


@pytest_twisted.inlineCallbacks
def test_state_dir_keeps_the_node_id(processes, twist_bootstrap_node, tmp_path):
    _, boot_port = twist_bootstrap_node
    ids = []
    for i in range(2):
        status = free_port()
        p = twist(processes, f"expose{i}", "--topic", TOPIC_TEXT, "--bootstrap", f"127.0.0.1:{boot_port}",
                  "--host", "127.0.0.1", "--no-mdns", "--expose", "tcp:host=127.0.0.1:port=9",
                  "--state-dir", str(tmp_path), "--status-http", f"tcp:port={status}:interface=127.0.0.1")
        yield p.wait_for(has("listening on"), timeout=30)
        ids.append((yield (yield treq.get(f"http://127.0.0.1:{status}/status")).json())["node"]["id"])
        assert (yield p.stop(grace=5.0)) == 0
    assert ids[0] and ids[0] == ids[1]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--topic", "x", "--expose", "tcp:host=127.0.0.1:port=notaport"], "endpoint"),
        (["--topic", "x", "--listen", "nonsense:endpoint"], "endpoint"),
        (["--topic", "x", "--listen", "tcp:port=8080", "--bootstrap", "localhost"], "--bootstrap"),
        (["--topic", "x", "--listen", "tcp:port=8080", "--allow", "10.0.0.0/99"], "--allow"),
        (["--topic", "x", "--listen", "tcp:port=8080", "--max-peers", "0"], "--max-peers"),
        (["--topic", "x", "--listen", "tcp:port=8080", "--frobnicate"], "frobnicate"),
        (["--expose", "tcp:host=127.0.0.1:port=80"], "--expose needs at least one --topic"),
        (["--listen", "tcp:port=8080"], "--listen needs at least one --topic"),
        (["--topic", "x"], "--expose ENDPOINT or --listen ENDPOINT"),
    ],
)
def test_bad_input(args, says):
    import subprocess

    result = subprocess.run([sys.executable, "-m", "twisted", "hyperswarm", *args], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_help_has_an_example_per_option():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "twisted", "hyperswarm", "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in ("--bootstrap-node", "--no-mdns", "--ephemeral", "--persistent", "--host", "--port",
                   "--expose", "--listen", "--max-peers", "--status-http", "--state-dir", "--bootstrap",
                   "--topic", "--allow"):
        assert f"Example: {option}" in text, option


def test_a_listen_port_in_use_is_one_line_and_exit_1():
    import socket
    import subprocess

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "twisted", "hyperswarm", "--topic", "x", "--bootstrap", "none", "--no-mdns",
             "--host", "127.0.0.1", "--listen", f"tcp:port={port}:interface=127.0.0.1"],
            capture_output=True, text=True, timeout=30,
        )
    finally:
        taken.close()
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0]
