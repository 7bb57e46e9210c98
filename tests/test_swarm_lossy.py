"""
uTP at swarm level through a lossy relay (issue 12), on real sockets on
127.0.0.1 with a local DHT node.

Two :class:`~txhyperswarm.swarm.Hyperswarm` s meet as any two swarms do: B
announces a topic, A looks it up and its queue dials what the DHT returned.
B announces the port of a :class:`~tests.utp.relay.LossyRelay` (drops,
reorders and duplicates in both directions, seeded) instead of its own; the
relay's port refuses TCP, so A's dial falls back to a holepunch through the
DHT node and a uTP connect, which goes through the relay. A sends ``size``
random bytes to B and half-closes; B echoes the first ``echo`` bytes back
while they arrive, then ends too.

Asserted: the bytes arrive intact both ways (sha256), no stall outlasts a
fixed generous bound (:data:`~tests.utp.test_lossy.STALL_LIMIT`), the whole
transfer ends within a generous liveness bound (not a speed target: those are
in bench/swarm_lossy.py), the connection is uTP on both sides and really went
through the relay (its counters), the loss happened, no error was logged or
counted (swarms, networks, uTP sockets) and both swarms stop
with no socket or timer left behind.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer, error, task

from bench._bulk import StreamPump
from tests.utp.relay import LossyRelay
from tests.utp.streams import random_blob
from tests.utp.test_lossy import STALL_LIMIT, StallMonitor
from txhyperswarm.dht import peers as dht_peers
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.stream import Stream
from txhyperswarm.swarm import Hyperswarm

MiB = 1024 * 1024
TOPIC = b"\x12" * 32


@defer.inlineCallbacks
def until(reactor, predicate, timeout):
    end = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > end:
            raise AssertionError("timed out waiting")
        yield task.deferLater(reactor, 0.02, lambda: None)


class Receiver:
    """B's side: hashes what arrives and echoes the first ``echo`` bytes back."""

    def __init__(self, stream: Stream, echo: int) -> None:
        self.stream = stream
        self.hash = hashlib.sha256()
        self.count = 0
        self.echo_left = echo
        stream.on_data = self.data  # after the end, Stream ends our side too

    def data(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.count += len(chunk)
        if self.echo_left > 0:
            part = chunk[:self.echo_left]
            self.echo_left -= len(part)
            self.stream.write(part)


@defer.inlineCallbacks
def lossy_swarm_transfer(reactor, *, size: int, echo: int, loss: float, seed: int, limit: float):
    readers, writers = set(reactor.getReaders()), set(reactor.getWriters())
    calls = set(reactor.getDelayedCalls())
    blob = random_blob(size)
    boot = DHTNode(reactor, bootstrap=[], host="127.0.0.1", port=0, ephemeral=False)
    dht_peers.register(boot)
    boot.startService()
    options = dict(bootstrap=[("127.0.0.1", boot.address()[1])], host="127.0.0.1", multicast=False, ephemeral=True)
    a = Hyperswarm(reactor, **options)
    swarms, relay, monitor = [a], None, None
    try:
        a.startService()
        yield until(reactor, lambda: a.address() is not None, 10)
        # the handshake (A's holepunch and SYN, B's answers) spared, as in tests/utp/test_lossy.py
        relay = LossyRelay(reactor, None, loss=loss, seed=seed, client=a.address(), refuse_tcp=True, spare_first=2)
        b = Hyperswarm(reactor, announce_port=relay.port, **options)
        swarms.append(b)
        b.startService()
        yield until(reactor, lambda: b.address() is not None, 10)
        relay.target = b.address()
        got = {"a": [], "b": []}
        a.on("connection", lambda s, info: got["a"].append((s, info)))
        b.on("connection", lambda s, info: got["b"].append((s, info)))
        assert (yield b.join(TOPIC, announce=True, lookup=False)) is True
        assert (yield a.join(TOPIC)) is True
        yield until(reactor, lambda: got["a"] and got["b"], 20)
        start = reactor.seconds()
        (sa, ia), = got["a"]
        (sb, ib), = got["b"]
        ia.reconnect(False)  # the transfer's end is not a reason to redial
        assert (ia.client, ia.type, ia.peer.port) == (True, "utp", relay.port)
        assert (ib.client, ib.type) == (False, "utp")
        assert sb.transport.getPeer().port != relay.port  # B hears the relay's back socket
        sa.allow_half_open = True  # A reads the echo after its end
        echoed = bytearray()
        sa.on_data = echoed.extend
        receiver = Receiver(sb, echo)
        conn = sa.transport
        monitor = StallMonitor(reactor, lambda: (receiver.count, len(echoed), conn.oldest_unacked))
        StreamPump(sa, blob).resumeProducing()
        try:
            yield defer.gatherResults([sa.when_closed(), sb.when_closed()], consumeErrors=True).addTimeout(
                limit, reactor)
        except defer.FirstError:
            raise AssertionError(
                f"not done within {limit} s: {receiver.count} of {size} bytes arrived,"
                f" {len(echoed)} of {echo} echoed; {relay.stats()}"
            ) from None
        elapsed = reactor.seconds() - start
        monitor.stop()
        print(
            f"\nswarm, {size // MiB} MiB (echo {echo // 1024} KiB) at {loss:.0%} loss: {elapsed:.1f} s,"
            f" longest stall {monitor.worst:.3f} s (limit {STALL_LIMIT} s); sender: {conn.timeouts}"
            f" timeouts, {conn.probes} probes, {conn.packets_resent} resent; {relay.stats()}"
        )
        # intact both ways, ended in order
        assert receiver.count == size
        assert receiver.hash.digest() == hashlib.sha256(blob).digest()
        assert bytes(echoed) == blob[:echo]
        assert sa.reason.check(error.ConnectionDone) and sb.reason.check(error.ConnectionDone)
        assert monitor.violations == []
        # really uTP, really through the relay, and the loss happened
        net_a, net_b = a.network.stats(), b.network.stats()
        assert net_a["dialled"] == {"utp": 1}, net_a["dialled"]
        assert relay.up.passed >= size // 1500 and relay.down.passed > echo // 1500
        assert relay.up.dropped and relay.down.dropped and relay.up.reordered and relay.up.duplicated
        assert relay.strangers >= 1  # the holepunch the DHT node relayed
        assert b.network.utp.stats()["bytes_received"] >= size
        # no error counted
        for s in (a, b):
            assert s.stats()["errors"] == {}
            dropped = s.network.utp.stats()["dropped"]
            assert dropped["connection_error"] == 0, dropped
        assert net_a["refused"] == {} and net_b["refused"] == {}
    finally:
        if monitor is not None:
            monitor.stop()
        yield defer.gatherResults([s.stopService() for s in swarms])
        if relay is not None:
            yield relay.close()
        yield boot.stopService()
    assert a.connections == set() and b.connections == set()
    assert a.network.connections == {} and b.network.connections == {}
    yield task.deferLater(reactor, 0, lambda: None)
    left = [c for c in set(reactor.getDelayedCalls()) - calls if c.active()]
    assert left == [], left
    assert set(reactor.getReaders()) <= readers and set(reactor.getWriters()) <= writers


#: (size, echo, loss, seed, liveness bound in s). The bounds are fixed and
#: generous: about 5x what was measured on this machine shared with other
#: jobs (6.5-7.6 s and 3.5-4.1 s; 10.9 s for the first under cProfile), and
#: below what a loss probe slowed tenfold takes (52 s and 32 s). The issue's
#: figures (under 60 s, side by side with Node) are bench/swarm_lossy.py's.
RUNS = [
    (64 * MiB, 4 * MiB, 0.05, 5, 40.0),
    (4 * MiB, 1 * MiB, 0.20, 20, 20.0),
]


@pytest.mark.parametrize("size,echo,loss,seed,limit", RUNS, ids=["64MiB-5%", "4MiB-20%"])
@pytest_twisted.inlineCallbacks
def test_swarm_connection_through_a_lossy_relay(reactor, size, echo, loss, seed, limit):
    yield lossy_swarm_transfer(reactor, size=size, echo=echo, loss=loss, seed=seed, limit=limit)
