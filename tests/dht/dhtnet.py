"""
DHT nodes on :class:`txhyperswarm.testing.UDPNetwork`, with the datagrams
they sent decoded (what the DHT unit tests assert on).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from txhyperswarm.dht import messages as m
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.testing import UDPNetwork

Address = Tuple[str, int]

#: Every node of a test network lives on this host (ports differ).
HOST = "127.0.0.1"


class DHTNetwork(UDPNetwork):
    """
    A :class:`UDPNetwork` (10 ms latency, every datagram recorded) that
    starts :class:`DHTNode` s on ``127.0.0.1`` with :meth:`node`.
    """

    def __init__(self, **kw) -> None:
        kw.setdefault("latency", 0.01)
        super().__init__(record=True, **kw)

    def node(self, bootstrap=(), **kw) -> DHTNode:
        """A started node on a socket of its own (bound on ``127.0.0.1``)."""
        n = DHTNode(self.reactor(HOST), bootstrap=list(bootstrap), host=HOST, port=0, **kw)
        n.startService()
        return n

    def decoded(self) -> List[Tuple[Address, Address, m.Message]]:
        """``(src, dst, message)`` of every DHT datagram sent so far."""
        out = []
        for _, src, dst, data in self.log:
            try:
                out.append((src, dst, m.decode_message(data)))
            except m.DecodeError:
                pass
        return out

    def messages(self, src: Optional[Address] = None, dst: Optional[Address] = None, command=None):
        """The decoded messages sent, filtered by ends and command."""
        return [
            msg
            for s, d, msg in self.decoded()
            if (src is None or s == src) and (dst is None or d == dst) and (command is None or msg.command == command)
        ]
