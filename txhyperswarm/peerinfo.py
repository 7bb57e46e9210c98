"""
:class:`PeerInfo`: what the swarm knows about one peer, as hyperswarm
2.15.3's ``lib/peer-info.js`` (swarm.md 1.4 and 2.2).

A *client* info stands for one queue identity (swarm.md 2.1) and lives as
long as the queue remembers that identity: it is queued, dialled, connected,
backed off and finally forgotten by :class:`txhyperswarm.queue.PeerQueue`.
A *server* info is made for each accepted connection and is never queued.

Where an info is in its life is :attr:`PeerInfo.stage`, a :class:`Stage`;
the queue moves it with :meth:`PeerInfo.move` and an :class:`Event`, along
the explicit table :data:`TRANSITIONS` (anything else raises
:class:`InvalidTransition`: a bug). A client info's life:

=============  ================  =======================================
from           event             to
=============  ================  =======================================
NEW            enqueue           QUEUED (found; ``add``)
QUEUED         shift             DIALLING (handed out by ``shift``)
DIALLING       connect           CONNECTED (``info.connected``)
NEW            connect           CONNECTED (``direct``: a raw dial)
CONNECTED      disconnect        CLOSED (``info.disconnected``, a ban)
DIALLING,      back_off          BACKING_OFF (``requeue``: a retry left)
CLOSED
BACKING_OFF    enqueue           QUEUED (its bulk timer fired)
DIALLING,      forget_later      FORGETTING (``requeue``: retries used
CLOSED, NEW,                     up or reconnect off)
BACKING_OFF
NEW, QUEUED,   ban_rest          BANNED (banned while waiting, or
DIALLING,                        ``requeue`` of a banned info)
CLOSED,
BACKING_OFF,
FORGETTING
BANNED         restore           NEW (a dedup loser's survivor closed)
any but        forget            FORGOTTEN (forget timer, ``remove``,
FORGOTTEN                        ``skip``; terminal)
=============  ================  =======================================

A server info starts CONNECTED and ends CLOSED; so does a ``direct`` one
(the swarm's raw ``connect()``), which the queue never requeues.

The flags of Node's status word that are not a position (PROVEN,
RECONNECT, BANNED, TRIED, FIREWALLED) stay flags: :attr:`proven`,
:attr:`reconnecting`, :attr:`banned`, :attr:`tried`, :attr:`firewalled`.

The info never touches a socket: the swarm attaches a *connection*, any
object with ``loseConnection()`` (graceful, Node's ``end()``) and
``abortConnection()`` (Node's ``destroy()``) -- a Twisted TCP or uTP
transport as it is (:class:`IPeerConnection`).
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from pyee import EventEmitter
from twisted.logger import Logger
from zope.interface import Interface

from txhyperswarm.peer_record import PeerRecord

__all__ = [
    "PeerInfo",
    "Stage",
    "Event",
    "TRANSITIONS",
    "InvalidTransition",
    "IPeerConnection",
    "IPeerOwner",
    "canonical_host",
    "queue_id",
    "priority_of",
    "MAX_RETRIES",
    "ZERO_ID",
]

#: The retry step gives up after this many requeues (Node's constant 3,
#: not the length of the ``requeue`` option).
MAX_RETRIES = 3

#: ``deduplicate``'s second argument when none is given (Node: 32 zero bytes).
ZERO_ID = bytes(32)


class IPeerConnection(Interface):
    """The two things an info does to its connection (a transport fits)."""

    def loseConnection():  # type: ignore[misc]  # a zope Interface method: no self
        """Close gracefully (FIN after pending data): Node's ``end()``."""

    def abortConnection():  # type: ignore[misc]
        """Close at once: Node's ``destroy()``."""


class IPeerOwner(Interface):
    """
    What a :class:`PeerInfo` calls up through: implemented by
    :class:`txhyperswarm.queue.PeerQueue`.
    """

    def seconds():  # type: ignore[misc]
        """The current time (the queue's ``IReactorTime``)."""

    def info_banned(info):
        """``info`` was just banned: take it out of the queue and timers."""

    def info_disconnected(info):
        """``info``'s connection ended: drop its dedup entry, un-ban losers."""

    def deduplicate(local_id, remote_id, info):
        """Node's ``queue.deduplicate`` (swarm.md 1.4): ``True`` if dropped."""


class Stage(enum.Enum):
    """Where an info is in its life (see the module docstring)."""

    NEW = "new"  #: made, not queued yet
    QUEUED = "queued"  #: waiting in the priority queue for a dial slot
    DIALLING = "dialling"  #: handed out by ``shift()``; the dial is running
    CONNECTED = "connected"  #: a connection is attached
    CLOSED = "closed"  #: the connection ended; ``requeue()`` decides what next
    BACKING_OFF = "backing_off"  #: waiting in a requeue slot's bulk timer
    FORGETTING = "forgetting"  #: waiting to be forgotten (unresponsive)
    BANNED = "banned"  #: banned; forgotten after ``forget_banned`` (never by default)
    FORGOTTEN = "forgotten"  #: the queue dropped it (terminal)


class Event(enum.Enum):
    """The inputs that move an info from one :class:`Stage` to another."""

    ENQUEUE = "enqueue"
    SHIFT = "shift"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    BACK_OFF = "back_off"
    FORGET_LATER = "forget_later"
    BAN_REST = "ban_rest"
    RESTORE = "restore"
    FORGET = "forget"


S, E = Stage, Event

#: The whole machine: ``(stage, event) -> next stage``.
TRANSITIONS: Dict[Tuple[Stage, Event], Stage] = {
    (S.NEW, E.ENQUEUE): S.QUEUED,
    (S.BACKING_OFF, E.ENQUEUE): S.QUEUED,
    (S.QUEUED, E.SHIFT): S.DIALLING,
    (S.DIALLING, E.CONNECT): S.CONNECTED,
    (S.NEW, E.CONNECT): S.CONNECTED,
    (S.CONNECTED, E.DISCONNECT): S.CLOSED,
    (S.DIALLING, E.BACK_OFF): S.BACKING_OFF,
    (S.CLOSED, E.BACK_OFF): S.BACKING_OFF,
    (S.DIALLING, E.FORGET_LATER): S.FORGETTING,
    (S.CLOSED, E.FORGET_LATER): S.FORGETTING,
    (S.BACKING_OFF, E.FORGET_LATER): S.FORGETTING,
    (S.NEW, E.FORGET_LATER): S.FORGETTING,
    (S.BANNED, E.RESTORE): S.NEW,
}
for _stage in (S.NEW, S.QUEUED, S.DIALLING, S.CLOSED, S.BACKING_OFF, S.FORGETTING):
    TRANSITIONS[(_stage, E.BAN_REST)] = S.BANNED
for _stage in Stage:
    if _stage is not S.FORGOTTEN:
        TRANSITIONS[(_stage, E.FORGET)] = S.FORGOTTEN
del _stage, S, E

#: Stages in which the info is not waiting anywhere in the queue (Node's
#: ACTIVE bit, plus the connection's own lifetime).
ACTIVE_STAGES: FrozenSet[Stage] = frozenset(
    {Stage.DIALLING, Stage.CONNECTED, Stage.CLOSED}
)


class InvalidTransition(Exception):
    """An info was asked to move along an edge the machine does not have."""


def canonical_host(host: str) -> str:
    """
    One spelling per address: ``::ffff:1.2.3.4`` is ``1.2.3.4`` and IPv6
    addresses are compressed, so one peer has one queue identity
    (hyperswarm#75). Names (an mDNS SRV target) are kept verbatim.
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def queue_id(record: PeerRecord, multiplex: bool) -> str:
    """
    The queue identity of a found peer (swarm.md 2.1): ``host:port``, plus
    ``@<hex topic>`` unless ``multiplex``; the host in :func:`canonical_host`
    form.
    """
    base = f"{canonical_host(record.host)}:{record.port}"
    if multiplex or not record.topic:
        return base
    return base + "@" + record.topic.hex()


def priority_of(info: "PeerInfo") -> int:
    """Node's ``priority(info)`` (swarm.md 2.2): 0..5, higher dials first."""
    if info.tried and not info.proven:
        return 0
    if info.retries == 3:
        return 1
    if info.retries == 2:
        return 4
    if info.retries == 1:
        return 5
    return 3 if info.peer is not None and info.peer.local else 2


def _initial_priority(peer: Optional[PeerRecord]) -> int:
    if peer is None:
        return 2
    if peer.local:
        return 3
    if peer.to is not None and canonical_host(peer.to[0]) == canonical_host(peer.host):
        return 1  # behind our own public IP: one attempt only (gotcha 36)
    return 2


class PeerInfo(EventEmitter):
    """
    One peer as the swarm sees it (Node's ``PeerInfo``); events ``"topic"``
    (topic) when a topic is attached and ``"duplicate"`` () when
    :meth:`deduplicate` drops this connection (pyee).

    Made by the queue only: :meth:`txhyperswarm.queue.PeerQueue.add` for
    found peers (``client=True``), :meth:`~txhyperswarm.queue.PeerQueue.accepted`
    for inbound connections (``client=False``),
    :meth:`~txhyperswarm.queue.PeerQueue.direct` for a raw ``connect()``.

    :ivar peer: the first :class:`~txhyperswarm.peer_record.PeerRecord` seen
        for this queue identity (``None`` for inbound).
    :ivar client: ``True`` if we dial this peer.
    :ivar remote: ``(host, port)`` of the peer: the record's address (host in
        :func:`canonical_host` form) or the accepted connection's remote end.
    :ivar local: whether the peer is on the LAN.
    :ivar topics: the topics of the current connection (swarm.md 2.5).
    :ivar duplicate: set when :meth:`deduplicate` dropped this connection.
    :ivar retries: the retry count of swarm.md 2.2.
    :ivar priority: the priority of swarm.md 2.2.
    :ivar connection: the attached :class:`IPeerConnection`, or ``None``.
    """

    log = Logger()

    def __init__(
        self,
        owner: Any,
        peer: Optional[PeerRecord],
        *,
        remote: Optional[Tuple[str, int]] = None,
        local: Optional[bool] = None,
        stable_after: float = 0.0,
    ) -> None:
        super().__init__()
        self._owner = owner
        self.peer = peer
        self.client = peer is not None
        if remote is None and peer is not None:
            remote = (canonical_host(peer.host), peer.port)
        self.remote: Optional[Tuple[str, int]] = remote
        self.local = bool(peer.local if (local is None and peer is not None) else local)
        self.priority = _initial_priority(peer)
        self.retries = MAX_RETRIES if self.priority == 1 else 0
        self.connection: Optional[Any] = None
        self.duplicate = False
        self.topics: List[bytes] = []
        self.proven = False
        self.tried = False
        self.reconnecting = True
        self.banned = False
        self.firewalled = True
        self.dedup_key: Optional[str] = None
        self._seen: Dict[str, bytes] = {}
        self._stage = Stage.NEW if self.client else Stage.CONNECTED
        self._generation = 0
        self._stable_after = stable_after
        self._connected_at: Optional[float] = None
        self._retries_at_connect = 0

    def __repr__(self) -> str:
        where = f"{self.remote[0]}:{self.remote[1]}" if self.remote else "?"
        side = "client" if self.client else "server"
        return f"<PeerInfo {side} {where} {self._stage.value} retries={self.retries}>"

    # -- read-only views --------------------------------------------------

    @property
    def stage(self) -> Stage:
        """Where the info is in its life."""
        return self._stage

    @property
    def generation(self) -> int:
        """Counts :meth:`move` calls: a timer entry taken at one generation is
        stale once the info moved on."""
        return self._generation

    @property
    def type(self) -> str:
        """``"utp"`` until a TCP connection was recorded, then ``"tcp"`` for
        good (Node's sticky FIREWALLED bit, gotcha 19; :meth:`deduplicate`
        compares it, so both ends must compute it alike)."""
        return "utp" if self.firewalled else "tcp"

    @property
    def prioritised(self) -> bool:
        """``priority >= 2`` (counted by ``flush``, swarm.md 2.3)."""
        return self.priority >= 2

    @property
    def known_topics(self) -> List[bytes]:
        """Every topic this identity was found on, in order (never cleared)."""
        return list(self._seen.values())

    # -- the machine ------------------------------------------------------

    def move(self, event: Event) -> Stage:
        """
        Take the edge ``(stage, event)`` of :data:`TRANSITIONS` (the queue's
        seam; the swarm uses :meth:`connected` / :meth:`disconnected`).

        :raises InvalidTransition: no such edge.
        """
        try:
            nxt = TRANSITIONS[(self._stage, event)]
        except KeyError:
            raise InvalidTransition(
                f"{self!r}: no transition on {event.value} from {self._stage.value}"
            ) from None
        self._stage = nxt
        self._generation += 1
        if event is Event.SHIFT:
            self.tried = True
        return nxt

    # -- what the queue asks ----------------------------------------------

    def update(self) -> bool:
        """
        Node's ``update()`` without the ACTIVE bit (the stage says that):
        ``False`` when banned or past the last retry, else recompute the
        priority and ``True``.
        """
        if self.banned or self.retries > MAX_RETRIES:
            return False
        self.priority = priority_of(self)
        return True

    def retry_step(self) -> int:
        """
        Node's ``PeerInfo.requeue()``: the backoff slot (0, 1 or 2) to wait
        in, incrementing :attr:`retries`, or ``-1`` to forget (banned,
        reconnect off, or retries used up; the last also increments).
        """
        if self.banned or not self.reconnecting:
            return -1
        if self.retries >= MAX_RETRIES:
            self.retries += 1
            return -1
        slot = self.retries
        self.retries += 1
        return slot

    def add_topic(self, topic: bytes) -> None:
        """Attach a topic once (emits ``"topic"``), as Node's ``topic()``."""
        key = topic.hex()
        if key in self._seen:
            return
        self._seen[key] = topic
        self.topics.append(topic)
        self.emit("topic", topic)

    def restore(self) -> None:
        """
        Become as fresh as a newly found peer (the dedup un-ban, swarm.md 1.4
        item 7): not banned, not tried or proven, initial retries, the first
        topic only.
        """
        self.move(Event.RESTORE)
        self.banned = False
        self.duplicate = False
        self.proven = False
        self.tried = False
        self.priority = _initial_priority(self.peer)
        self.retries = MAX_RETRIES if self.priority == 1 else 0
        first = self.peer.topic if self.peer is not None else None
        self._seen = {first.hex(): first} if first else {}
        self.topics = [first] if first else []

    def unban(self) -> None:
        """Clear the ban flag only (a dedup loser whose close is still pending)."""
        self.banned = False

    # -- what the swarm calls ---------------------------------------------

    def connected(self, connection: Any, tcp: bool) -> None:
        """
        A connection to/from this peer is up (Node's ``connected()``): sets
        PROVEN, resets :attr:`retries` (so :meth:`backoff` must come after
        the ``"connection"`` event), clears FIREWALLED for TCP. A banned
        info hard-bans the new connection at once (gotcha 21: the swarm
        still emits ``"connection"``, then ``"disconnection"``).
        """
        if self.client and self._stage is not Stage.FORGOTTEN:
            self.move(Event.CONNECT)
        if tcp:
            self.firewalled = False
        self.proven = True
        self.duplicate = False
        self.connection = connection
        self._connected_at = self._owner.seconds()
        self._retries_at_connect = self.retries
        self.retries = 0
        if self.topics == [] and self._seen:
            # Node leaves [] from the second connection on (gotcha 20).
            self.topics = list(self._seen.values())
        if self.banned or self._stage is Stage.FORGOTTEN:
            self.banned = True
            self.ban()

    def disconnected(self) -> None:
        """
        The connection ended (Node's ``disconnected()``); idempotent. Clears
        :attr:`connection` and :attr:`topics` and the ``"topic"`` listeners.
        A connection that lived less than the queue's ``stable_after`` does
        not wipe the retries made before it (fix for gotcha 13), so a peer
        that closes at once after every connect backs off and is forgotten.
        """
        if self._stage is Stage.CONNECTED:
            self.move(Event.DISCONNECT)
        elif self.connection is None:
            return
        self.connection = None
        self.topics = []
        self.remove_all_listeners("topic")
        if self._connected_at is not None:
            lived = self._owner.seconds() - self._connected_at
            if lived < self._stable_after:
                self.retries += self._retries_at_connect
            self._connected_at = None
        self._owner.info_disconnected(self)

    def ban(self, soft: bool = False) -> None:
        """
        Ban this peer (Node's ``ban()``). Hard: the connection is aborted and
        the queue never dials this identity again (until ``forget_banned``).
        ``soft`` (what dedup uses): the connection is ended gracefully. On a
        server info it only closes that connection.
        """
        self.banned = True
        conn = self.connection
        if conn is not None:
            self.log.info("{info!r} banned ({how})", info=self, how="soft" if soft else "hard")
            if soft:
                conn.loseConnection()
            else:
                conn.abortConnection()
            self.disconnected()
        self._owner.info_banned(self)

    def backoff(self) -> Optional[bool]:
        """
        Make the next requeue of this client use a later slot (Node's
        ``backoff()``); ``None`` for a server info. ``False`` when banned or
        the retries are used up (the peer is then forgotten on close).
        """
        if not self.client:
            return None
        self.retry_step()
        if self.banned or self.retries > MAX_RETRIES:
            return False
        self.priority = priority_of(self)
        return True

    def reconnect(self, value: bool) -> None:
        """With ``False`` the peer is not requeued after a failure or close."""
        self.reconnecting = bool(value)

    def deduplicate(self, local_id: bytes, remote_id: bytes = ZERO_ID) -> bool:
        """
        Given both ends' ids (exchanged by the application), drop this
        connection if the same pair is already connected another way;
        ``True`` if this connection is the duplicate. Node's exact rule
        (swarm.md 1.4): same transport type -> the connection dialled by the
        peer with the smaller id (bytewise) survives; else TCP survives.
        """
        return self._owner.deduplicate(local_id, remote_id, self)

