"""
The peer-record store of a persistent DHT node (``@hyperswarm/dht`` 4.0.1 keeps
these in ``record-cache``; spec ``shared/spec/dht.md`` 2.2, 2.3).

Records are kept under Node's string keys: ``hex(topic)`` for public records
(6 bytes: the announcer's source IP and port) and
``hex(topic) + "@local." + hex(first two octets of its LAN address)`` for LAN
records (4 bytes: the last two octets and the port).

Expiry is record-cache's: two generations, *fresh* and *stale*. Every
``ceil(2/3 * max_age)`` seconds (8 min for Node's 12 min) the fresh generation
becomes the stale one and the old stale generation is dropped, so a record
lives 8-16 min after its last announce; announcing it again moves it back to
fresh. Rotation is computed from the injected clock whenever the store is
used, so the store owns no timer and needs no stopping.

Unlike record-cache, which only bounds the total, every way a sender could
grow the store is capped (each cap a constructor option):

* ``max_records`` (65,536, Node's figure) in total: a new record beyond it
  evicts the oldest one (stale generation first);
* ``max_per_topic`` (4,096) per topic, public and LAN records together, and
  ``max_per_ip`` (256) per announcing IP: at these caps a *new* record is
  refused and nothing is evicted, so one sender cannot push out the records
  of others. Re-announcing a record already stored is always accepted.
"""

from __future__ import annotations

import math
import random as _random
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from txhyperswarm._reactor import default_reactor
from txhyperswarm.interfaces import IStatsSource

__all__ = [
    "RecordStore",
    "MAX_AGE",
    "MAX_RECORDS",
    "MAX_PER_TOPIC",
    "MAX_PER_IP",
    "MAX_REMOTE_PEERS",
    "MAX_LOCAL_PEERS",
    "remote_key",
    "local_key",
]

#: record-cache ``maxAge`` used by ``@hyperswarm/dht`` (12 min).
MAX_AGE = 12 * 60.0
#: ``maxSize`` of ``@hyperswarm/dht``'s record cache.
MAX_RECORDS = 65536
MAX_PER_TOPIC = 4096
MAX_PER_IP = 256
#: At most this many records in one lookup reply (public + LAN).
MAX_REMOTE_PEERS = 128
#: At most this many LAN records in one lookup reply.
MAX_LOCAL_PEERS = 32


def remote_key(topic: bytes) -> str:
    """Node's key for public records: ``hex(topic)``."""
    return topic.hex()


def local_key(topic: bytes, local_address: bytes) -> str:
    """Node's key for LAN records: ``hex(topic)@local.hex(first two octets)``."""
    return topic.hex() + "@local." + local_address[:2].hex()


def _topic_of(key: str) -> str:
    at = key.find("@")
    return key if at < 0 else key[:at]


class _RecordSet:
    """The records under one key in one generation: a list (for O(1) random
    picks) and a map record -> index (for O(1) removal), as record-cache."""

    __slots__ = ("list", "index")

    def __init__(self) -> None:
        self.list: List[bytes] = []
        self.index: Dict[bytes, int] = {}

    def add(self, record: bytes) -> bool:
        if record in self.index:
            return False
        self.index[record] = len(self.list)
        self.list.append(record)
        return True

    def remove(self, record: bytes) -> bool:
        i = self.index.pop(record, None)
        if i is None:
            return False
        last = self.list.pop()
        if i < len(self.list):
            self.list[i] = last
            self.index[last] = i
        return True


class _Generation:
    __slots__ = ("sets", "order", "per_ip", "per_topic")

    def __init__(self) -> None:
        self.sets: Dict[str, _RecordSet] = {}
        # (key, record) -> announcing IP, oldest first.
        self.order: "OrderedDict[Tuple[str, bytes], str]" = OrderedDict()
        self.per_ip: Dict[str, int] = {}
        self.per_topic: Dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.order)

    def has(self, key: str, record: bytes) -> bool:
        return (key, record) in self.order

    def add(self, key: str, record: bytes, ip: str) -> None:
        s = self.sets.get(key)
        if s is None:
            s = self.sets[key] = _RecordSet()
        s.add(record)
        self.order[(key, record)] = ip
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        topic = _topic_of(key)
        self.per_topic[topic] = self.per_topic.get(topic, 0) + 1

    def remove(self, key: str, record: bytes) -> Optional[str]:
        ip = self.order.pop((key, record), None)
        if ip is None:
            return None
        s = self.sets[key]
        s.remove(record)
        if not s.list:
            del self.sets[key]
        _decrement(self.per_ip, ip)
        _decrement(self.per_topic, _topic_of(key))
        return ip

    def pop_oldest(self) -> None:
        (key, record), _ = next(iter(self.order.items()))
        self.remove(key, record)

    def records(self, key: str) -> List[bytes]:
        s = self.sets.get(key)
        return s.list if s is not None else []


def _decrement(counter: Dict[str, int], name: str) -> None:
    n = counter[name] - 1
    if n:
        counter[name] = n
    else:
        del counter[name]


@implementer(IStatsSource)
class RecordStore:
    """
    Peer records of ``peers`` announces, with record-cache's expiry and caps.

    :param reactor: an ``IReactorTime`` (a ``task.Clock`` in tests); ``None``
        means the global reactor.
    :param max_age: record-cache ``maxAge`` in seconds; generations rotate
        every ``ceil(2/3 * max_age)`` seconds.
    :param max_records: total cap; the oldest record is evicted beyond it.
    :param max_per_topic: cap per topic; new records are refused beyond it.
    :param max_per_ip: cap per announcing IP; new records are refused beyond it.
    :param random: a ``random.Random`` for sampling (tests pass a seeded one).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Optional[IReactorTime] = None,
        *,
        max_age: float = MAX_AGE,
        max_records: int = MAX_RECORDS,
        max_per_topic: int = MAX_PER_TOPIC,
        max_per_ip: int = MAX_PER_IP,
        random: Optional[_random.Random] = None,
    ) -> None:
        if max_age <= 0:
            raise ValueError("max_age must be > 0")
        if min(max_records, max_per_topic, max_per_ip) < 1:
            raise ValueError("every cap must be >= 1")
        self._clock = default_reactor(reactor)
        self.max_age = max_age
        self.max_records = max_records
        self.max_per_topic = max_per_topic
        self.max_per_ip = max_per_ip
        self._random = random or _random.Random()
        # record-cache: setInterval(gc, ceil(2/3 * maxAge)) (in ms there)
        self.rotate_interval = math.ceil(2 / 3 * max_age * 1000) / 1000
        self._next_rotation = self._clock.seconds() + self.rotate_interval
        self._fresh = _Generation()
        self._stale = _Generation()
        #: Refused or evicted records by reason: ``ip-cap``, ``topic-cap``,
        #: ``evicted``.
        self.refused: Dict[str, int] = {"ip-cap": 0, "topic-cap": 0, "evicted": 0}

    # -- expiry ---------------------------------------------------------------

    def _expire(self) -> None:
        now = self._clock.seconds()
        if now < self._next_rotation:
            return
        steps = int((now - self._next_rotation) // self.rotate_interval) + 1
        self._next_rotation += steps * self.rotate_interval
        if steps >= 2:
            self._stale = _Generation()
            self._fresh = _Generation()
        else:
            self._stale = self._fresh
            self._fresh = _Generation()

    def clear(self) -> None:
        """Drop every record."""
        self._fresh = _Generation()
        self._stale = _Generation()

    # -- the record-cache API -------------------------------------------------

    def __len__(self) -> int:
        self._expire()
        return len(self._fresh) + len(self._stale)

    def count_for_ip(self, ip: str) -> int:
        """How many stored records ``ip`` announced."""
        self._expire()
        return self._fresh.per_ip.get(ip, 0) + self._stale.per_ip.get(ip, 0)

    def stats(self) -> dict:
        """
        The live figures (:class:`txhyperswarm.interfaces.IStatsSource`):
        ``records`` held in total, ``largest_topic`` and ``largest_address``
        (the records of the topic, of the announcing IP, that hold the
        most), and ``refused`` (a copy of :attr:`refused`).
        """
        self._expire()
        fresh, stale = self._fresh, self._stale

        def largest(a: Dict[str, int], b: Dict[str, int]) -> int:
            both = dict(b)
            for k, n in a.items():
                both[k] = both.get(k, 0) + n
            return max(both.values(), default=0)

        return {
            "records": len(fresh) + len(stale),
            "largest_topic": largest(fresh.per_topic, stale.per_topic),
            "largest_address": largest(fresh.per_ip, stale.per_ip),
            "refused": dict(self.refused),
        }

    def count_for_topic(self, topic: bytes) -> int:
        """How many records (public and LAN) are stored for ``topic``."""
        self._expire()
        t = topic.hex()
        return self._fresh.per_topic.get(t, 0) + self._stale.per_topic.get(t, 0)

    def add(self, key: str, record: bytes, ip: str) -> bool:
        """
        Store ``record`` under ``key``, announced from ``ip``, or refresh it.

        :returns: ``True`` if the record is stored (new or refreshed),
            ``False`` if a cap refused it.
        """
        self._expire()
        fresh, stale = self._fresh, self._stale
        if fresh.has(key, record):
            return True
        old_ip = stale.order.get((key, record))
        if old_ip is not None and old_ip == ip:
            stale.remove(key, record)
            fresh.add(key, record, ip)
            return True
        # A new record (or one that changes announcer): check the caps.
        if fresh.per_ip.get(ip, 0) + stale.per_ip.get(ip, 0) >= self.max_per_ip:
            self.refused["ip-cap"] += 1
            return False
        if old_ip is None:
            topic = _topic_of(key)
            if fresh.per_topic.get(topic, 0) + stale.per_topic.get(topic, 0) >= self.max_per_topic:
                self.refused["topic-cap"] += 1
                return False
        else:
            stale.remove(key, record)
        while len(fresh) + len(stale) >= self.max_records:
            (stale if len(stale) else fresh).pop_oldest()
            self.refused["evicted"] += 1
        fresh.add(key, record, ip)
        return True

    def remove(self, key: str, record: bytes) -> None:
        """Remove ``record`` from ``key`` (no-op when absent)."""
        self._expire()
        self._fresh.remove(key, record)
        self._stale.remove(key, record)

    def get(self, key: str, n: int = 0) -> List[bytes]:
        """
        Up to ``n`` distinct records of ``key`` picked uniformly at random
        from both generations (all of them, in random order, if ``n`` is 0
        or larger than their number), as record-cache's ``get``.
        """
        self._expire()
        a = self._fresh.records(key)
        b = self._stale.records(key)
        la = len(a)
        total = la + len(b)
        if not n or n > total:
            n = total
        return [a[i] if i < la else b[i - la] for i in self._random.sample(range(total), n)]

    # -- the peers command's use of it ---------------------------------------

    def announce(self, topic: bytes, record: bytes, ip: str, local_address: Optional[bytes] = None) -> bool:
        """
        Store an announce: the public ``record`` (6 bytes) and, with a 6-byte
        ``local_address``, its LAN suffix under the topic's LAN key.

        :returns: ``True`` if the public record was stored.
        """
        stored = self.add(remote_key(topic), record, ip)
        if local_address is not None:
            self.add(local_key(topic, local_address), local_address[2:], ip)
        return stored

    def unannounce(self, topic: bytes, record: bytes, local_address: Optional[bytes] = None) -> None:
        """Remove what :meth:`announce` stored."""
        self.remove(remote_key(topic), record)
        if local_address is not None:
            self.remove(local_key(topic, local_address), local_address[2:])

    def lookup(
        self, topic: bytes, record: bytes, local_address: Optional[bytes] = None
    ) -> Tuple[List[bytes], List[bytes]]:
        """
        What a lookup from ``record`` (the asker's own public record) gets:
        up to 32 random LAN records (only with ``local_address``) and up to
        ``128 - len(local)`` random public records, the asker's own records
        removed after sampling, exactly as ``@hyperswarm/dht``'s ``_onpeers``.

        :returns: ``(public, local)`` lists of 6-byte and 4-byte records.
        """
        local: List[bytes] = []
        if local_address is not None:
            local = _without(self.get(local_key(topic, local_address), MAX_LOCAL_PEERS), local_address[2:])
        remote = _without(self.get(remote_key(topic), MAX_REMOTE_PEERS - len(local)), record)
        return remote, local


def _without(records: List[bytes], item: bytes) -> List[bytes]:
    try:
        i = records.index(item)
    except ValueError:
        return records
    records[i] = records[-1]
    records.pop()
    return records
