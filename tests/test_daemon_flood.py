"""
Floods at a running ``twist hyperswarm`` (issue 12, "Floods"): the fast form
of ``bench/daemon_flood.py``, whose flooder child it uses.

The daemon is a real process, persistent, serving a topic (``--expose``) on
one port of 127.0.0.1: a DHT node that stores peer records, a uTP socket, a
TCP listener, mDNS, and ``--status-http``. A flooder process sends, as fast
as it can, from 1,000 UDP sockets on 1,000 addresses spread over
127.0.0.0/8: 100,000 random datagrams, then 100,000 well-formed hostile
ones (``peers`` announces with forged tokens; valid announces, each source
having fetched its token with a ``_ping``, 48 sources announcing 1,000
records each and 952 more one hot topic; uTP SYNs), each kind a burst of
its own. Ten legitimate clients (txhyperswarm DHT nodes on 127.0.2.1-10,
retrying as every dht-rpc client does: 3 transmissions, 1.5 s apart) take
turns to ping the daemon each time the flooder has sent another 4,000
datagrams: 50 pings spread over the flood (each client's a few a second, a
normal rate), none lost.

The flood comes at about 300,000 datagrams a second: the RPC layer's
overload shedding (``dropped["overload"]``: once 10,000 came in a second, a
source that sent 20 that second is dropped undecoded) and the kernel (the
socket's receive buffer full) shed most of it, valid announces included;
what is read is refused or answered, every datagram accounted for. Then,
once the flood is over, the same 1,000 sources send forged and valid
announces at a rate the node accepts (paced, 12 a source): every forged one
is refused as ``bad_token``, every valid one is answered and stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import defer, protocol, task

from bench import daemon_flood as flood
from tests.harness import free_port, metric_samples as samples

REPO = Path(__file__).resolve().parent.parent
#: datagrams per flood command: 100,000 random, then 100,000 hostile
FLOODS = (
    {"kind": "random", "count": 100_000},
    {"kind": "forged", "count": 16_000},
    {"kind": "announce", "count": 68_000,
     "plan": {"cold_sources": 48, "per_source": 1000, "topics": 4999, "hot": 20_000}},
    {"kind": "syn", "count": 16_000},
)
PING_EVERY = 4000  # 200,000 / 4,000 = 50 pings during the flood
#: after the flood, paced (the node's receive queue drained every 100): 2 forged
#: and 10 valid announces a source, under OVERLOAD_LIMIT_PER_IP (20) so none is shed
PACED = (
    {"kind": "forged", "count": 2_000, "seed": 2},
    {"kind": "announce", "count": 10_000,
     "plan": {"cold_sources": 1000, "per_source": 10, "topics": 4999, "hot": 0}},
)
BAD_LINES = ("Traceback", "Unhandled", "#critical", "#error")
CAPS = {"records": 65536, "records_largest_topic": 4096, "records_largest_address": 256}


def rss_mib(pid: int) -> float:
    return flood.rss_mib(pid)


def total(s: dict, name: str, **want) -> float:
    return sum(v for (n, labels), v in s.items()
               if n == name and all(dict(labels).get(k) == w for k, w in want.items()))


def dropped(s: dict, reason: str) -> float:
    return total(s, "hyperswarm_dropped_datagrams_total", reason=reason)


def peers_in(s: dict) -> float:
    return total(s, "hyperswarm_dht_rpc_requests_total", command="peers", direction="in")


def records(s: dict) -> dict:
    return {k: s[(f"hyperswarm_dht_{k}", ())] for k in CAPS}


@defer.inlineCallbacks
def drained(reactor, port: int):
    """Until the daemon has read every datagram queued at its socket (at most 10 s)."""
    for _ in range(200):
        if not flood.udp_socket_figures(port)["rx_queue"]:
            return
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("the daemon's UDP receive queue did not drain in 10 s")


#: Legitimate clients taking turns to ping (127.0.2.1-10).
CLIENTS = 10


@pytest_twisted.inlineCallbacks
def test_floods_at_a_running_daemon(private_netns, processes, reactor):
    from txhyperswarm.dht.node import DHTNode

    port, status = free_port(), free_port()
    daemon = processes.spawn("daemon", flood.twist_argv(port, status))
    yield daemon.wait_for(lambda o: "swarm listening" in o.get("_text", ""), timeout=30)
    pid = daemon.transport.pid
    base = f"http://127.0.0.1:{status}"
    yield (yield treq.get(f"{base}/metrics")).text()  # the first scrape loads what /metrics needs

    @defer.inlineCallbacks
    def snapshot():
        """The daemon's /metrics once it has read all that was sent, with its socket's kernel drops."""
        yield drained(reactor, port)
        s = samples((yield (yield treq.get(f"{base}/metrics")).text()))
        s[("kernel_drops", ())] = flood.udp_socket_figures(port)["drops"]
        return s

    clients = [DHTNode(reactor, bootstrap=[], ephemeral=True, host=f"127.0.2.{1 + i}", port=0)
               for i in range(CLIENTS)]
    for one in clients:
        one.startService()
    client = clients[0]
    try:
        reply = yield client.ping("127.0.0.1", port)
        assert reply.node == ("127.0.0.1", port)
        yield task.deferLater(reactor, 0.5, lambda: None)
        rss0 = rss_mib(pid)

        flooder = processes.python(str(REPO / "bench" / "daemon_flood.py"), "--child", "flooder",
                                   json.dumps({"port": port}))
        yield flooder.wait_for(lambda o: o.get("event") == "ready", timeout=30)
        flooder.send({"cmd": "tokens"})
        tokens = yield flooder.wait_for(lambda o: o.get("event") == "tokens", timeout=30)
        assert tokens["got"] == flood.SOURCES

        pings: list = []  # (Deferred, sent at)

        def ping_once() -> None:
            t0 = time.monotonic()
            d = clients[len(pings) % CLIENTS].ping("127.0.0.1", port)
            d.addCallback(lambda _: time.monotonic() - t0)
            pings.append(d)

        def watch(until_kind):
            """A wait_for predicate: a ping at every progress line, true at ``until_kind``'s end."""
            def predicate(o):
                if o.get("_seen"):
                    return False
                o["_seen"] = True
                if o.get("event") == "progress":
                    ping_once()
                return o.get("event") == "flooded" and o.get("kind") == until_kind
            return predicate

        @defer.inlineCallbacks
        def send(f, progress=PING_EVERY):
            """One burst (or paced run); the daemon's figures before and after it."""
            before = yield snapshot()
            flooder.send({"cmd": "flood", "progress": progress, "drain": True, **f})
            done = yield flooder.wait_for(watch(f["kind"]), timeout=120)
            after = yield snapshot()
            delta = lambda get: get(after) - get(before)  # noqa: E731
            return done, before, after, delta

        sent, phases = {}, {}
        for f in FLOODS:
            done, before, after, delta = yield send(f)
            sent[f["kind"]], phases[f["kind"]] = done, (before, after, delta)
        announce_end = time.monotonic()
        assert sum(d["sent"] for d in sent.values()) == 200_000
        rates = {k: round(d["sent"] / d["seconds"]) for k, d in sent.items()}

        results = yield defer.DeferredList(pings, consumeErrors=True)
        lost = [r for ok, r in results if not ok]
        latencies = [r for ok, r in results if ok]
        assert len(pings) == 50
        assert not lost, (f"{len(lost)} of 50 pings lost (3 transmissions each): "
                          f"{[f.getErrorMessage() for f in lost][:3]}; flood rates {rates}")

        yield drained(reactor, port)
        yield task.deferLater(reactor, 1.0, lambda: None)
        rss1 = rss_mib(pid)
        assert rss1 - rss0 < 50, f"RSS {rss0:.1f} -> {rss1:.1f} MiB"

        # still serving: a ping, /status
        reply = yield client.ping("127.0.0.1", port)
        assert reply.node == ("127.0.0.1", port)
        response = yield treq.get(f"{base}/status")
        assert response.code == 200
        state = yield response.json()
        assert [t["topic"] for t in state["topics"]] == [hashlib.sha256(b"daemon flood").hexdigest()]

        # what the RPC layer does with a datagram it is given: shed it undecoded
        # (per IP, overload), or refuse it (decoding, token), or answer it
        shed = lambda s: dropped(s, "overload") + dropped(s, "rate_ip")  # noqa: E731
        kernel = lambda s: s[("kernel_drops", ())]  # noqa: E731

        def accounted(n, f):
            """``n`` (refused, shed or answered) is the burst's count, plus at most the clients'
            pings sent meanwhile (3 transmissions each)."""
            return f["count"] <= n <= f["count"] + 3 * (f["count"] // PING_EVERY)

        # random bytes: refused, the first 10,000 a second undecoded
        _, after, delta = phases["random"]
        assert delta(lambda s: dropped(s, "protobuf")) > 5_000
        assert delta(peers_in) == 0 and records(after)["records"] == 0
        # forged tokens: each refused (bad token) or shed, nothing stored
        _, after, delta = phases["forged"]
        forged_refused = delta(lambda s: dropped(s, "bad_token"))
        assert accounted(forged_refused + delta(shed) + delta(kernel), FLOODS[1])
        assert delta(peers_in) == 0 and records(after)["records"] == 0
        # valid announces at 300,000 a second: answered, or shed (by the node or
        # the kernel), never refused as forged; what is stored within the caps
        _, after, delta = phases["announce"]
        flood_answered, flood_shed = delta(peers_in), delta(shed) + delta(kernel)
        assert accounted(flood_answered + flood_shed, FLOODS[2])
        assert delta(lambda s: dropped(s, "bad_token")) == 0
        assert all(records(after)[k] <= cap for k, cap in CAPS.items()), records(after)
        # uTP SYNs: refused (the swarm's --max-peers, the half-open limits), counted
        _, after, delta = phases["syn"]
        syn_refused = delta(lambda s: sum(v for (n, labels), v in s.items() if n == "hyperswarm_dropped_datagrams_total"
                                          and dict(labels)["reason"].startswith(("syn_", "half_open"))))
        assert syn_refused > 1_000

        # at a rate the node accepts (the sources' second of flood is over:
        # OVERLOAD_LIMIT_PER_IP counts afresh), forged tokens are all refused...
        yield task.deferLater(reactor, max(0.0, 1.1 - (time.monotonic() - announce_end)), lambda: None)
        done, before, after, delta = yield send({**PACED[0], "paced": True}, progress=0)
        assert done["sent"] == PACED[0]["count"]
        assert delta(lambda s: dropped(s, "bad_token")) == PACED[0]["count"]
        assert delta(shed) == 0 and delta(kernel) == 0 and delta(peers_in) == 0
        assert records(after) == records(before)
        # ... and valid announces all answered and stored
        done, before, after, delta = yield send({**PACED[1], "paced": True}, progress=0)
        assert done["sent"] == PACED[1]["count"]
        assert delta(peers_in) == PACED[1]["count"]
        assert delta(shed) == 0 and delta(kernel) == 0 and delta(lambda s: dropped(s, "bad_token")) == 0
        held = records(after)
        # each a record of its own (the 48 sources that announced 1,000 in the flood may be at 256)
        assert held["records"] >= min(CAPS["records"], records(before)["records"] + PACED[1]["count"] - 48 * 10)
        assert all(0 < held[k] <= cap for k, cap in CAPS.items()), held

        dropped_any = lambda reason: dropped(after, reason)  # noqa: E731
        assert dropped_any("receiver_error") == 0 and dropped_any("error") == 0
        assert dropped_any("handler_error") == 0 and dropped_any("connection_error") == 0
        print(f"\nflood rates (datagrams/s sent): {rates}; ping max {max(latencies) * 1000:.1f} ms; "
              f"{sum(1 for x in latencies if x > 1.0)} pings answered only after a retry; "
              f"RSS {rss0:.1f} -> {rss1:.1f} MiB; forged flood: {forged_refused:.0f} bad_token, the rest shed; "
              f"valid announce flood: {flood_answered:.0f} answered, {flood_shed:.0f} shed; "
              f"SYNs refused {syn_refused:.0f}; paced: {PACED[0]['count']} forged refused, "
              f"{PACED[1]['count']} announces answered; records {held}")
    finally:
        for one in clients:
            yield one.stopService()

    code = yield daemon.stop(grace=5.0)
    assert code == 0
    text = daemon.raw_stdout.decode("utf-8", "replace") + daemon.stderr.decode("utf-8", "replace")
    bad = [line for line in text.splitlines() if any(b in line for b in BAD_LINES)]
    assert not bad, bad[:5]


def test_records_held_in_stats_and_metrics():
    """``RecordStore.stats()`` and the gauges ``/metrics`` makes of it."""
    from prometheus_client import CollectorRegistry, generate_latest
    from twisted.internet.task import Clock

    from txhyperswarm.dht.records import RecordStore
    from txhyperswarm.web import NodeMetrics

    clock = Clock()
    store = RecordStore(clock, max_per_topic=3, max_per_ip=2)
    topic_a, topic_b = b"a" * 32, b"b" * 32
    for i, ip in enumerate(["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"]):
        store.announce(topic_a, bytes([10, 0, 0, 1 + i, 0, i + 1]), ip)
    clock.advance(store.rotate_interval)  # the first ones go stale: still held, still counted
    store.announce(topic_b, b"\x0a\x00\x00\x02\x00\x09", "10.0.0.2")
    assert store.stats() == {"records": 4, "largest_topic": 3, "largest_address": 2,
                             "refused": {"ip-cap": 1, "topic-cap": 1, "evicted": 0}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetrics(records=store))
    s = samples(generate_latest(registry).decode())
    assert s[("hyperswarm_dht_records", ())] == 4
    assert s[("hyperswarm_dht_records_largest_topic", ())] == 3
    assert s[("hyperswarm_dht_records_largest_address", ())] == 2
    assert s[("hyperswarm_dht_records_refused_total", (("reason", "ip-cap"),))] == 1
    assert s[("hyperswarm_dht_records_refused_total", (("reason", "topic-cap"),))] == 1


# -- a SYN flood does not keep real peers out -------------------------------------------------

SYNS = 2000  # from 200 addresses of 127.0.0.0/8, 10 each: about 8 ms of sending
PEER_WAIT = 8.0  # seconds a real peer may take to get in and hear its bytes back


class _Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _EchoFactory(protocol.Factory):
    """The --expose'd service: echoes; counts the connections it was given."""

    protocol = _Echo

    def __init__(self):
        self.accepted = 0

    def buildProtocol(self, addr):
        self.accepted += 1
        return protocol.Factory.buildProtocol(self, addr)


class _Caller(protocol.Protocol):
    """Writes ``hello`` once connected; ``heard`` fires with what came back once it all did."""

    def __init__(self, hello: bytes):
        self.hello = hello
        self.data = b""
        self.heard = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.hello)

    def dataReceived(self, data):
        self.data += data
        if self.data == self.hello and not self.heard.called:
            self.heard.callback(self.data)

    def connectionLost(self, reason):
        if not self.heard.called:
            self.heard.errback(reason)

    @defer.inlineCallbacks
    def hear_then_close(self, reactor, within: float):
        """Waits for ``heard`` (the connection aborted after ``within`` s), then closes."""
        timer = reactor.callLater(within, self.transport.abortConnection)
        try:
            yield self.heard
        finally:
            if timer.active():
                timer.cancel()
        self.transport.loseConnection()


def syn_flood(port: int, count: int = SYNS) -> float:
    """``count`` uTP SYNs from spoofed-looking sources over 127.0.0.0/8; returns the seconds it took."""
    import socket

    from txhyperswarm.utp.packet import HEADER

    socks = []
    t0 = time.monotonic()
    try:
        for i in range(count // 10):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.{10 + i // 250}.{i % 250}.1", 0))
            socks.append(s)
        for cid in range(10):
            for s in socks:
                s.sendto(HEADER.pack(0x41, 0, cid * 2, 1, 0, 1048576, 1, 0), ("127.0.0.1", port))
        return time.monotonic() - t0
    finally:
        for s in socks:
            s.close()


@defer.inlineCallbacks
def tcp_call(reactor, port: int, hello: bytes):
    """A real TCP peer, redialling every 0.25 s until it hears its bytes back: (seconds, attempts)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    t0 = time.monotonic()
    attempts = 0
    while time.monotonic() - t0 < PEER_WAIT:
        attempts += 1
        caller = _Caller(hello)
        try:
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), caller)
            yield caller.hear_then_close(reactor, 2.0)
            return time.monotonic() - t0, attempts
        except Exception:
            yield task.deferLater(reactor, 0.25, lambda: None)
    raise AssertionError(f"a real TCP peer was kept out for {PEER_WAIT} s ({attempts} attempts)")


@defer.inlineCallbacks
def utp_call(reactor, port: int, hello: bytes):
    """A real uTP peer on 127.0.0.3 (its SYN retransmitted at libutp's times): seconds to hear its bytes back."""
    from tests.utp.streams import OneFactory
    from txhyperswarm.utp import UTPSocket

    sock = UTPSocket(reactor, host="127.0.0.3")
    t0 = time.monotonic()
    try:
        caller = _Caller(hello)
        yield sock.connect("127.0.0.1", port, OneFactory(caller), timeout=PEER_WAIT)
        yield caller.hear_then_close(reactor, PEER_WAIT)
        return time.monotonic() - t0
    finally:
        yield sock.close()


@pytest_twisted.inlineCallbacks
def test_a_syn_flood_does_not_keep_real_peers_out(private_netns, processes, reactor):
    echo = _EchoFactory()
    service = reactor.listenTCP(0, echo, interface="127.0.0.1")
    port, status = free_port(), free_port()
    argv = flood.twist_argv(port, status, topic="syn flood")
    argv[argv.index("--expose") + 1] = f"tcp:host=127.0.0.1:port={service.getHost().port}"
    daemon = processes.spawn("daemon", argv)
    try:
        yield daemon.wait_for(lambda o: "swarm listening" in o.get("_text", ""), timeout=30)
        base = f"http://127.0.0.1:{status}"
        yield (yield treq.get(f"{base}/metrics")).text()

        seconds = syn_flood(port)
        # at once: a real TCP peer and a real uTP peer, through the tunnel to the service and back
        (tcp_seconds, attempts), utp_seconds = yield defer.gatherResults(
            [tcp_call(reactor, port, b"hello over tcp"), utp_call(reactor, port, b"hello over utp")],
            consumeErrors=True)
        after = samples((yield (yield treq.get(f"{base}/metrics")).text()))
        at_limit = lambda outcome: total(after, "hyperswarm_inbound_at_limit_total", outcome=outcome)  # noqa: E731
        # the flood filled --max-peers (256) with half-open connections, and the peers still got in
        assert at_limit("evicted_half_open") >= 2 and at_limit("refused") > 0
        assert after[("hyperswarm_utp_half_open", ())] > 200
        assert after[("hyperswarm_connections", ())] <= 256
        # the half-open ones opened no connection to the service: only the two peers did
        assert echo.accepted == 2
        assert total(after, "hyperswarm_dropped_datagrams_total", reason="handler_error") == 0
        assert total(after, "hyperswarm_dropped_datagrams_total", reason="connection_error") == 0
        print(f"\n{SYNS} SYNs sent in {seconds * 1000:.0f} ms; then a TCP peer heard back in "
              f"{tcp_seconds:.2f} s ({attempts} attempt(s)), a uTP peer in {utp_seconds:.2f} s; "
              f"at the limit: {at_limit('evicted_half_open'):.0f} evicted, {at_limit('refused'):.0f} refused")
    finally:
        code = yield daemon.stop(grace=5.0)
        yield service.stopListening()
    assert code == 0
    text = daemon.raw_stdout.decode("utf-8", "replace") + daemon.stderr.decode("utf-8", "replace")
    lines = text.splitlines()
    bad = [line for line in lines if any(b in line for b in BAD_LINES)]
    assert not bad, bad[:5]
    # no line per SYN: a summary of what happened at the limit when it began, the rest at the stop
    assert sum("at the connection limit" in line for line in lines) == 2, [
        line for line in lines if "at the connection limit" in line]
    assert len(lines) < 60, lines[-20:]
