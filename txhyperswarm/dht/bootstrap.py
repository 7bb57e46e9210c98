"""
The bootstrap nodes of a DHT node: parsing what the user gave, and resolving
the ones given by name (dht-rpc's socket resolves them on each send;
Twisted's UDP write takes IP addresses only).
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple, Union

from twisted.internet import defer
from twisted.logger import Logger

from txhyperswarm._observer import OneShotObserver
from txhyperswarm._parsing import parse_host_port
from txhyperswarm.dht.messages import is_ipv4_literal

__all__ = ["DEFAULT_BOOTSTRAP", "BootstrapNodes", "parse_bootstrap"]

Address = Tuple[str, int]

#: The public hyperswarm 2 bootstrap nodes (@hyperswarm/dht 4.0.1).
DEFAULT_BOOTSTRAP: Tuple[Address, ...] = (
    ("bootstrap1.hyperdht.org", 49737),
    ("bootstrap2.hyperdht.org", 49737),
    ("bootstrap3.hyperdht.org", 49737),
)


def parse_bootstrap(entry: Union[str, Address]) -> Address:
    """
    One bootstrap node: ``"HOST:PORT"`` (``":PORT"`` is ``127.0.0.1``) or
    a ``(host, port)`` pair.

    :raises ValueError: not a ``HOST:PORT``.
    """
    if isinstance(entry, str):
        if entry.startswith(":"):
            entry = "127.0.0.1" + entry
        return parse_host_port(entry)
    host, port = entry
    return str(host), int(port)


class BootstrapNodes:
    """
    The bootstrap nodes as given (:attr:`nodes`) and as walks send to them
    (:attr:`addresses`: IPv4 literals only).

    :param reactor: ``IReactorPluggableNameResolver``-ish: its ``resolve(name)``
        looks names up.
    :param entries: ``(host, port)`` pairs or ``"HOST:PORT"`` strings;
        ``None`` = :data:`DEFAULT_BOOTSTRAP`.
    """

    log = Logger()

    def __init__(self, reactor, entries: Optional[Iterable[Union[str, Address]]] = None) -> None:
        self._reactor = reactor
        if entries is None:
            self.nodes: List[Address] = list(DEFAULT_BOOTSTRAP)
        else:
            self.nodes = [parse_bootstrap(b) for b in entries]
        #: Resolved bootstrap addresses (IPv4 literals) that walks send to.
        self.addresses: List[Address] = [a for a in self.nodes if is_ipv4_literal(a[0])]
        self._unresolved = len(self.addresses) != len(self.nodes)
        #: The resolution in progress, shared by its callers.
        self._resolving: Optional[OneShotObserver] = None

    def __len__(self) -> int:
        return len(self.nodes)

    def pending(self, table_size: int) -> bool:
        """
        Whether a walk starting now must wait for :meth:`resolve`: names are
        not resolved and the walk would send to the bootstrap nodes (dht-rpc
        does when the routing table, of ``table_size`` nodes, has fewer nodes
        than there are bootstrap nodes).
        """
        return self._unresolved and table_size < len(self.nodes)

    def resolve(self) -> defer.Deferred:
        """
        Resolve the nodes given by name.

        :returns: a new Deferred firing with the ``(ip, port)`` list (names
            that did not resolve are left out, logged, and tried again next
            time); never errbacks. Concurrent callers share one resolution.
        """
        if not self._unresolved:
            return defer.succeed(self.addresses)
        observer = self._resolving
        if observer is None:
            observer = self._resolving = OneShotObserver()
            d = defer.gatherResults([self._one(e) for e in self.nodes])
            d.addCallback(self._resolved)
            d.addBoth(observer.fire)
        return observer.when_fired()

    def _one(self, entry: Address) -> defer.Deferred:
        host, port = entry
        if is_ipv4_literal(host):
            return defer.succeed([(host, port)])

        def failed(f) -> list:
            self.log.warn("cannot resolve bootstrap node {host}: {err}", host=host, err=f.getErrorMessage())
            return []

        return self._reactor.resolve(host).addCallbacks(lambda ip: [(ip, port)], failed)

    def _resolved(self, results) -> List[Address]:
        self._resolving = None
        addresses = [a for r in results for a in r]
        self.addresses = addresses
        self._unresolved = len(addresses) != len(self.nodes)
        return addresses
