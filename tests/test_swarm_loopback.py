"""
Hyperswarm Python <-> Python over real sockets on 127.0.0.1, with a local
DHT bootstrap node (mDNS only inside the private namespace the conftest
makes).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.protocol import Factory

from tests.swarm_world import IdExchange
from txhyperswarm.dht import peers as dht_peers
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.stream import Stream
from txhyperswarm.swarm import Hyperswarm

T1 = b"\x21" * 32


@defer.inlineCallbacks
def until(reactor, predicate, timeout=10.0):
    end = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > end:
            raise AssertionError("timed out waiting")
        yield task.deferLater(reactor, 0.02, lambda: None)


@defer.inlineCallbacks
def bootstrap(reactor):
    boot = DHTNode(reactor, bootstrap=[], host="127.0.0.1", port=0, ephemeral=False)
    dht_peers.register(boot)
    boot.startService()
    yield task.deferLater(reactor, 0, lambda: None)
    return boot


def swarm(reactor, boot, **options):
    options.setdefault("multicast", False)
    options.setdefault("ephemeral", True)
    s = Hyperswarm(reactor, bootstrap=[("127.0.0.1", boot.address()[1])], host="127.0.0.1", **options)
    s.startService()
    return s


@pytest_twisted.inlineCallbacks
def test_tcp_connection_and_data_both_ways(reactor):
    boot = yield bootstrap(reactor)
    a = swarm(reactor, boot)
    b = swarm(reactor, boot)
    conns = {"a": [], "b": []}
    a.on("connection", lambda p, i: conns["a"].append((p, i)))
    b.on("connection", lambda p, i: conns["b"].append((p, i)))
    try:
        ok = yield a.join(T1, announce=True, lookup=False)
        assert ok is True
        ok = yield b.join(T1)
        assert ok is True
        yield until(reactor, lambda: conns["a"] and conns["b"])
        (sa, ia), = conns["a"]
        (sb, ib), = conns["b"]
        assert isinstance(sa, Stream) and isinstance(sb, Stream)
        assert (ib.client, ib.type, ib.peer.host, ib.peer.port) == (True, "tcp", "127.0.0.1", a.address()[1])
        assert (ia.client, ia.type, ia.peer, ia.remote[0], ia.local) == (False, "tcp", None, "127.0.0.1", True)
        got_a, got_b = [], []
        sa.on_data = got_a.append
        sb.on_data = got_b.append
        sb.write(b"from b")
        sa.write(b"from a")
        yield until(reactor, lambda: got_a and got_b)
        assert b"".join(got_a) == b"from b" and b"".join(got_b) == b"from a"
        left = yield b.flush()
        assert left is None
    finally:
        yield defer.gatherResults([a.stopService(), b.stopService()])
        yield boot.stopService()
    assert a.connections == set() and b.connections == set()


@pytest.mark.parametrize("ids", [(b"\x01" * 32, b"\x02" * 32), (b"\x02" * 32, b"\x01" * 32)])
@pytest_twisted.inlineCallbacks
def test_simultaneous_connect_keeps_the_smaller_ids_connection(reactor, private_netns, ids):
    """DHT and mDNS on, both announce and look up, so both dial: within 10 s
    one connection remains on each side, dialled by the smaller id."""
    boot = yield bootstrap(reactor)
    swarms = []
    for own in ids:
        f = Factory()
        f.buildProtocol = (lambda own: lambda addr: IdExchange(own))(own)
        s = swarm(reactor, boot, factory=f, multicast=True)
        s.on("connection", lambda p, info: (setattr(p, "info", info), p.check()))
        swarms.append(s)
    a, b = swarms
    try:
        yield defer.gatherResults([s.join(T1, announce=True) for s in swarms])

        def settled():
            if len(a.connections) != 1 or len(b.connections) != 1:
                return False
            (pa,), (pb,) = a.connections, b.connections
            return hasattr(pa, "dup") and hasattr(pb, "dup")

        yield until(reactor, settled, timeout=10)
        yield task.deferLater(reactor, 1.0, lambda: None)
        assert len(a.connections) == 1 and len(b.connections) == 1
        (pa,), (pb,) = a.connections, b.connections
        assert pa.transport.getHost().port == pb.transport.getPeer().port
        assert pa.transport.getPeer().port == pb.transport.getHost().port
        assert pa.info.client == (ids[0] < ids[1]) and pb.info.client == (ids[1] < ids[0])
    finally:
        yield defer.gatherResults([s.stopService() for s in swarms])
        yield boot.stopService()
