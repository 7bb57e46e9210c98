"""
One join of a topic on multicast DNS (Node's discovery ``Topic``), and the
seam it calls its owner through (:class:`IMDNSTopicOwner`, implemented by
:class:`~txhyperswarm.mdns.service.MulticastDiscovery`).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from txhyperswarm._observer import OneShotObserver
from txhyperswarm.interfaces import IDiscoveryTopic
from txhyperswarm.mdns.wire import SRV_TARGET, domain_name, encode_query, fqdn, id_record, srv_record
from txhyperswarm.peer_record import PeerRecord

__all__ = ["IMDNSTopicOwner", "MDNSTopic"]

PeerCallback = Callable[[PeerRecord], None]


class IMDNSTopicOwner(Interface):
    """What an :class:`MDNSTopic` needs from the discovery it was joined on."""

    domain = Attribute("The mDNS name suffix (``hyperswarm.local``).")
    listening = Attribute(
        "Whether the socket is bound. A topic sends nothing while it is not; "
        "the owner sends what fell due once it listens."
    )

    def send(data, sent=None):
        """
        Send the mDNS datagram ``data`` to the group (nothing when not
        listening); then call ``sent()``, if given, once it was handed to the
        socket (a send error is counted and logged, and still calls it).
        """

    def call_later(delay, fn):
        """``fn()`` in ``delay`` seconds on the owner's clock: an ``IDelayedCall``."""

    def next_query_delay():
        """Seconds until a looking-up topic queries again (Node: uniform 30-60 s)."""

    def topic_stopped(topic):
        """``topic`` has stopped: it no longer answers nor hears anything."""


@implementer(IDiscoveryTopic)
class MDNSTopic:
    """
    One join of a topic on a :class:`~txhyperswarm.mdns.MulticastDiscovery`
    (Node's ``Topic``): an :class:`~txhyperswarm.interfaces.IDiscoveryTopic`.

    Made by :meth:`MulticastDiscovery.join
    <txhyperswarm.mdns.MulticastDiscovery.join>`; not constructed directly.

    :ivar topic: the 32-byte topic.
    :ivar id: this join's 35-byte id, ``b"id="`` + 32 random bytes (the TXT
        string that lets it recognise its own answers).
    :ivar name: the mDNS name, ``<40 hex>.<domain>`` (no trailing dot).
    :ivar fqdn: ``name`` with the trailing dot, as decoded records carry it.
    :ivar announce_port: the port announced in SRV answers, or ``None``
        (does not answer).
    :ivar lookup: whether it sends queries and reports peers to ``on_peer``.
    :ivar stopped: whether :meth:`stop` was called (or its discovery stopped).
    """

    log = Logger()

    def __init__(
        self,
        owner: IMDNSTopicOwner,
        topic: bytes,
        announce_port: Optional[int],
        lookup: bool,
        on_peer: Optional[PeerCallback],
        topic_id: bytes,
        host: Optional[str] = None,
    ) -> None:
        self._owner = owner
        self.topic = topic
        self.id = topic_id
        self.name = domain_name(topic, owner.domain)
        self.fqdn = fqdn(self.name)
        self.announce_port = announce_port
        self.lookup = lookup
        self.stopped = False
        self._on_peer = on_peer
        self._ready: OneShotObserver[bool] = OneShotObserver()
        self._answers = (
            (srv_record(self.name, announce_port, host or SRV_TARGET), id_record(self.name, topic_id))
            if announce_port
            else None
        )
        self._query_call = None

    @property
    def announcing(self) -> bool:
        """Whether this topic answers queries (it has an ``announce_port``)."""
        return self._answers is not None

    @property
    def answer_records(self) -> Optional[Tuple]:
        """The ``(SRV, TXT)`` records this topic answers with, or ``None`` when it does not announce."""
        return self._answers

    # -- IDiscoveryTopic ----------------------------------------------------

    def when_ready(self) -> defer.Deferred:
        """
        A new Deferred firing ``True`` once the first datagram for this topic
        went out (its announcement if it announces, else its first query),
        or ``False`` if it stops first. It never errbacks.
        """
        return self._ready.when_fired()

    def refresh(self) -> None:
        """Send a query now and restart the 30-60 s schedule (Node's ``topic.update()``)."""
        if self.stopped:
            return
        self._cancel_query()
        self._query_loop()

    def stop(self) -> defer.Deferred:
        """
        Stop querying and answering (no goodbye is sent, as Node).

        :returns: a Deferred that has already fired with ``None``.
        """
        if not self.stopped:
            self.stopped = True
            self._cancel_query()
            self._owner.topic_stopped(self)
            self._ready.fire(False)
        return defer.succeed(None)

    # -- called by the owner ----------------------------------------------

    def datagram_sent(self) -> None:
        """The owner sent this topic's announcement or query: the topic is ready."""
        self._ready.fire(True)

    def report(self, peer: PeerRecord) -> None:
        """Hand ``peer`` (heard by the owner for this name) to ``on_peer`` when looking up."""
        if self._on_peer is None or not self.lookup or self.stopped:
            return
        try:
            self._on_peer(peer)
        except Exception:
            self.log.failure("on_peer callback for {topic} failed", topic=self.topic.hex())

    # -- internal --------------------------------------------------------

    def _query_loop(self) -> None:
        self._query_call = None
        if not self._owner.listening:
            return  # the owner calls refresh() once it listens
        self._owner.send(encode_query([self.name]), None if self.announcing else self.datagram_sent)
        self._query_call = self._owner.call_later(self._owner.next_query_delay(), self._query_loop)

    def _cancel_query(self) -> None:
        if self._query_call is not None and self._query_call.active():
            self._query_call.cancel()
        self._query_call = None

    def __repr__(self) -> str:
        stopped = " stopped" if self.stopped else ""
        return f"<MDNSTopic {self.topic.hex()} announce_port={self.announce_port} lookup={self.lookup}{stopped}>"
