"""
Network.join (announce_port, LAN address, mDNS on the memory multicast),
the close order of swarm.md 3.8, half-close through a Connection, dead
peers (TCP keepalive, uTP idle), and adaptive ephemerality on a Clock.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock

from tests.test_network import BOOT, TOPIC, HalfRecorder, Recorder, World, record, result_of
from txhyperswarm.connection import (
    TCP_KEEPCNT,
    TCP_KEEPIDLE,
    TCP_KEEPINTVL,
    UTP_IDLE_TIMEOUT,
)
from txhyperswarm.network import ADAPTIVE_LATE, AdaptiveEphemerality, Network


def joined(w, *hosts, **kwargs):
    nets = [w.network(h, **kwargs) for h in hosts]
    for n in nets:
        result_of(n.bind())
    w.run(1)
    return nets


# -- join ----------------------------------------------------------------------


def test_announce_then_lookup_finds_the_bound_port_on_the_dht():
    w = World()
    a, b = joined(w, "10.0.0.1", "10.0.0.2")
    found = []
    ta = a.join(TOPIC, announce=True, lookup=False)
    w.run(1)
    tb = b.join(TOPIC, announce=False, lookup=True, on_peer=found.append)
    w.run(1)
    assert result_of(tb.when_ready()) is True
    assert {(p.host, p.port, p.referrer, p.source, p.local) for p in found} == {
        ("10.0.0.1", a.address()[1], BOOT, "dht", False)
    }
    # and the record dials
    conn = result_of_after(w, b.connect(found[0]), 1)
    assert conn.type == "tcp"
    result_of_after(w, ta.stop(), 1)
    w.close_all()


def result_of_after(w, d, seconds):
    w.run(seconds)
    return result_of(d)


def test_announce_port_is_what_the_dht_and_mdns_report():
    w = World()
    a = w.network("10.0.0.1", announce_port=7000, multicast=True)
    b = w.network("10.0.0.2", multicast=True)
    result_of(a.bind())
    result_of(b.bind())
    w.run(1)
    found = []
    a.join(TOPIC, announce=True, lookup=False)
    w.run(1)
    b.join(TOPIC, announce=False, lookup=True, on_peer=found.append)
    w.run(2)
    assert {(p.host, p.port, p.source) for p in found} == {("10.0.0.1", 7000, "dht"), ("10.0.0.1", 7000, "mdns")}
    w.close_all()


def test_mdns_answers_with_the_bound_port_and_uses_the_hosts_interface_listing():
    w = World()
    a = w.network("10.0.0.1", multicast=True, bootstrap=[])
    b = w.network("10.0.0.2", multicast=True, bootstrap=[])
    result_of(a.bind())
    result_of(b.bind())
    assert a.mdns is not None and a.interfaces() == [("10.0.0.1", False)]
    found = []
    a.join(TOPIC, announce=True, lookup=False)
    b.join(TOPIC, lookup=True, on_peer=found.append)
    w.run(1)
    assert {(p.host, p.port, p.source, p.referrer) for p in found} == {("10.0.0.1", a.address()[1], "mdns", None)}
    w.close_all()


def test_announce_local_address_sends_the_first_non_internal_address():
    w = World()
    listing = lambda: [("127.0.0.1", True), ("10.0.0.1", False)]  # noqa: E731
    a = w.network("10.0.0.1", announce_local_address=True, interfaces=listing)
    b = w.network("10.0.0.2", announce_local_address=True)
    result_of(a.bind())
    result_of(b.bind())
    w.run(1)
    ta = a.join(TOPIC, announce=True, lookup=False)
    assert ta.dht.local_address == ("10.0.0.1", a.address()[1])
    w.run(1)
    found = []
    b.join(TOPIC, lookup=True, on_peer=found.append)
    w.run(1)
    assert ("10.0.0.1", a.address()[1], True) in {(p.host, p.port, p.local) for p in found}
    c = w.network("10.0.0.3")
    result_of(c.bind())
    assert c.join(TOPIC, announce=True).dht.local_address is None
    w.close_all()


# -- close ------------------------------------------------------------------------


def test_close_unannounces_before_the_sockets_close_and_leaves_no_timer():
    w = World()
    store = w.boot_store
    a = w.network("10.0.0.1", ephemeral=True)
    b = w.network("10.0.0.2", ephemeral=True)
    result_of(a.bind())
    result_of(b.bind())
    w.run(1)
    a.join(TOPIC, announce=True, lookup=True)
    w.run(1)
    assert store.count_for_topic(TOPIC) == 1
    conn = result_of_after(w, b.connect(record("10.0.0.1", a.address()[1], BOOT)), 1)
    app = Recorder()
    conn.attach(app)
    order = []

    def wrap(obj, name, label):
        real = getattr(obj, name)

        def wrapped(*args, **kwargs):
            order.append((label, store.count_for_topic(TOPIC)))
            return real(*args, **kwargs)

        setattr(obj, name, wrapped)

    wrap(a.discovery, "close", "topics")
    wrap(a.dht, "stopService", "dht")
    wrap(a.tcp_port, "stopListening", "tcp")
    wrap(a.utp, "close", "utp")
    wrap(a.udp, "close", "udp")
    done = []
    a.close().addCallback(done.append)
    assert not a.bound and a.closed
    w.run(2)
    assert done == [None]
    assert [label for label, _ in order] == ["topics", "dht", "tcp", "utp", "udp"]
    assert order[1] == ("dht", 0)  # the unannounce reached the node before the DHT stopped
    assert app.events[-1][0] == "lost"
    assert a.connections == {}
    assert ("10.0.0.1", a.address()[1]) not in w.net.listening()
    assert ("10.0.0.1", a.address()[1]) not in w.net.bound()
    result_of_after(w, b.close(), 2)
    w.boot.stopService()
    w.run(1)
    assert w.clock.getDelayedCalls() == []


def test_inbound_is_refused_from_the_start_of_close():
    w = World()
    accepted = []
    a = w.network("10.0.0.1", accepted=accepted)
    b = w.network("10.0.0.2")
    result_of(a.bind())
    result_of(b.bind())
    w.run(1)
    a.join(TOPIC, announce=True)
    w.run(1)
    a.close()  # the unannounce takes a round trip: the TCP listener is still open
    d = b.connect(record("10.0.0.1", a.address()[1]))
    w.run(2)
    assert accepted == []
    assert a.stats()["refused"]["closing"] >= 1
    d.addErrback(lambda f: None)
    w.close_all()


def test_close_is_idempotent_and_waits_for_a_bind_in_progress():
    w = World()
    a = w.network("10.0.0.1")
    d1 = a.bind()
    c1, c2 = a.close(), a.close()
    w.run(1)
    assert result_of(c1) is None and result_of(c2) is None
    assert result_of(d1) == ("0.0.0.0", 32768)
    assert w.net.listening() == [] and ("10.0.0.1", 32768) not in w.net.bound()


# -- half-close ----------------------------------------------------------------------


@pytest.mark.parametrize("via_utp", [False, True])
def test_half_close_reaches_a_half_closeable_protocol(via_utp):
    w = World()
    accepted = []
    a = w.network("10.0.0.1", accepted=accepted)
    b = w.network("10.0.0.2")
    result_of(a.bind())
    result_of(b.bind())
    w.run(1)
    if via_utp:
        a.tcp_port.stopListening()
    conn = result_of_after(w, b.connect(record("10.0.0.1", a.address()[1], BOOT)), 1)
    assert conn.type == ("utp" if via_utp else "tcp")
    server, client = HalfRecorder(), HalfRecorder()
    accepted[0].attach(server)
    conn.attach(client)
    client.transport.write(b"request")
    client.transport.loseWriteConnection()
    w.run(1)
    assert server.data == b"request" and "read_lost" in server.events
    assert not accepted[0].closed
    server.transport.write(b"answer")
    server.transport.loseConnection()
    w.run(1)
    assert client.data == b"answer" and "read_lost" in client.events
    client.transport.loseConnection()  # both directions are done (TCP waits for this)
    w.run(1)
    assert client.events[-1] == ("lost", error.ConnectionDone)
    assert server.events[-1] == ("lost", error.ConnectionDone)
    w.close_all()


@pytest.mark.parametrize("via_utp", [False, True])
def test_inbound_ends_our_side_for_a_protocol_that_cannot_half_close(via_utp):
    w = World()
    accepted = []
    a = w.network("10.0.0.1", accepted=accepted)
    b = w.network("10.0.0.2")
    result_of(a.bind())
    result_of(b.bind())
    w.run(1)
    if via_utp:
        a.tcp_port.stopListening()
    conn = result_of_after(w, b.connect(record("10.0.0.1", a.address()[1], BOOT)), 1)
    server, client = Recorder(), HalfRecorder()
    accepted[0].attach(server)
    conn.attach(client)
    client.transport.loseWriteConnection()
    w.run(1)
    assert server.events[-1] == ("lost", error.ConnectionDone)
    assert client.events[-2:] == ["write_lost", "read_lost"] if not via_utp else client.events[-1][0] == "lost"
    w.close_all()


# -- dead peers -----------------------------------------------------------------------


def test_tcp_keepalive_ends_a_vanished_peers_connection_within_the_bound():
    w = World()
    a, b = joined(w, "10.0.0.1", "10.0.0.2")
    conn = result_of_after(w, b.connect(record("10.0.0.1", a.address()[1])), 1)
    app = Recorder()
    conn.attach(app)
    w.net.down.add(("10.0.0.1", None))
    start = w.clock.seconds()
    bound = TCP_KEEPIDLE + TCP_KEEPINTVL * TCP_KEEPCNT
    w.net.run_events(bound - 1)
    assert not conn.closed
    w.net.run_events(TCP_KEEPINTVL + 1)
    assert conn.closed and app.events[-1] == ("lost", error.ConnectionLost)
    assert w.clock.seconds() - start <= bound + TCP_KEEPINTVL
    w.net.down.clear()
    w.close_all()


def test_utp_idle_timeout_ends_a_vanished_peers_connection_and_keepalives_keep_a_live_one():
    w = World()
    a, b = joined(w, "10.0.0.1", "10.0.0.2")
    a.tcp_port.stopListening()
    conn = result_of_after(w, b.connect(record("10.0.0.1", a.address()[1], BOOT)), 1)
    assert conn.type == "utp"
    app = Recorder()
    conn.attach(app)
    app.transport.write(b"hi")  # (an acceptor that hears no data in 60 s of its SYN drops it)
    # idle but alive: both keepalives every 29 s keep it open
    w.net.run_events(3 * UTP_IDLE_TIMEOUT)
    assert not conn.closed, app.events
    w.net.drop = lambda data, src, dst: "10.0.0.1" in (src[0], dst[0])  # A vanished
    down_at = w.clock.seconds()
    heard = conn.transport.last_received
    assert w.net.run_until(lambda: conn.closed, UTP_IDLE_TIMEOUT + 1)
    assert app.events[-1] == ("lost", error.ConnectionAborted)
    assert conn.transport.last_received == heard
    assert w.clock.seconds() == pytest.approx(heard + UTP_IDLE_TIMEOUT, abs=0.02)
    assert w.clock.seconds() - down_at <= UTP_IDLE_TIMEOUT + 0.02
    w.net.drop = None
    w.close_all()


# -- adaptive ephemerality ------------------------------------------------------------


class FakeNode:
    def __init__(self):
        self.punchable = False
        self.persist = []

    def holepunchable(self):
        return self.punchable

    def persistent(self):
        d = defer.Deferred()
        self.persist.append(d)
        return d


class FixedRandom:
    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


def test_adaptive_waits_20_to_30_minutes_then_goes_persistent_when_holepunchable():
    clock = Clock()
    node = FakeNode()
    adaptive = AdaptiveEphemerality(clock, node, FixedRandom(0.5))  # 25 min
    adaptive.start()
    clock.advance(25 * 60 - 1)
    assert node.persist == [] and adaptive.state == "waiting"
    clock.advance(1)  # not holepunchable yet: another wait
    assert node.persist == [] and adaptive.pending
    node.punchable = True
    clock.advance(25 * 60)
    assert len(node.persist) == 1 and adaptive.state == "persisting"
    node.persist[0].callback(None)
    assert adaptive.state == "persistent" and clock.getDelayedCalls() == []


def test_adaptive_failure_is_a_warning_and_ends_the_tries(logged_errors):
    clock = Clock()
    node = FakeNode()
    node.punchable = True
    adaptive = AdaptiveEphemerality(clock, node, FixedRandom(0.0))
    adaptive.start()
    clock.advance(20 * 60)
    node.persist[0].errback(RuntimeError("no node answered"))
    assert adaptive.state == "failed" and clock.getDelayedCalls() == []


def test_adaptive_timer_firing_more_than_a_minute_late_is_rearmed_with_the_same_duration():
    clock = Clock()
    node = FakeNode()
    node.punchable = True
    adaptive = AdaptiveEphemerality(clock, node, FixedRandom(1.0))  # 30 min
    adaptive.start()
    clock.advance(30 * 60 + ADAPTIVE_LATE + 1)  # the host slept
    assert node.persist == [] and adaptive.pending
    [call] = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == 30 * 60
    clock.advance(30 * 60 + ADAPTIVE_LATE)  # late, but not more than 60 s
    assert len(node.persist) == 1


def test_adaptive_stop_cancels_the_timer():
    clock = Clock()
    adaptive = AdaptiveEphemerality(clock, FakeNode(), random.Random(1))
    adaptive.start()
    delay = clock.getDelayedCalls()[0].getTime()
    assert 20 * 60 <= delay <= 30 * 60
    adaptive.stop()
    assert clock.getDelayedCalls() == [] and adaptive.state == "stopped"


def test_network_default_is_adaptive_and_becomes_persistent_on_the_clock():
    w = World()
    nets = [w.network(f"10.0.0.{i}", ephemeral=False) for i in range(2, 6)]
    for n in nets:
        result_of(n.bind())
    w.run(2)
    a = w.network("10.0.0.1", random=FixedRandom(0.0))  # ephemeral=None: adaptive
    result_of(a.bind())
    assert a.dht.ephemeral and a.adaptive is not None
    w.run(2)
    assert a.adaptive.state == "waiting"
    assert a.dht.holepunchable()  # the nodes it walked to agree on its address
    w.net.run_events(20 * 60 + 5)
    assert a.adaptive.state == "persistent", (a.adaptive.state, a.dht.holepunchable())
    assert not a.dht.ephemeral
    for flag in (True, False):
        n = w.network("10.0.0.9", ephemeral=flag, port=9000 + flag)
        result_of(n.bind())
        assert n.adaptive is None and n.dht.ephemeral is flag
    w.close_all()
