"""
The swarm's peer queue: whom to dial next and when, as hyperswarm 2.15.3's
``lib/queue.js`` and ``lib/bulk-timer.js`` (swarm.md 2.1-2.7), driven by an
injected ``IReactorTime`` and knowing nothing of sockets.

The seam the swarm (or :class:`txhyperswarm.dialloop.DialLoop`) uses:

- :meth:`PeerQueue.add` for every found peer that passed ``validate_peer``;
- :meth:`PeerQueue.shift` for the next peer to dial (``None``: none); then
  exactly one of :meth:`PeerQueue.skip` (its topic was left: not dialled),
  ``info.connected(connection, tcp)`` (the dial worked) or
  :meth:`PeerQueue.requeue` (the dial failed);
- after a dialled connection closed: ``info.disconnected()`` then
  :meth:`PeerQueue.requeue`;
- :meth:`PeerQueue.accepted` for every inbound connection, and
  :meth:`PeerQueue.direct` for a raw ``connect()`` (then
  ``info.disconnected()`` when it closes);
- :meth:`PeerQueue.remove` to forget a peer now, :meth:`PeerQueue.destroy`
  on shutdown.

The queue tells its listener (:class:`IQueueListener`) ``readable()`` when
it goes from empty to non-empty, as Node's ``'readable'`` (gotcha 31).

Differences from Node 2.15.3 (local bookkeeping only; what goes on the wire
and what both ends of a connection must agree on, swarm.md 5.3, is kept):

- Dedup loser un-banned (1.4 item 7, gotcha 18). Node: the client
  connection dropped by ``deduplicate`` stays banned for ever (its un-ban
  hook looks the info up under ``undefined:undefined``). Here, when the
  surviving connection closes and the survivor was not banned, the loser is
  made fresh and queued again (what Node's hook meant to do). Same rule for
  which connection is dropped. A second ``deduplicate`` call on the same
  connection returns ``False`` instead of dropping it as its own duplicate.
- Peers queued for a left topic (gotcha 12). Node: the dial loop skips such
  a peer and leaves it ACTIVE for ever, so that ``host:port@topic`` is never
  dialled again, even after re-joining. Here :meth:`PeerQueue.skip` forgets
  it, so the next discovery after a re-join dials it. (The skip still counts
  as a dial attempt for ``flush``, as Node.)
- Peers that close right after every connect (1.6, gotcha 13). Node resets
  the retries on every connect, so a peer that accepts and closes at once
  (e.g. refused at its own ``max_peers``) is redialled about every 1.3 s
  for ever. Here a connection that lived less than
  :attr:`QueueOptions.stable_after` (5 s) keeps the retries made before it:
  such a peer is redialled on the requeue schedule (~1, ~5, ~15 s) and then
  forgotten until it is found again. A connection that lived longer
  reconnects as Node (~1 s, top priority).
- One identity per address (hyperswarm#75). Node: ``1.2.3.4`` and
  ``::ffff:1.2.3.4`` are two ids, two infos, two connections. Here hosts are
  compared in canonical form (IPv4-mapped IPv6 as IPv4, IPv6 compressed);
  ``info.remote`` holds that form, ``info.peer`` the record as found.
- Banning a queued or waiting peer takes it out of the queue at once
  (Node leaves it queued and dials it, then drops the connection); so the
  queue never hands out a banned peer.
- A forget timer only forgets the info it was set for (Node forgets by id,
  which could drop a newer info of the same id).
- ``info.topics`` is refilled with the known topics on every connect (Node
  leaves it ``[]`` from the second connection of an info on, gotcha 20).
- A bulk timer that missed ticks (a late reactor) fires everything pushed
  before them at once (Node's interval fires once and leaves the rest for
  the next tick).
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import attrs
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface, implementer

from txhyperswarm.peer_record import PeerRecord
from txhyperswarm.peerinfo import (
    ACTIVE_STAGES,
    Event,
    IPeerOwner,
    PeerInfo,
    Stage,
    queue_id,
)

__all__ = [
    "QueueOptions",
    "PeerQueue",
    "BulkTimer",
    "IQueueListener",
    "DEFAULT_REQUEUE",
]

#: Node's backoff slots, in seconds.
DEFAULT_REQUEUE = (1.0, 5.0, 15.0)


def _requeue_slots(value: Any) -> Tuple[float, float, float]:
    """Node's rule: the first three entries, missing/``None`` ones default."""
    given = list(value or ())
    out = []
    for i, default in enumerate(DEFAULT_REQUEUE):
        v = given[i] if i < len(given) else None
        out.append(float(default if v is None else v))
    return (out[0], out[1], out[2])


@attrs.frozen
class QueueOptions:
    """
    The swarm's ``queue`` option (Node's ``{requeue, forget: {unresponsive,
    banned}, multiplex}``), in seconds.

    :ivar requeue: the three backoff delays (entries past the third are
        ignored, as Node; missing ones default).
    :ivar forget_unresponsive: how long an exhausted peer is remembered (and
        its rediscovery ignored); ``inf``: for ever.
    :ivar forget_banned: how long a banned peer is remembered; ``inf`` (the
        default): for ever.
    :ivar multiplex: one identity per ``host:port`` for all topics.
    :ivar stable_after: a connection that lived less than this does not
        reset the retries (not in Node; see the module docstring).
    """

    requeue: Tuple[float, float, float] = attrs.field(
        default=DEFAULT_REQUEUE, converter=_requeue_slots
    )
    forget_unresponsive: float = attrs.field(default=7.5, converter=float)
    forget_banned: float = attrs.field(default=math.inf, converter=float)
    multiplex: bool = attrs.field(default=False, converter=bool)
    stable_after: float = attrs.field(default=5.0, converter=float)


class IQueueListener(Interface):
    """What the queue tells its owner."""

    def readable():  # type: ignore[misc]  # a zope Interface method: no self
        """The queue went from empty to non-empty: time to ``shift()``."""


class BulkTimer:
    """
    Node's bulk timer (swarm.md 2.7): one interval of ``floor(ms * 0.66)``
    started on the first push and running until :meth:`stop`; an item fires
    on the second tick after it was pushed, so after 0.66x-1.32x the delay
    (exactly 1.32x for the first item of a fresh timer). ``fire(batch)`` gets
    the items of a tick as one list. When the clock skipped ticks (a late
    reactor, a big ``Clock.advance``), everything pushed before them is due.
    """

    log = Logger()

    def __init__(self, clock: Any, delay: float, fire: Callable[[List[Any]], None]) -> None:
        self._clock = clock
        ms = int(round(delay * 1000))
        self.period = max(math.floor(ms * 0.66), 1) / 1000.0
        self._fire = fire
        self._loop: Optional[LoopingCall] = None
        self._next: List[Any] = []
        self._pending: List[Any] = []
        self._stopped = False

    def push(self, item: Any) -> None:
        if self._stopped:
            return
        if self._loop is None:
            self._loop = LoopingCall.withCount(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self.period, now=False)
        self._pending.append(item)

    def _tick(self, ticks: int) -> None:
        if ticks >= 2:  # the reactor was late: everything pushed is due
            batch, self._next, self._pending = self._next + self._pending, [], []
        else:
            batch, self._next, self._pending = self._next, self._pending, []
        if batch:
            try:
                self._fire(batch)
            except Exception:
                self.log.failure("bulk timer callback failed")

    def stop(self) -> None:
        self._stopped = True
        self._next = []
        self._pending = []
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


class _Buckets:
    """Node's shuffled priority queue: highest bucket first, random within."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._buckets: List[List[PeerInfo]] = []
        self._where: Dict[PeerInfo, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, info: PeerInfo) -> bool:
        return info in self._where

    def add(self, info: PeerInfo) -> None:
        prio = max(info.priority, 0)
        while prio >= len(self._buckets):
            self._buckets.append([])
        self._buckets[prio].append(info)
        self._where[info] = prio

    def remove(self, info: PeerInfo) -> bool:
        prio = self._where.pop(info, None)
        if prio is None:
            return False
        self._buckets[prio].remove(info)
        return True

    def shift(self) -> Optional[PeerInfo]:
        for bucket in reversed(self._buckets):
            if bucket:
                i = self._rng.randrange(len(bucket))
                bucket[i], bucket[-1] = bucket[-1], bucket[i]
                info = bucket.pop()
                del self._where[info]
                return info
        return None

    def count_from(self, prio: int) -> int:
        return sum(len(b) for b in self._buckets[prio:])

    def __iter__(self):
        for bucket in self._buckets:
            yield from bucket


@implementer(IPeerOwner)
class PeerQueue:
    """
    The peer queue (Node's ``PeerQueue``).

    :param clock: an ``IReactorTime`` (a ``Clock`` in tests).
    :param options: :class:`QueueOptions` (``None``: the defaults).
    :param listener: an :class:`IQueueListener` (or ``None``).
    :param rng: the ``random.Random`` that shuffles each priority bucket.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        options: Optional[QueueOptions] = None,
        *,
        listener: Any = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self._clock = clock
        self.options = options if options is not None else QueueOptions()
        self.listener = listener
        self.destroyed = False
        self._infos: Dict[str, PeerInfo] = {}
        self._ids: Dict[PeerInfo, str] = {}
        self._queue = _Buckets(rng if rng is not None else random.Random())
        self._dedup: Dict[str, PeerInfo] = {}
        self._losers: Dict[PeerInfo, List[PeerInfo]] = {}
        self._requeue_timers = [
            BulkTimer(clock, delay, self._requeue_fired) for delay in self.options.requeue
        ]
        self._forget_timers: Dict[Stage, Optional[BulkTimer]] = {
            Stage.FORGETTING: self._forget_timer(self.options.forget_unresponsive),
            Stage.BANNED: self._forget_timer(self.options.forget_banned),
        }

    def _forget_timer(self, delay: float) -> Optional[BulkTimer]:
        if delay == math.inf:
            return None
        return BulkTimer(self._clock, delay, self._forget_fired)

    # -- read-only views --------------------------------------------------

    def __len__(self) -> int:
        """How many infos wait in the queue."""
        return len(self._queue)

    @property
    def prioritised(self) -> int:
        """Queued infos with priority >= 2 (swarm.md 2.3, for ``flush``)."""
        return self._queue.count_from(2)

    def infos(self) -> List[PeerInfo]:
        """Every client info the queue remembers."""
        return list(self._infos.values())

    def get(self, record: PeerRecord) -> Optional[PeerInfo]:
        """The info remembered for ``record``'s queue identity, if any."""
        return self._infos.get(queue_id(record, self.options.multiplex))

    # -- the swarm's seam -------------------------------------------------

    def add(self, record: PeerRecord) -> Optional[PeerInfo]:
        """
        A peer was found (after ``validate_peer``): remember it, attach its
        topic, and queue it if it is new. Rediscovery of a remembered
        identity only attaches the topic (Node: nothing else ever happens,
        since a remembered info is queued, busy, waiting or banned).

        :returns: the identity's info (``None`` once destroyed).
        """
        if self.destroyed:
            return None
        key = queue_id(record, self.options.multiplex)
        info = self._infos.get(key)
        if info is None:
            info = PeerInfo(self, record, stable_after=self.options.stable_after)
            self._infos[key] = info
            self._ids[info] = key
        if record.topic:
            info.add_topic(record.topic)
        if info.stage is Stage.NEW:
            self._insert([info])
        return info

    def shift(self) -> Optional[PeerInfo]:
        """
        The next peer to dial (highest priority, random within it), now
        :attr:`Stage.DIALLING`; ``None`` when nothing is queued.
        """
        if self.destroyed:
            return None
        info = self._queue.shift()
        if info is not None:
            info.move(Event.SHIFT)
        return info

    def skip(self, info: PeerInfo) -> None:
        """A shifted peer is not dialled (its topic was left): forget it."""
        self._forget(info)

    def requeue(self, info: PeerInfo) -> bool:
        """
        After a failed dial, or after a dialled connection closed (the swarm
        calls ``info.disconnected()`` first; here it is implied): back off
        on the requeue schedule, or forget the peer (banned, ``reconnect``
        off, retries used up). ``True`` if it will be dialled again.
        """
        if self.destroyed or info not in self._ids or info.stage is Stage.FORGOTTEN:
            return False  # forgotten, inbound, or a direct() info
        if info.stage is Stage.CONNECTED:
            info.disconnected()
        slot = info.retry_step()
        if slot == -1:
            self._rest(info)
            return False
        info.move(Event.BACK_OFF)
        self._requeue_timers[slot].push((info, info.generation))
        return True

    def remove(self, target: Union[PeerRecord, PeerInfo]) -> None:
        """Forget a peer now (its connection, if any, is aborted)."""
        if self.destroyed:
            return
        if isinstance(target, PeerInfo):
            info: Optional[PeerInfo] = target
        else:
            info = self._infos.get(queue_id(target, self.options.multiplex))
        if info is not None:
            self._forget(info)

    def accepted(
        self,
        connection: Any,
        remote: Optional[Tuple[str, int]],
        *,
        tcp: bool,
        local: bool = False,
    ) -> PeerInfo:
        """
        An info for an inbound connection (``client=False``, never queued;
        ``deduplicate`` works on it). Call ``info.disconnected()`` when the
        connection closes.
        """
        info = PeerInfo(
            self, None, remote=remote, local=local, stable_after=self.options.stable_after
        )
        info.connected(connection, tcp)
        return info

    def direct(self, record: PeerRecord, connection: Any, *, tcp: bool) -> PeerInfo:
        """
        An info for the swarm's raw ``connect(peer)`` (``client=True``, not
        remembered, never queued or requeued; ``deduplicate`` and ``ban``
        work on it). Call ``info.disconnected()`` when the connection closes.
        """
        info = PeerInfo(self, record, stable_after=self.options.stable_after)
        if record.topic:
            info.add_topic(record.topic)
        info.connected(connection, tcp)
        return info

    def destroy(self) -> None:
        """Stop every timer and drop every info (Node's ``destroy``)."""
        if self.destroyed:
            return
        self.destroyed = True
        for t in self._requeue_timers:
            t.stop()
        for ft in self._forget_timers.values():
            if ft is not None:
                ft.stop()
        self._queue = _Buckets(random.Random())
        self._infos.clear()
        self._ids.clear()
        self._dedup.clear()
        self._losers.clear()

    # -- IPeerOwner -------------------------------------------------------

    def seconds(self) -> float:
        return self._clock.seconds()

    def info_banned(self, info: PeerInfo) -> None:
        if self.destroyed or not info.client:
            return
        if info.stage in (Stage.NEW, Stage.QUEUED, Stage.BACKING_OFF, Stage.FORGETTING):
            self._queue.remove(info)
            self._rest(info)
        # DIALLING / CONNECTED / CLOSED: requeue() after the dial or close
        # rests it as banned.

    def info_disconnected(self, info: PeerInfo) -> None:
        if info.dedup_key is not None and self._dedup.get(info.dedup_key) is info:
            del self._dedup[info.dedup_key]
        losers = self._losers.pop(info, [])
        if info.banned or self.destroyed:
            return  # Node: a banned survivor un-bans no one
        for loser in losers:
            self._unban(loser)

    def deduplicate(self, local_id: bytes, remote_id: bytes, info: PeerInfo) -> bool:
        if info.connection is None:
            return False
        key = local_id.hex() + "\n" + remote_id.hex()
        info.dedup_key = key
        if local_id == remote_id:
            self.log.info("{info!r}: connected to self", info=info)
            info.ban()
            return True
        other = self._dedup.get(key)
        if other is None or other is info:
            self._dedup[key] = info
            return False
        if other.type == info.type:
            other_is_duplicate = info.client if local_id < remote_id else not info.client
        else:
            other_is_duplicate = other.type == "utp"
        if other_is_duplicate:
            self._drop_duplicate(info, other, key)
            return False
        self._drop_duplicate(other, info, key)
        return True

    # -- inside -----------------------------------------------------------

    def _drop_duplicate(self, survivor: PeerInfo, loser: PeerInfo, key: str) -> None:
        loser.duplicate = True
        loser.emit("duplicate")
        self._dedup[key] = survivor
        if not loser.client:
            return  # the remote, running the same rule, ends its side
        loser.ban(soft=True)
        self._losers.setdefault(survivor, []).append(loser)

    def _unban(self, loser: PeerInfo) -> None:
        if self._infos.get(self._ids.get(loser, "")) is not loser:
            return  # forgotten meanwhile
        self.log.info("{info!r}: un-banned, its duplicate's survivor closed", info=loser)
        if loser.stage is Stage.BANNED:
            loser.restore()
            self._insert([loser])
        elif loser.stage in ACTIVE_STAGES:
            loser.unban()  # its close is still pending; requeue() backs off

    def _insert(self, infos: Iterable[PeerInfo]) -> None:
        """Queue each (or forget it if it may not be); ``readable`` on
        empty -> non-empty."""
        was_empty = len(self._queue) == 0
        inserted = False
        for info in infos:
            if not info.update():
                self._rest(info)
                continue
            info.move(Event.ENQUEUE)
            self._queue.add(info)
            inserted = True
        if was_empty and inserted and self.listener is not None:
            self.listener.readable()

    def _rest(self, info: PeerInfo) -> None:
        """Wait to be forgotten: as banned, or as unresponsive."""
        if info.banned:
            info.move(Event.BAN_REST)
        else:
            info.move(Event.FORGET_LATER)
        timer = self._forget_timers[info.stage]
        if timer is not None:
            timer.push((info, info.generation))

    def _forget(self, info: PeerInfo) -> None:
        if info.stage is Stage.FORGOTTEN:
            return
        self._queue.remove(info)
        info.move(Event.FORGET)
        key = self._ids.pop(info, None)
        if key is not None and self._infos.get(key) is info:
            del self._infos[key]
        info.banned = True  # as Node's destroy(): never dialled again
        if info.connection is not None:
            info.ban()

    def _requeue_fired(self, batch: List[Tuple[PeerInfo, int]]) -> None:
        if self.destroyed:
            return
        self._insert(
            info for info, gen in batch
            if info.generation == gen and info.stage is Stage.BACKING_OFF
        )

    def _forget_fired(self, batch: List[Tuple[PeerInfo, int]]) -> None:
        if self.destroyed:
            return
        for info, gen in batch:
            if info.generation == gen:
                self._forget(info)
