"""
PeerInfo on its own (swarm.md 1.4, 2.2): identity, priorities, the retry
step, ban/backoff/reconnect, and the explicit stage machine.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from twisted.internet.task import Clock

from txhyperswarm.peer_record import PeerRecord
from txhyperswarm.peerinfo import (
    TRANSITIONS,
    Event,
    InvalidTransition,
    PeerInfo,
    Stage,
    canonical_host,
    priority_of,
    queue_id,
)

T1 = b"\x01" * 32
T2 = b"\x02" * 32


def record(host="10.0.0.1", port=4000, topic=T1, local=False, to=("9.9.9.9", 1), source="dht"):
    return PeerRecord(topic=topic, host=host, port=port, local=local,
                      referrer=None if local else ("8.8.8.8", 49737), to=to, source=source)


class Owner:
    """A stand-in for the queue (IPeerOwner)."""

    def __init__(self):
        self.clock = Clock()
        self.banned = []
        self.disconnected = []

    def seconds(self):
        return self.clock.seconds()

    def info_banned(self, info):
        self.banned.append(info)

    def info_disconnected(self, info):
        self.disconnected.append(info)

    def deduplicate(self, a, b, info):
        return (a, b)


class Conn:
    def __init__(self):
        self.lost = 0
        self.aborted = 0

    def loseConnection(self):
        self.lost += 1

    def abortConnection(self):
        self.aborted += 1


def client(peer=None, **kw):
    return PeerInfo(Owner(), peer or record(), **kw)


def dialling(info):
    info.move(Event.ENQUEUE)
    info.move(Event.SHIFT)
    return info


# -- identity ---------------------------------------------------------------

@pytest.mark.parametrize("given_host, canonical", [
    ("1.2.3.4", "1.2.3.4"),
    ("::ffff:1.2.3.4", "1.2.3.4"),
    ("::FFFF:102:304", "1.2.3.4"),
    ("2001:db8:0:0:0:0:0:1", "2001:db8::1"),
    ("printer.local", "printer.local"),
])
def test_canonical_host(given_host, canonical):
    assert canonical_host(given_host) == canonical


def test_queue_id_per_topic_unless_multiplex():
    r = record(host="::ffff:10.0.0.1")
    assert queue_id(r, False) == "10.0.0.1:4000@" + T1.hex()
    assert queue_id(r, True) == "10.0.0.1:4000"
    assert queue_id(record(topic=b""), False) == "10.0.0.1:4000"


def test_remote_and_local():
    info = client(record(host="::ffff:10.0.0.1", local=True, to=None))
    assert info.remote == ("10.0.0.1", 4000)
    assert info.local is True
    assert info.peer.host == "::ffff:10.0.0.1"   # the record as found
    server = PeerInfo(Owner(), None, remote=("127.0.0.1", 5), local=False)
    assert (server.client, server.peer, server.remote, server.local) == (False, None, ("127.0.0.1", 5), False)


# -- priorities ---------------------------------------------------------------

def test_initial_priorities():
    assert (client(record(local=True, to=None)).priority, client(record(local=True)).retries) == (3, 0)
    same_nat = client(record(host="5.5.5.5", to=("5.5.5.5", 777)))
    assert (same_nat.priority, same_nat.retries) == (1, 3)
    mapped = client(record(host="::ffff:5.5.5.5", to=("5.5.5.5", 777)))
    assert mapped.priority == 1
    assert (client().priority, client().retries) == (2, 0)


def test_priority_table():
    info = client()
    info.retries = 1
    assert priority_of(info) == 5
    info.retries = 2
    assert priority_of(info) == 4
    info.retries = 3
    assert priority_of(info) == 1
    info.retries = 0
    assert priority_of(info) == 2
    info.tried = True
    assert priority_of(info) == 0        # tried, never connected
    info.proven = True
    assert priority_of(info) == 2
    assert priority_of(client(record(local=True))) == 3


def test_retry_step_uses_three_slots_then_gives_up():
    info = client()
    assert [info.retry_step() for _ in range(5)] == [0, 1, 2, -1, -1]
    assert info.retries == 5
    assert info.update() is False


def test_retry_step_when_banned_or_not_reconnecting():
    info = client()
    info.reconnect(False)
    assert info.retry_step() == -1 and info.retries == 0
    info.reconnect(True)
    info.banned = True
    assert info.retry_step() == -1


# -- type, connect, disconnect ------------------------------------------------

def test_type_is_utp_until_a_tcp_connection_then_sticky():
    info = dialling(client())
    assert info.type == "utp"
    info.connected(Conn(), tcp=True)
    assert info.type == "tcp"
    info.disconnected()
    info.move(Event.BACK_OFF)
    info.move(Event.ENQUEUE)
    info.move(Event.SHIFT)
    info.connected(Conn(), tcp=False)
    assert info.type == "tcp"              # gotcha 19


def test_connected_resets_retries_and_proves():
    info = dialling(client())
    info.retries = 2
    conn = Conn()
    info.connected(conn, tcp=True)
    assert (info.proven, info.retries, info.connection, info.stage) == (True, 0, conn, Stage.CONNECTED)


def test_disconnected_clears_topics_and_listeners_and_is_idempotent():
    owner = Owner()
    info = dialling(PeerInfo(owner, record()))
    info.add_topic(T1)
    seen = []
    info.on("topic", seen.append)
    info.connected(Conn(), tcp=True)
    info.add_topic(T2)
    assert seen == [T2] and info.topics == [T1, T2]
    info.disconnected()
    info.disconnected()
    assert info.topics == [] and info.connection is None and info.stage is Stage.CLOSED
    assert owner.disconnected == [info]
    info.add_topic(T2)                    # already seen: not re-added
    assert seen == [T2]
    assert info.known_topics == [T1, T2]


def test_reconnect_refills_topics():
    info = dialling(client())
    info.add_topic(T1)
    info.connected(Conn(), tcp=True)
    info.disconnected()
    info.move(Event.BACK_OFF)
    info.move(Event.ENQUEUE)
    info.move(Event.SHIFT)
    info.connected(Conn(), tcp=True)
    assert info.topics == [T1]            # Node: [] (gotcha 20)


def test_short_connection_keeps_the_retries_made_before_it():
    owner = Owner()
    info = dialling(PeerInfo(owner, record(), stable_after=5.0))
    info.retries = 2
    info.connected(Conn(), tcp=True)
    assert info.retries == 0
    owner.clock.advance(0.01)
    info.disconnected()
    assert info.retries == 2


def test_long_connection_resets_the_retries():
    owner = Owner()
    info = dialling(PeerInfo(owner, record(), stable_after=5.0))
    info.retries = 2
    info.connected(Conn(), tcp=True)
    owner.clock.advance(5.0)
    info.disconnected()
    assert info.retries == 0


def test_backoff_during_a_short_connection_adds_up():
    owner = Owner()
    info = dialling(PeerInfo(owner, record(), stable_after=5.0))
    info.retries = 1
    info.connected(Conn(), tcp=True)
    assert info.backoff() is True
    info.disconnected()
    assert info.retries == 2


# -- ban, backoff, reconnect ----------------------------------------------------

def test_hard_ban_aborts_the_connection():
    owner = Owner()
    info = dialling(PeerInfo(owner, record()))
    conn = Conn()
    info.connected(conn, tcp=True)
    info.ban()
    assert (conn.aborted, conn.lost, info.banned, info.connection) == (1, 0, True, None)
    assert info.stage is Stage.CLOSED and owner.banned == [info]


def test_soft_ban_ends_the_connection():
    info = dialling(client())
    conn = Conn()
    info.connected(conn, tcp=False)
    info.ban(soft=True)
    assert (conn.aborted, conn.lost, info.banned) == (0, 1, True)


def test_banned_while_dialling_drops_the_new_connection():
    info = dialling(client())
    info.ban()
    conn = Conn()
    info.connected(conn, tcp=True)        # gotcha 21
    assert conn.aborted == 1 and info.connection is None and info.stage is Stage.CLOSED


def test_server_info_ban_and_backoff():
    info = PeerInfo(Owner(), None, remote=("1.1.1.1", 1))
    conn = Conn()
    info.connected(conn, tcp=True)
    assert info.backoff() is None
    info.ban()
    assert conn.aborted == 1 and info.banned


def test_backoff_three_times_then_false():
    info = dialling(client())
    info.connected(Conn(), tcp=True)
    assert [info.backoff() for _ in range(4)] == [True, True, True, False]
    assert info.priority == 1


def test_backoff_false_when_banned():
    info = client()
    info.banned = True
    assert info.backoff() is False


def test_deduplicate_goes_to_the_owner_with_zero_default():
    info = client()
    assert info.deduplicate(b"a") == (b"a", bytes(32))


# -- the machine ----------------------------------------------------------------

def test_invalid_transition_raises():
    info = client()
    with pytest.raises(InvalidTransition):
        info.move(Event.SHIFT)


def test_forgotten_is_terminal():
    assert not [e for (s, e) in TRANSITIONS if s is Stage.FORGOTTEN]
    assert all((s, Event.FORGET) in TRANSITIONS for s in Stage if s is not Stage.FORGOTTEN)


@given(st.lists(st.sampled_from(list(Event)), max_size=30))
def test_moves_follow_the_table_only(events):
    info = client()
    for event in events:
        before = info.stage
        gen = info.generation
        if (before, event) in TRANSITIONS:
            assert info.move(event) is TRANSITIONS[(before, event)]
            assert info.generation == gen + 1
        else:
            with pytest.raises(InvalidTransition):
                info.move(event)
            assert info.stage is before and info.generation == gen
        if event is Event.SHIFT and info.stage is Stage.DIALLING:
            assert info.tried
