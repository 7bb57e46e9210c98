"""
A uTP bulk sender in its own process, for the memory test (JSON lines out).

    python -u tests/utp/bulk_sender.py HOST PORT BYTES

Generates the stream on the fly (a 1 MiB random pool, each 64 KiB chunk
prefixed by its index), writes it through a streaming producer registered
on the transport, and samples its own RSS every 20 ms. Prints
``{"event": "ready", "rss": ...}`` once bound, then at the end
``{"event": "done", "bytes", "sha256", "rss0", "rss_max", "pauses",
"max_send_buffer", "reason"}`` and exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.interfaces import IPushProducer  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402
from zope.interface import implementer  # noqa: E402

from txhyperswarm.udp import UDPSocket  # noqa: E402
from txhyperswarm.utp import UTPSocket  # noqa: E402

CHUNK = 64 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def emit(**obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


@implementer(IPushProducer)
class Bulk(Protocol):
    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.hash = hashlib.sha256()
        self.pool = os.urandom(1024 * 1024 + CHUNK)
        self.max_send_buffer = 0
        self.ended = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def stopProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        t = self.transport
        pool = self.pool
        while not self.paused and self.sent < self.total:
            i = self.sent // CHUNK
            off = (i * 7919) % (len(pool) - CHUNK)
            chunk = i.to_bytes(8, "big") + pool[off : off + CHUNK - 8]
            chunk = chunk[: self.total - self.sent]
            self.hash.update(chunk)
            t.write(chunk)
            self.sent += len(chunk)
            if t.send_buffer_size > self.max_send_buffer:
                self.max_send_buffer = t.send_buffer_size
        if self.sent >= self.total and not self.ended:
            self.ended = True
            t.unregisterProducer()
            t.loseConnection()

    def connectionLost(self, reason) -> None:
        sample()
        emit(event="done", bytes=self.sent, sha256=self.hash.hexdigest(), rss0=RSS0, rss_max=RSS_MAX[0],
             pauses=self.pauses, max_send_buffer=self.max_send_buffer, reason=type(reason.value).__name__)
        reactor.callLater(0, reactor.stop)


def sample() -> None:
    r = rss()
    if r > RSS_MAX[0]:
        RSS_MAX[0] = r


def main() -> None:
    global RSS0
    host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    udp = UDPSocket(reactor, host="127.0.0.1")
    sock = UTPSocket(reactor, udp)
    udp.listen()
    proto = Bulk(total)
    RSS0 = rss()
    RSS_MAX[0] = RSS0
    LoopingCall(sample).start(0.02)
    sock.connect(host, port, Factory.forProtocol(lambda: proto)).addErrback(
        lambda f: (emit(event="error", message=str(f.value)), reactor.stop())
    )
    emit(event="ready", rss=RSS0)
    reactor.run()


RSS0 = 0
RSS_MAX = [0]

if __name__ == "__main__":
    main()
