"""
Swarms as in production on txhyperswarm.testing's in-memory network: a
Clock, a DHT bootstrap node, and Hyperswarm instances on hosts of their own,
with every event they emit recorded as ``(clock time, name, event, args)``.
"""

from __future__ import annotations

import random

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock

from txhyperswarm.dht import peers as dht_peers
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.swarm import Hyperswarm
from txhyperswarm.testing import UDPNetwork

BOOT = ("10.0.0.1", 49737)


class World:
    #: the swarm events recorded
    EVENTS = ("listening", "join", "leave", "peer", "peer-rejected", "updated", "connection",
              "disconnection", "close")
    #: the clock step while the swarms stop
    STOP_STEP = 0.005

    def __init__(self, **net):
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.net = UDPNetwork(self.clock, latency=0.001, **net)
        self.boot = DHTNode(self.net.reactor(BOOT[0]), bootstrap=[], port=BOOT[1], ephemeral=False)
        dht_peers.register(self.boot)
        self.boot.startService()
        self.swarms = []
        self.events = []

    def swarm(self, name, host, **options):
        options.setdefault("bootstrap", [BOOT])
        options.setdefault("multicast", False)
        options.setdefault("ephemeral", True)
        options.setdefault("rng", random.Random(1))
        s = Hyperswarm(self.net.reactor(host), **options)
        for e in self.EVENTS:
            s.on(e, self._recorder(name, e))
        self.swarms.append(s)
        s.startService()
        return s

    def _recorder(self, name, event):
        def record(*args):
            self.events.append((self.clock.seconds(), name, event, args))
        return record

    def now(self):
        return self.clock.seconds()

    def run(self, seconds, step=0.005):
        self.net.run(seconds, step=step)

    def run_until(self, predicate, limit, step=0.05):
        return self.net.run_until(predicate, limit, step=step)

    def of(self, name, event):
        return [e for e in self.events if e[1] == name and e[2] == event]

    def seq(self, name, skip=("updated", "peer")):
        return [e[2] for e in self.events if e[1] == name and e[2] not in skip]

    def stop_all(self, pending=()):
        """Stop every swarm and the bootstrap node: no timer may outlive them,
        and every Deferred in ``pending`` must have fired."""
        done = []
        for s in self.swarms:
            s.stopService().addBoth(done.append)
        self.run(10, step=self.STOP_STEP)
        assert done == [None] * len(self.swarms)
        self.boot.stopService()
        self.run(1)
        assert self.clock.getDelayedCalls() == []
        for d in pending:
            assert d.called


class IdExchange(Protocol):
    """
    Send our 32-byte id; dedup once the peer's id and the info are known
    (``(own id, client?, kept?)`` appended to ``results`` when given).
    """

    def __init__(self, own, results=None):
        self.own = own
        self.results = results
        self.info = None
        self.remote = b""

    def connectionMade(self):
        self.transport.write(self.own)

    def dataReceived(self, data):
        self.remote += data
        self.check()

    def check(self):
        if self.info is not None and len(self.remote) >= 32 and not hasattr(self, "dup"):
            self.dup = self.info.deduplicate(self.own, self.remote[:32])
            if self.results is not None:
                self.results.append((self.own, self.info.client, self.dup))
