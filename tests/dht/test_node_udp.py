"""DHTNode on real loopback sockets: service lifecycle and hostile input."""

from __future__ import annotations

import random

import pytest_twisted
from twisted.internet import defer, protocol, task

from txhyperswarm.dht import messages as m
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.dht.errors import RequestTimeout
from txhyperswarm.udp import UDPSocket, is_utp_datagram

from tests.dht.test_messages import VECTORS


class _Sink(protocol.DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append(data)


def _hostile(n: int, seed: int = 5):
    rnd = random.Random(seed)
    samples = [bytes.fromhex(h) for h, _ in VECTORS]
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            data = rnd.randbytes(rnd.randrange(0, 200))
        elif kind == 1:  # truncated real message
            s = rnd.choice(samples)
            data = s[: rnd.randrange(0, len(s))]
        elif kind == 2:  # bit flips in a real message
            s = bytearray(rnd.choice(samples))
            for _ in range(rnd.randrange(1, 4)):
                s[rnd.randrange(len(s))] ^= 1 << rnd.randrange(8)
            data = bytes(s)
        else:  # a real header with random tail
            data = b"\x58\x01\x08" + bytes([rnd.choice((1, 2, 3, 7))]) + rnd.randbytes(rnd.randrange(0, 120))
        out.append(data)
    return out


@pytest_twisted.inlineCallbacks
def test_ten_thousand_hostile_datagrams_then_a_ping(reactor):
    node = DHTNode(reactor, bootstrap=[], host="127.0.0.1")
    node.startService()
    pinger = DHTNode(reactor, bootstrap=[], host="127.0.0.1")
    pinger.startService()
    sink = _Sink()
    port = reactor.listenUDP(0, sink, interface="127.0.0.1")
    seen = []
    inner = node.rpc.datagram_received
    node.udp.set_dht_receiver(lambda data, addr: (seen.append(data), inner(data, addr)))
    out = []  # what the node sends: answers, relays, its own requests
    real_send = node.udp.send
    node.udp.send = lambda data, addr: (out.append(m.decode_message(data)), real_send(data, addr))[1]
    try:
        datagrams = _hostile(10_000)
        undecodable = 0
        dht_side = 0
        by_type = {m.QUERY: 0, m.UPDATE: 0, m.RESPONSE: 0}
        for d in datagrams:
            if is_utp_datagram(d):
                continue
            dht_side += 1
            try:
                by_type[m.decode_message(d).type] += 1
            except m.DecodeError:
                undecodable += 1
        dst = node.address()
        for i in range(0, len(datagrams), 250):  # batches: stay inside the socket buffer
            for d in datagrams[i : i + 250]:
                port.write(d, dst)
            yield task.deferLater(reactor, 0.002, lambda: None)
        for _ in range(200):
            if len(seen) >= dht_side:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert len(seen) == dht_side
        assert node.udp.dropped["receiver_error"] == 0
        assert node.dropped["error"] == 0
        decode_drops = node.dropped["protobuf"] + node.dropped["id"]
        assert decode_drops == undecodable
        assert set(node.dropped) <= {
            "protobuf", "id", "bad_token", "no_target", "value", "unknown_rid", "ping_id",
        }
        # every decodable one was handled or counted by reason:
        # an UPDATE needs a token of ours (none of these has one) ...
        assert node.dropped["bad_token"] == by_type[m.UPDATE] > 0
        # ... a QUERY is answered, relayed (_holepunch with a `to`) or dropped ...
        answers = sum(1 for msg in out if msg.type == m.RESPONSE)
        relays = sum(1 for msg in out if msg.type == m.QUERY and msg.command == b"_holepunch")
        dropped = node.dropped["ping_id"] + node.dropped["no_target"] + node.dropped["value"]
        assert answers + relays + dropped == by_type[m.QUERY] > 0
        # ... and a RESPONSE matches a request of ours or has an unknown rid
        matched = by_type[m.RESPONSE] - node.dropped["unknown_rid"]
        assert 0 <= matched <= sum(1 for msg in out if msg.type != m.RESPONSE)
        reply = yield pinger.ping(*node.address())
        assert reply.id == node.id and reply.to == pinger.address()
    finally:
        yield port.stopListening()
        yield node.stopService()
        yield pinger.stopService()


@pytest_twisted.inlineCallbacks
def test_service_owns_its_socket_or_shares_one(reactor):
    owned = DHTNode(reactor, bootstrap=[], host="127.0.0.1")
    owned.startService()
    yield owned.bootstrapped()
    assert owned.running and owned.address()[1] > 0

    udp = UDPSocket(reactor, host="127.0.0.1")
    udp.listen()
    shared = DHTNode(reactor, bootstrap=[owned.address()], udp=udp)
    shared.startService()
    yield shared.bootstrapped()
    assert shared.address() == udp.address()
    assert shared.routing_table.get(owned.id) is not None
    assert owned.routing_table_size == 1

    yield shared.stopService()
    assert udp.listening  # not ours to close
    yield udp.close()
    yield owned.stopService()
    assert not owned.udp.listening


def test_ping_timeout_errback_names_the_peer():
    from tests.dht.dhtnet import DHTNetwork

    net = DHTNetwork()
    node = net.node()
    silent = ("127.0.0.1", 9)
    net.down.add(silent)  # swallows what it gets
    failures = []
    node.ping(*silent).addErrback(failures.append)
    net.run(8)
    (failure,) = failures
    assert failure.check(RequestTimeout)
    assert "127.0.0.1:9" in str(failure.value) and "_ping" in str(failure.value)
    assert len(net.sent(dst=silent)) == 3


@pytest_twisted.inlineCallbacks
def test_dht_node_is_an_iservice_that_restarts(reactor):
    from twisted.application.service import IService
    from zope.interface.verify import verifyObject

    a = DHTNode(reactor, bootstrap=[], host="127.0.0.1")
    b = DHTNode(reactor, bootstrap=[], host="127.0.0.1")
    assert verifyObject(IService, a)
    a.startService()
    b.startService()
    yield a.stopService()
    assert not a.running
    a.startService()
    try:
        reply = yield b.ping(*a.address())
        assert reply.id == a.id
    finally:
        yield a.stopService()
        yield b.stopService()


@pytest_twisted.inlineCallbacks
def test_stopped_nodes_leave_nothing_on_the_reactor(reactor):
    from txhyperswarm.dht import peers

    before = set(reactor.getDelayedCalls())
    a = DHTNode(reactor, bootstrap=[], host="127.0.0.1")
    a.startService()
    peers.register(a)
    b = DHTNode(reactor, bootstrap=[a.address()], host="127.0.0.1")
    b.startService()
    peers.register(b)
    c = DHTNode(reactor, bootstrap=[a.address()], host="127.0.0.1", ephemeral=True)
    c.startService()
    yield defer.gatherResults([b.bootstrapped(), c.bootstrapped()])
    announcement = peers.announce(c, b"\x01" * 32, 1000)
    assert (yield announcement.when_ready()) is True
    found = yield peers.lookup(c, b"\x01" * 32)
    assert [(p.host, p.port) for p in found] == [("127.0.0.1", 1000)]
    # still running at stop: a walk, an explicit holepunch (500 ms relay
    # timer), a ping in its retry cycle, the announcement's 300-600 s wait
    failures = []
    for d in (peers.lookup(c, b"\x02" * 32), c.holepunch("127.0.0.1", 9, referrer=a.address()),
              c.ping("127.0.0.1", 9)):
        d.addErrback(failures.append)
    for n in (a, b, c):
        yield n.stopService()
    assert len(failures) == 3
    assert [call for call in reactor.getDelayedCalls() if call not in before] == []
