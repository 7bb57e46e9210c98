"""
A topic's peers from the DHT and from multicast DNS at once (Node's
``@hyperswarm/discovery``, swarm.md 4.3-4.8).

:class:`Discovery` runs one join per topic on a
:class:`~txhyperswarm.dht.node.DHTNode` (through
``txhyperswarm.dht.peers.join``) and on a
:class:`~txhyperswarm.mdns.MulticastDiscovery`, either of which may be
absent, and hands back one :class:`DiscoveryTopic`: an
:class:`~txhyperswarm.interfaces.IDiscoveryTopic` like each of its parts.

::

    discovery = Discovery(reactor, dht=node, mdns=mdns)   # started services
    t = discovery.join(topic, announce_port=0, lookup=True,
                       on_peer=found, on_update=cycle_ended)
    ok = yield t.when_ready()     # the DHT's first round (mDNS never holds it up)
    yield t.mdns.when_ready()     # the mDNS part on its own (t.dht likewise)
    yield discovery.flush()       # every current topic's first round
    yield t.stop()                # once the DHT unannounce is done
    yield discovery.close()       # stops every topic

Neither service is started or stopped here: their owner does that.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm._observer import OneShotObserver
from txhyperswarm._reactor import default_reactor
from txhyperswarm.dht import peers
from txhyperswarm.interfaces import IDiscoveryTopic
from txhyperswarm.peer_record import PeerRecord

__all__ = ["Discovery", "DiscoveryTopic"]

log = Logger(namespace="txhyperswarm.discovery")

PeerCallback = Callable[[PeerRecord], object]
UpdateCallback = Callable[[Optional[object]], object]


@implementer(IDiscoveryTopic)
class DiscoveryTopic:
    """
    One topic joined on the DHT and/or mDNS (see :meth:`Discovery.join`).

    :ivar topic: the 32-byte topic.
    :ivar announcing: whether it announces.
    :ivar lookup: whether it reports peers (``on_peer``).
    :ivar dht: the DHT join (an ``IDiscoveryTopic``), or ``None``.
    :ivar mdns: the mDNS join (an :class:`~txhyperswarm.mdns.MDNSTopic`), or ``None``.
    """

    def __init__(
        self,
        topic: bytes,
        *,
        announcing: bool,
        lookup: bool,
        dht: Any = None,  # an IDiscoveryTopic or None
        mdns: Any = None,  # an IDiscoveryTopic or None
        on_stop: Optional[Callable[["DiscoveryTopic"], object]] = None,
    ) -> None:
        if dht is None and mdns is None:
            raise ValueError("a DiscoveryTopic needs a DHT join, an mDNS join, or both")
        self.topic = topic
        self.announcing = announcing
        self.lookup = lookup
        self.dht = dht
        self.mdns = mdns
        self._on_stop = on_stop
        self._stopped: Optional[OneShotObserver[None]] = None

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopped is not None

    def when_ready(self) -> defer.Deferred:
        """
        A new Deferred for the first round, firing ``ok: bool``: the DHT
        join's when there is one (mDNS never holds it up), else the mDNS
        join's. It never errbacks.
        """
        if self.dht is not None:
            return self.dht.when_ready()
        return self.mdns.when_ready()

    def refresh(self) -> None:
        """Start the next DHT cycle and the next mDNS query now (Node's ``topic.update()``)."""
        for part in (self.dht, self.mdns):
            if part is not None:
                part.refresh()

    def stop(self) -> defer.Deferred:
        """
        Stop both joins: mDNS at once (no goodbye), the DHT by unannouncing.

        :returns: a new Deferred firing with ``None`` once the DHT join's
            stop has fired (at once without one); it never errbacks.
            Idempotent.
        """
        if self._stopped is not None:
            return self._stopped.when_fired()
        stopped: OneShotObserver[None] = OneShotObserver()
        self._stopped = stopped
        if self._on_stop is not None:
            self._on_stop(self)
        if self.mdns is not None:
            self.mdns.stop()
        if self.dht is None:
            stopped.fire(None)
        else:
            def dht_stopped(result) -> None:
                if isinstance(result, Failure):  # the contract says it never errbacks
                    log.failure("stopping the DHT join of {topic} failed", result, topic=self.topic.hex())
                stopped.fire(None)

            self.dht.stop().addBoth(dht_stopped)
        return stopped.when_fired()

    def __repr__(self) -> str:
        parts = "+".join(name for name, part in (("dht", self.dht), ("mdns", self.mdns)) if part is not None)
        return f"<DiscoveryTopic {self.topic.hex()} {parts} announcing={self.announcing} lookup={self.lookup}>"


class Discovery:
    """
    Joins topics on a DHT node and on multicast DNS (Node's ``Discovery``).

    :param reactor: ``None`` means the global reactor.
    :param dht: a started :class:`~txhyperswarm.dht.node.DHTNode`, or ``None``.
    :param mdns: a :class:`~txhyperswarm.mdns.MulticastDiscovery`, or ``None``.
    :raises ValueError: when both are ``None``.

    :ivar dht: the DHT node, or ``None``.
    :ivar mdns: the mDNS service, or ``None``.
    """

    def __init__(self, reactor=None, *, dht=None, mdns=None) -> None:
        if dht is None and mdns is None:
            raise ValueError("Discovery needs a DHT node, a MulticastDiscovery, or both")
        self.reactor = default_reactor(reactor)
        self.dht = dht
        self.mdns = mdns
        self._topics: Dict[DiscoveryTopic, None] = {}
        self._closed = False

    @property
    def topics(self):
        """The topics joined and not stopped, in join order (a new list)."""
        return list(self._topics)

    def join(
        self,
        topic: bytes,
        *,
        announce_port: Optional[int] = None,
        local_address=None,
        lookup: bool = True,
        on_peer: Optional[PeerCallback] = None,
        on_update: Optional[UpdateCallback] = None,
    ) -> DiscoveryTopic:
        """
        Join ``topic`` on the DHT and on mDNS (whichever this has).

        :param announce_port: ``None``: do not announce; ``0``: announce the
            port of the DHT node's socket (which is also the TCP port, as
            Node: the DHT records the UDP source port, mDNS answers with the
            bound port); 1..65535: announce that port.
        :param local_address: our LAN ``(host, port)`` for the DHT's LAN
            records (mDNS ignores it).
        :param lookup: report the peers found to ``on_peer``.
        :param on_peer: every :class:`~txhyperswarm.peer_record.PeerRecord`
            from either source, repeats included (de-duplicating is the
            caller's business).
        :param on_update: ``on_update(error_or_None)`` at the end of every
            DHT cycle (mDNS has none).
        :raises ValueError: a topic that is not 32 bytes, a port outside
            0..65535, ``announce_port=0`` without a DHT node, or neither
            announcing nor looking up.
        :raises RuntimeError: after :meth:`close`, or for
            ``announce_port=0`` with mDNS before the DHT node listens.
        """
        if self._closed:
            raise RuntimeError("Discovery is closed")
        if not isinstance(topic, bytes) or len(topic) != 32:
            raise ValueError("a topic is 32 bytes")
        if announce_port is not None and not 0 <= announce_port <= 65535:
            raise ValueError(f"bad port {announce_port}")
        if announce_port is None and not lookup:
            raise ValueError("a topic must announce (announce_port), look up, or both")
        mdns_port = announce_port
        if announce_port == 0 and self.mdns is not None:
            if self.dht is None:
                raise ValueError("announce_port=0 announces the DHT socket's port, and there is no DHT node")
            mdns_port = self.dht.address()[1]
        dht_join = None
        if self.dht is not None:
            dht_join = peers.join(
                self.dht, topic, announce_port=announce_port, local_address=local_address,
                lookup=lookup, on_peer=on_peer, on_update=on_update,
            )
        mdns_join = None
        if self.mdns is not None:
            try:
                mdns_join = self.mdns.join(
                    topic, announce_port=mdns_port, local_address=local_address, lookup=lookup, on_peer=on_peer,
                )
            except Exception:
                if dht_join is not None:
                    dht_join.stop()
                raise
        t = DiscoveryTopic(
            topic, announcing=announce_port is not None, lookup=bool(lookup),
            dht=dht_join, mdns=mdns_join, on_stop=self._forget,
        )
        self._topics[t] = None
        return t

    def flush(self) -> defer.Deferred:
        """
        A Deferred firing with ``None`` once every topic joined now has
        had its first round (Node's ``discovery.flush``); never errbacks.
        """
        waits = [t.when_ready() for t in self._topics]
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def close(self) -> defer.Deferred:
        """
        Stop every topic; later joins raise.

        :returns: a Deferred firing with ``None`` once every topic's stop
            has (the DHT unannounces); never errbacks.
        """
        self._closed = True
        stops = [t.stop() for t in list(self._topics)]
        return defer.DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)

    def _forget(self, topic: DiscoveryTopic) -> None:
        self._topics.pop(topic, None)
