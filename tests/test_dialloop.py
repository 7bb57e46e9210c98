"""
The dial loop and connection counting (swarm.md 1.6, 2.6) with a tiny fake
dialer on a Clock.
"""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from txhyperswarm.dialloop import DialLoop
from txhyperswarm.peer_record import PeerRecord
from txhyperswarm.peerinfo import Stage
from txhyperswarm.queue import PeerQueue

T1 = b"\x01" * 32
T2 = b"\x02" * 32


def record(n, topic=T1):
    return PeerRecord(topic=topic, host="10.0.%d.%d" % (n // 250, n % 250 + 1), port=4000,
                      local=False, referrer=("8.8.8.8", 49737), to=("9.9.9.9", 1), source="dht")


class Conn:
    def __init__(self, info):
        self.info = info
        self.lost = 0
        self.aborted = 0

    def loseConnection(self):
        self.lost += 1

    def abortConnection(self):
        self.aborted += 1


class Swarm:
    """The listener, a fake dialer and a record of what happened."""

    def __init__(self, clock, **kw):
        self.clock = clock
        self.events = []
        self.limits = []
        self.pending = []          # (info, Deferred) of dials in flight
        self.dialled = []
        self.max_seen = 0
        self.joined = {T1, T2}
        self.q = PeerQueue(clock, kw.pop("options", None), rng=random.Random(0))
        self.loop = DialLoop(clock, self.q, self.dial, self, topic_joined=self.joined.__contains__,
                             **kw)
        self.q.listener = self.loop

    def dial(self, info):
        self.dialled.append(info)
        self.max_seen = max(self.max_seen, self.loop.peers)
        d = defer.Deferred()
        self.pending.append((info, d))
        return d

    def succeed(self, n=None, tcp=True):
        """Let the oldest (or every) pending dial connect."""
        done = []
        while self.pending and (n is None or len(done) < n):
            info, d = self.pending.pop(0)
            conn = Conn(info)
            d.callback((conn, tcp))
            done.append(conn)
        return done

    def fail(self):
        info, d = self.pending.pop(0)
        d.errback(ConnectionRefusedError())
        return info

    # IDialLoopListener
    def connection(self, connection, info):
        self.events.append(("connection", info.client, self.loop.peers))

    def disconnection(self, connection, info):
        self.events.append(("disconnection", info.client, self.loop.peers))

    def inbound_limit(self, limit):
        self.limits.append(limit)


def test_every_peer_found_into_an_empty_queue_is_dialled_at_once():
    s = Swarm(Clock())
    for n in range(3):
        s.q.add(record(n))
    assert len(s.pending) == 3                # each add made the queue readable


def test_one_dial_per_trigger():
    s = Swarm(Clock())
    s.q.listener = None
    for n in range(5):
        s.q.add(record(n))
    s.loop.drain()
    assert len(s.pending) == 1                # one dial per trigger (gotcha 7)
    s.succeed(1)
    assert len(s.pending) == 1                # the completion drains once more
    assert (s.loop.peers, s.loop.client_sockets) == (2, 2)   # in-flight counted (gotcha 8)


def test_thirty_peers_with_max_peers_24():
    clock = Clock()
    s = Swarm(clock, max_peers=24)
    for n in range(30):
        s.q.add(record(n))
    conns = []
    while s.pending:
        conns += s.succeed(1)
    assert len(conns) == 24 and s.loop.peers == 24 and not s.loop.open
    assert s.limits == [-1] and len(s.q) == 6
    clock.advance(60)
    # Free slots one at a time: each close lets one more queued peer in.
    while len(set(s.dialled)) < 30:
        conn = conns.pop(0)
        s.loop.client_closed(conn, conn.info)
        clock.advance(0)                      # the next-macrotask kick
        conns += s.succeed()
        assert s.loop.peers <= 24
    assert s.max_seen == 24
    assert len(set(s.dialled)) == 30
    assert s.loop.peers == 24


def test_dial_failure_requeues_and_drains():
    clock = Clock()
    s = Swarm(clock)
    s.q.add(record(1))
    s.q.add(record(2))
    info = s.fail()
    assert info.stage is Stage.BACKING_OFF
    assert (s.loop.peers, s.loop.client_sockets, len(s.pending)) == (1, 1, 1)
    s.fail()
    clock.advance(1.33)
    assert len(s.pending) == 1                # readable again after the backoff


def test_dial_that_raises_counts_as_failed():
    clock = Clock()
    s = Swarm(clock)

    def boom(info):
        raise OSError("no route")
    s.loop = DialLoop(clock, s.q, boom, s)
    s.q.listener = s.loop
    info = s.q.add(record(1))
    assert info.stage is Stage.BACKING_OFF and s.loop.peers == 0


def test_client_close_requeues_and_kicks_on_the_next_tick():
    clock = Clock()
    s = Swarm(clock, max_peers=1)
    s.q.add(record(1))
    s.q.add(record(2))
    (conn,) = s.succeed()
    assert s.pending == [] and s.limits == [-1]
    s.loop.client_closed(conn, conn.info)
    assert s.events[-1] == ("disconnection", True, 1)   # emitted before peers--
    assert s.limits == [-1, float("inf")] and s.pending == []
    clock.advance(0)
    assert len(s.pending) == 1


def test_inbound_counting_and_no_kick_on_close():
    clock = Clock()
    s = Swarm(clock, max_peers=2, max_server_sockets=7)
    info = s.loop.accepted(object(), ("1.1.1.1", 1), tcp=True, local=True)
    assert s.events == [("connection", False, 0)]       # before the increment (gotcha 9)
    assert (info.client, info.type, info.remote, info.local) == (False, "tcp", ("1.1.1.1", 1), True)
    s.loop.accepted(object(), ("1.1.1.2", 1), tcp=False)
    assert s.limits == [-1] and not s.loop.open
    s.q.add(record(1))
    assert s.pending == []                   # closed: no dial
    s.loop.server_closed(object(), info)
    clock.advance(0)
    assert s.limits == [-1, 7] and s.pending == []      # not kicked (gotcha 10)
    s.q.add(record(2))                       # queue not empty: no readable either
    assert s.pending == []
    s.loop.drain()
    assert len(s.pending) == 1


def test_max_client_sockets_zero_never_dials():
    s = Swarm(Clock(), max_client_sockets=0)
    s.q.add(record(1))
    assert s.pending == [] and len(s.q) == 1


def test_left_topic_is_skipped_and_dialled_again_after_rejoin():
    """Gotcha 12 end to end."""
    clock = Clock()
    s = Swarm(clock)
    s.q.add(record(1))
    info = s.fail()
    s.joined.discard(T1)                      # leave
    clock.advance(1.33)
    assert s.pending == [] and info.stage is Stage.FORGOTTEN
    s.joined.add(T1)                          # re-join; found again
    s.q.add(record(1))
    assert len(s.pending) == 1 and s.pending[0][0] is not info


def test_peer_refusing_at_its_max_peers_backs_off():
    """Gotcha 13 end to end: accept-then-close every time."""
    clock = Clock()
    s = Swarm(clock)
    s.q.add(record(1))
    times = []
    for _ in range(10):
        if not s.pending:
            break
        times.append(round(clock.seconds(), 2))
        (conn,) = s.succeed()
        clock.advance(0.001)
        s.loop.client_closed(conn, conn.info)
        for _ in range(300):
            clock.advance(0.1)
            if s.pending:
                break
    assert len(times) == 4                    # Node: a redial every ~1.32 s for ever
    assert times[1] - times[0] <= 1.4 and times[3] - times[2] >= 9.9


def test_flush_waits_for_the_prioritised_attempts():
    clock = Clock()
    s = Swarm(clock)
    for n in range(3):
        s.q.add(record(n))
    d = s.loop.flush_dials()
    assert not d.called                        # 2 queued + 1 in flight
    s.fail()
    s.succeed(1)
    assert not d.called
    s.fail()
    assert d.called


def test_flush_with_nothing_to_wait_for_fires_at_once():
    s = Swarm(Clock())
    assert s.loop.flush_dials().called


def test_flush_counts_skipped_peers():
    clock = Clock()
    s = Swarm(clock)
    s.q.add(record(1))
    s.fail()
    clock.advance(0.5)
    s.q.add(record(2))
    s.fail()
    d = s.loop.flush_dials()                  # nothing queued or in flight (prioritised: 0)
    assert d.called
    s.joined.clear()
    clock.advance(2)
    assert s.pending == []


def test_flush_cancel_and_stop():
    clock = Clock()
    s = Swarm(clock)
    s.q.add(record(1))
    s.q.add(record(2))
    d1 = s.loop.flush_dials()
    d2 = s.loop.flush_dials()
    d1.cancel()
    failures = []
    d1.addErrback(failures.append)
    s.loop.stop(ValueError("closed"))
    d2.addErrback(failures.append)
    assert [f.type for f in failures] == [defer.CancelledError, ValueError]
    assert s.loop.flush_dials().addErrback(lambda f: f.trap(RuntimeError)) is not None


def test_stop_cancels_the_kick():
    clock = Clock()
    s = Swarm(clock)
    s.q.add(record(1))
    (conn,) = s.succeed()
    s.loop.client_closed(conn, conn.info)
    s.loop.stop()
    s.q.destroy()
    assert clock.getDelayedCalls() == []


def test_a_dial_that_completes_after_stop_is_closed():
    s = Swarm(Clock())
    s.q.add(record(1))
    s.loop.stop()
    (conn,) = s.succeed()
    assert conn.aborted == 1 and s.events == []


def test_listener_error_is_logged(logged_errors):
    s = Swarm(Clock())

    def boom(connection, info):
        raise KeyError("handler")
    s.connection = boom
    s.q.add(record(1))
    s.succeed()
    assert logged_errors.take(KeyError)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 8), st.lists(st.sampled_from(["ok", "fail", "close", "tick", "add"]),
                                     max_size=80))
def test_never_more_than_max_peers(max_peers, script):
    clock = Clock()
    s = Swarm(clock, max_peers=max_peers)
    n = 0
    conns = []
    for step in script:
        if step == "add":
            s.q.add(record(n))
            n += 1
        elif step == "ok" and s.pending:
            conns += s.succeed(1)
        elif step == "fail" and s.pending:
            s.fail()
        elif step == "close" and conns:
            conn = conns.pop(0)
            s.loop.client_closed(conn, conn.info)
        elif step == "tick":
            clock.advance(0.7)
        assert s.loop.peers == len(s.pending) + len(conns) <= max_peers
        assert all(not info.banned for info, _ in s.pending)


def test_dial_loop_provides_its_interfaces():
    from zope.interface.verify import verifyObject
    from txhyperswarm.interfaces import IStatsSource
    from txhyperswarm.queue import IQueueListener
    s = Swarm(Clock())
    assert verifyObject(IQueueListener, s.loop) and verifyObject(IStatsSource, s.loop)
    s.q.add(record(1))
    assert s.loop.stats() == {"peers": 1, "client_sockets": 1, "server_sockets": 0,
                              "queued": 0, "open": True}
