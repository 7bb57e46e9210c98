"""
UTPSocket's limits against abuse, on the in-memory network and a Clock:
inbound connections per address and in all, half-open (SYN_RECV)
connections per address and in all (a SYN flood from many ports and many
addresses), the half-open timeout, and the out-of-order buffer of a peer
sending far ahead of the window. Each test hits its limit, reads the count
of what it refused in ``dropped``, and shows a real peer still served.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock

from tests.utp.streams import OneFactory, Recorder, RecorderFactory
from tests.utp.test_connection import utp_socket
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.utp import UTPTimeoutError
from txhyperswarm.utp.connection import REORDER_LIMIT, SYN_RECV, SYN_RECV_TIMEOUT
from txhyperswarm.utp.packet import HEADER
from txhyperswarm.utp.socket import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_HALF_OPEN,
    MAX_HALF_OPEN_PER_ADDRESS,
)

SERVER = ("10.0.0.2", 2222)
CLIENT = ("10.0.0.1", 1111)


def setup(**limits):
    clock = Clock()
    clock.advance(1000.0)
    net = UDPNetwork(clock, latency=0.001)
    server = utp_socket(net, SERVER, **limits)
    factory = RecorderFactory()
    server.listen(factory)
    return clock, net, server, factory


def syn(cid: int, seq: int = 1) -> bytes:
    """A SYN as a (possibly spoofed) initiator sends it."""
    return HEADER.pack(0x41, 0, cid, 1, 0, 1048576, seq, 0)


def real_peer_is_served(net, server, host: str = "10.0.0.1", port: int = 1111, payload: bytes = b"hello"):
    """A real client on ``(host, port)`` connects, sends ``payload`` and gets it
    echoed by hand: its protocol if all went through, else ``None``."""
    client = utp_socket(net, (host, port))
    proto = Recorder()
    d = client.connect(SERVER[0], SERVER[1], OneFactory(proto), timeout=2.0)
    results = []
    d.addBoth(results.append)
    net.run_until(lambda: results, 3.0, step=0.001)
    if not results or results[0] is not proto:
        return None
    proto.transport.write(payload)
    net.run(0.05, step=0.001)
    accepted = [c for c in server.connections.values() if c.remote == (host, port)]
    if not accepted or accepted[0].protocol is None or bytes(accepted[0].protocol.received) != payload:
        return None
    accepted[0].write(b"echo:" + payload)
    net.run(0.05, step=0.001)
    return proto if bytes(proto.received) == b"echo:" + payload else None


def test_defaults_are_documented_and_generous():
    assert MAX_CONNECTIONS == 3000  # libutp's
    assert MAX_CONNECTIONS_PER_ADDRESS >= 256  # the daemon's default --max-peers
    assert MAX_HALF_OPEN_PER_ADDRESS >= 32 and MAX_HALF_OPEN >= 8 * MAX_HALF_OPEN_PER_ADDRESS
    assert SYN_RECV_TIMEOUT == 60.0


def test_a_syn_flood_from_many_ports_of_one_address_is_capped_per_address():
    clock, net, server, factory = setup(max_half_open_per_address=8)
    for port in range(20000, 20500):
        server.datagram_received(syn(port), ("10.9.9.9", port))
    assert server.stats()["half_open"] == 8
    assert len(server.connections) == 8
    assert server.dropped["syn_half_open_per_address"] == 492
    assert real_peer_is_served(net, server)


def test_the_default_per_address_half_open_cap_holds_a_flood_from_one_address():
    clock, net, server, factory = setup()
    for port in range(20000, 25000):
        server.datagram_received(syn(port), ("10.9.9.9", port))
    assert server.stats()["half_open"] == MAX_HALF_OPEN_PER_ADDRESS
    assert server.dropped["syn_half_open_per_address"] == 5000 - MAX_HALF_OPEN_PER_ADDRESS
    assert real_peer_is_served(net, server)


def test_a_syn_flood_from_many_addresses_evicts_the_oldest_half_open_and_a_real_peer_gets_in():
    """The flood goes on (a SYN every 0.2 ms from a new address) while a real
    peer connects: the total stays at the cap, the oldest are evicted, and the
    real peer's handshake (one round trip) completes."""
    clock, net, server, factory = setup(max_half_open=50)
    hosts = [f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, 5001)]
    for i, host in enumerate(hosts):
        clock.callLater(i * 0.0002, server.datagram_received, syn(i & 0xFFFF), (host, 6000))
    net.run(0.1, step=0.001)  # 500 SYNs in
    assert server.stats()["half_open"] == 50
    assert real_peer_is_served(net, server)  # while the flood goes on
    net.run(1.0, step=0.001)
    assert server.stats()["half_open"] == 50
    assert server.dropped["half_open_evicted"] == 5000 - 50 - 0  # the real peer's was never the oldest
    evicted = [p for p in factory.built if p.lost is not None]
    assert len(evicted) == 4950 and all(p.lost.check(UTPTimeoutError) for p in evicted)
    # the real one is established, not half-open: eviction never touches it
    real = [c for c in server.connections.values() if c.remote == CLIENT]
    assert real and real[0].state != SYN_RECV and real[0].protocol.lost is None


def test_half_open_connections_end_after_the_half_open_timeout():
    clock, net, server, factory = setup(half_open_timeout=5.0)
    for port in range(30000, 30010):
        server.datagram_received(syn(port), ("10.9.9.9", port))
    assert server.stats()["half_open"] == 10
    net.run_events(4.99)
    assert server.stats()["half_open"] == 10
    net.run_events(0.02)
    assert server.stats()["half_open"] == 0 and server.connections == {}
    assert all(p.lost.check(UTPTimeoutError) for p in factory.built)
    assert "5s" in str(factory.built[0].lost.value)
    # and the per-address count went back: the address may connect again
    assert real_peer_is_served(net, server, host="10.9.9.9", port=30000)


def test_connections_per_address_are_capped_and_other_addresses_still_get_in():
    clock, net, server, factory = setup(max_connections_per_address=3)
    for port in (1001, 1002, 1003):
        assert real_peer_is_served(net, server, host="10.0.0.7", port=port)
    assert not real_peer_is_served(net, server, host="10.0.0.7", port=1004)
    assert server.dropped["syn_per_address"] >= 1
    assert real_peer_is_served(net, server, host="10.0.0.8", port=1001)
    # one of 10.0.0.7's connections ends: it may open another
    conn = [c for c in server.connections.values() if c.remote == ("10.0.0.7", 1001)][0]
    conn.abortConnection()
    net.run(0.1, step=0.001)
    assert real_peer_is_served(net, server, host="10.0.0.7", port=1005)


def test_connections_in_total_are_capped_and_open_ones_keep_working():
    clock, net, server, factory = setup(max_connections=4)
    clients = [real_peer_is_served(net, server, host=f"10.0.1.{i + 1}", port=1000) for i in range(4)]
    assert all(clients)
    assert not real_peer_is_served(net, server, host="10.0.1.9", port=1000)
    assert server.dropped["syn_too_many"] >= 1
    # the four open ones still carry data both ways
    for conn in list(server.connections.values()):
        conn.write(b"|still here")
    for proto in clients:
        proto.transport.write(b"|and here")
    net.run(0.1, step=0.001)
    assert all(bytes(p.received).endswith(b"|still here") for p in clients)
    assert all(bytes(c.protocol.received).endswith(b"|and here") for c in server.connections.values())
    assert len(server.connections) == 4


def established(net, server, recv_buffer=None):
    """A real client connected (and its first DATA delivered); the server side's connection."""
    client = utp_socket(net, CLIENT)
    proto = Recorder()
    d = client.connect(SERVER[0], SERVER[1], OneFactory(proto))
    net.run_until(lambda: d.called, 1.0, step=0.001)
    proto.transport.write(b"x")
    net.run(0.05, step=0.001)
    conn = [c for c in server.connections.values() if c.remote == CLIENT][0]
    return client, proto, conn


@pytest.mark.parametrize("recv_buffer", [64 * 1024, 1048576])
def test_a_peer_sending_far_ahead_of_the_window_cannot_grow_the_reorder_buffer(recv_buffer):
    clock, net, server, factory = setup(recv_buffer=recv_buffer)
    client, proto, conn = established(net, server)
    chunk = os.urandom(1382)
    ack = (conn.oldest_unacked - 1) & 0xFFFF
    base = proto.transport.oldest_unacked  # the client's next number
    # skip the next expected packet (a hole), then fill up to 64k numbers ahead
    for d in range(1, 0x8000):
        seq = (base + d) & 0xFFFF
        server.datagram_received(HEADER.pack(0x01, 0, conn.recv_id, 1, 1000, 1048576, seq, ack) + chunk, CLIENT)
    assert conn.reorder_buffered <= min(2 * recv_buffer + 1382, (REORDER_LIMIT - 1) * 1382)
    assert server.dropped["connection_error"] == 0
    # the node still serves: a second peer connects and exchanges data
    assert real_peer_is_served(net, server, host="10.0.0.5", port=5555)
