"""
Faults a swarm node meets on the open internet (issue 12, "Faults"), on
txhyperswarm.testing's in-memory network and one Clock: a bootstrap node
that dies and comes back, a peer that vanishes mid-transfer, a socket
error on send, a port that is taken. Each is handled with a log line,
nothing is left pending and no timer outlives stopService.
"""

from __future__ import annotations

import random

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from txhyperswarm.dht import peers as dht_peers
from txhyperswarm.dht.node import TICK_INTERVAL
from txhyperswarm.network import CONNECTION_TIMEOUT, DialTimeout
from txhyperswarm.swarm import BindError

from tests.swarm_world import BOOT, World as SwarmWorld

T1 = b"\x12" * 32
#: One DHT refresh: the re-bootstrap check runs every 64th tick.
REFRESH = 64 * TICK_INTERVAL


class Logs:
    """Every log event while the test runs, as (level, text)."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append((event.get("log_level"), formatEvent(event)))

    def having(self, text, level=None):
        return [t for lvl, t in self.events if text in t and (level is None or lvl == level)]


@pytest.fixture
def logs():
    obs = Logs()
    globalLogPublisher.addObserver(obs)
    yield obs
    globalLogPublisher.removeObserver(obs)


class World(SwarmWorld):
    EVENTS = ("connection", "disconnection", "peer", "close")
    STOP_STEP = 0.05

def fired(d):
    out = []
    d.addBoth(out.append)
    return out, d


def test_bootstrap_node_dies_and_comes_back(logs):
    """a announces a topic; then the bootstrap node goes down. b starts and
    joins the topic meanwhile: its bootstrap and its lookup fail with a
    warning and the join fires False. Once the bootstrap node is back, both
    swarms re-bootstrap within one refresh (320 s), and b's next lookup
    cycle (300-600 s after the failed one) finds a: b connects."""
    w = World()
    a = w.swarm("a", "10.0.0.2")
    ja, da = fired(a.join(T1, announce=True, lookup=False))
    w.run(1)
    assert ja == [True]
    w.net.down.add((BOOT[0], None))
    b = w.swarm("b", "10.0.0.3", rng=random.Random(2))
    jb, db = fired(b.join(T1))
    w.run(30, step=0.05)
    assert jb == [False]
    assert logs.having("DHT bootstrap failed: No nodes responded", LogLevel.warn)
    assert logs.having("lookup of " + T1.hex() + " failed: No nodes responded", LogLevel.warn)
    dht_a, dht_b = a.network.dht, b.network.dht
    assert dht_b.routing_table_size == 0
    w.run(200, step=0.1)
    assert dht_a.routing_table_size == 0  # a's pings to it failed: it was dropped
    back = w.now()
    w.net.down.discard((BOOT[0], None))
    assert w.run_until(lambda: dht_a.routing_table_size and dht_b.routing_table_size, REFRESH + 5, step=0.1)
    assert w.now() - back <= REFRESH + 0.1
    assert len(logs.having("DHT node re-bootstrapped with 1 nodes in its table", LogLevel.info)) >= 2
    assert not w.of("b", "connection")
    assert w.run_until(lambda: w.of("b", "connection"), 2 * dht_peers.REANNOUNCE_WAIT, step=0.1)
    (_, _, _, (peer,)), *_ = w.of("b", "peer")
    assert (peer.host, peer.port) == ("10.0.0.2", a.address()[1])
    w.stop_all(pending=[da, db])


@pytest.mark.parametrize("transport", ["tcp", "utp"])
def test_peer_vanishes_mid_transfer(logs, transport):
    """a streams to b when a's host drops off the network: b's connection
    ends within the documented bound (TCP keepalive: 30 s idle + 3 probes
    10 s apart; uTP: 90 s heard nothing) with a 'disconnection' event and a
    log line; when a's host is back, b redials it on the requeue schedule."""
    w = World()
    a = w.swarm("a", "10.0.0.2")
    b = w.swarm("b", "10.0.0.3")
    a.join(T1, announce=True, lookup=False)
    w.run(1)
    if transport == "utp":
        w.net.tcp_unlisten(("10.0.0.2", a.address()[1]))
    b.join(T1)
    w.run(3)
    (_, _, _, (sa, ia)), = w.of("a", "connection")
    (_, _, _, (sb, ib)), = w.of("b", "connection")
    assert ib.type == transport
    got, heard = [], []
    sb.on_data = lambda data: (got.append(data), heard.append(w.now()))
    sb.write(b"go")  # (a uTP acceptor sends once it heard the dialler's data)
    sa.write(b"x" * 4_000_000)  # far more than one window: mid-transfer below
    w.run(0.01 if transport == "tcp" else 0.3)
    assert 0 < len(b"".join(got)) < 4_000_000
    dials = []
    real_connect = b.network.connect

    def connect(peer):
        dials.append([w.now(), None])
        return real_connect(peer).addBoth(lambda r: (dials[-1].__setitem__(1, (w.now(), r)), r)[1])

    b.network.connect = connect
    gone = w.now()
    w.net.down.add(("10.0.0.2", None))
    # nothing a's host sent is heard any more either (TCP segments in
    # flight towards b still are: b's keepalive bound counts from them)
    w.net.drop = lambda data, src, dst: src[0] == "10.0.0.2"
    bound = 60.0 if transport == "tcp" else 90.0
    assert w.run_until(lambda: w.of("b", "disconnection"), bound + 5, step=0.01)
    ended = w.of("b", "disconnection")[0][0]
    # (a's host still sends what was in flight, a window's worth: b hears it)
    assert heard[-1] - gone < 1.0
    assert ended - heard[-1] <= bound + 0.1  # + clock steps
    assert len(b"".join(got)) < 4_000_000
    if transport == "tcp":
        assert logs.having("tcp connection to 10.0.0.2:%d lost: " % a.address()[1],
                           LogLevel.info)[0].endswith("Connection timed out (keepalive).")
    else:
        assert logs.having("heard nothing for 90 s: aborting it", LogLevel.info)
    # b redials at once (~1 s: the first requeue slot); a is still gone:
    # that dial times out and b requeues a in the ~5 s slot
    w.run(14, step=0.05)
    back = w.now()
    w.net.down.discard(("10.0.0.2", None))
    w.net.drop = None
    assert w.run_until(lambda: len(w.of("b", "connection")) == 2, 30, step=0.05)
    (first, (failed, why)), (second, (made, conn)) = dials
    assert 1.0 <= first - ended <= 2.05
    assert why.check(DialTimeout) and failed - first == pytest.approx(CONNECTION_TIMEOUT, abs=0.1)
    assert logs.having("failed: " + str(why.value), LogLevel.debug)
    assert 5.0 <= second - failed <= 10.05 and second > back
    (at, _, _, (proto, info)) = w.of("b", "connection")[1]
    assert at == made and info.client and conn.remote == ("10.0.0.2", a.address()[1])
    w.stop_all()


def test_socket_error_on_send(logs):
    """a's UDP socket refuses every datagram for a while (ENOBUFS): each is
    counted in dropped["send_error"], one warning says so (not one per
    datagram), a join made meanwhile fails; once the socket sends again a
    keeps working: a new join announces and b finds and connects to a."""
    import errno

    w = World()
    a = w.swarm("a", "10.0.0.2")
    b = w.swarm("b", "10.0.0.3")
    w.run(1)
    udp = a.network.udp
    assert udp.dropped["send_error"] == 0

    def refuse(data, src, dst):
        if src[0] == "10.0.0.2":
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return False

    w.net.drop = refuse
    j1, d1 = fired(a.join(T1, announce=True, lookup=False))
    w.run(30, step=0.05)
    assert j1 == [False]
    refused = udp.dropped["send_error"]
    assert refused >= 3
    warned = logs.having("cannot send a UDP datagram to ", LogLevel.warn)
    assert len(warned) == 1 and "No buffer space available" in warned[0]
    assert logs.having("announce of " + T1.hex() + " failed", LogLevel.warn)
    w.net.drop = None
    T2 = b"\x13" * 32
    j2, d2 = fired(a.join(T2, announce=True, lookup=False))
    w.run(2)
    assert j2 == [True] and udp.dropped["send_error"] == refused
    jb, db = fired(b.join(T2))
    w.run(3)
    assert jb == [True] and len(w.of("b", "connection")) == 1
    assert udp.stats()["dropped"]["send_error"] == refused
    w.stop_all(pending=[d1, d2, db])


def test_port_taken(logs, logged_errors):
    """port=P with P taken (TCP or UDP): join errbacks with BindError and
    one line is logged; preferred_port=P with P taken binds P+1."""
    w = World()
    blocker = w.swarm("x", "10.0.0.2", port=40000)
    w.run(0.1)
    assert blocker.address() == ("0.0.0.0", 40000)
    a = w.swarm("a", "10.0.0.2", port=40000)
    ja, da = fired(a.join(T1))
    w.run(0.1)
    assert len(ja) == 1 and ja[0].check(BindError)
    lines = logs.having("could not bind")
    assert len(lines) == 1 and "40000" in lines[0] and "Address already in use" in lines[0]
    assert logged_errors.take(BindError)
    assert a.address() is None
    # preferred_port: the next one
    c = w.swarm("c", "10.0.0.2", preferred_port=40000)
    jc, dc = fired(c.join(T1))
    w.run(1)
    assert jc == [False] or jc == [True]
    assert c.address() == ("0.0.0.0", 40001)
    assert len(logs.having("could not bind")) == 1
    # only the UDP port taken: TCP listens, UDP fails, the listener closes again
    from twisted.internet.protocol import DatagramProtocol

    held = w.net.reactor("10.0.0.4").listenUDP(40010, DatagramProtocol())
    d = w.swarm("d", "10.0.0.4", port=40010)
    jd, dd = fired(d.join(T1))
    w.run(0.1)
    assert jd[0].check(BindError) and logged_errors.take(BindError)
    assert ("10.0.0.4", 40010) not in w.net.listening()
    assert len(logs.having("could not bind")) == 2
    e = w.swarm("e", "10.0.0.4", preferred_port=40010)
    w.run(0.1)
    assert e.address() == ("0.0.0.0", 40011)
    held.stopListening()
    w.stop_all(pending=[da, dc, dd])
