"""
uTP against utp-native 2.5.3 (libutp), both directions, on 127.0.0.1.

Node helper: ``tests/node/utp_peer.js``.
"""

from __future__ import annotations

import hashlib

import pytest_twisted
from twisted.internet import defer, error
from twisted.internet.task import deferLater

from tests.utp.streams import OneFactory, Sink, Source, random_blob
from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp.connection import UTPConnectionResetError
from txhyperswarm.utp.packet import HEADER, ST_RESET, decode

from tests.interop.conftest import event

BIG = 64 * 1024 * 1024
#: utp-native's socket keeps the kernel's default receive buffer (~208 KiB),
#: which a 1 MiB window overruns; libutp then recovers by 1 s RTOs and a
#: 64 MiB run takes minutes (utp.md 7.2). The bulk tests give it 4 MiB, as
#: our own UDPSocket asks for.
BIG_RCVBUF = {"UTP_RCVBUF": str(4 * 1024 * 1024)}




@pytest_twisted.inlineCallbacks
def test_python_sends_64mib_to_utp_native(reactor, node, processes, utp_socket):
    peer = processes.node("utp_peer.js", "listen", "0", "sink", env=BIG_RCVBUF)
    port = (yield peer.wait_for(event("listening")))["port"]
    blob = random_blob(BIG)
    src = Source(blob)
    proto = yield utp_socket.connect("127.0.0.1", port, OneFactory(src))
    assert proto is src
    end = yield peer.wait_for(event("end"), timeout=90)
    assert end["bytes"] == BIG
    assert end["sha256"] == hashlib.sha256(blob).hexdigest()
    reason = yield src.done
    assert isinstance(reason, error.ConnectionDone), reason
    yield peer.wait_for(event("close"), timeout=10)
    assert not [o for o in peer.lines if o.get("event") == "error"]
    # the sender never buffered much more than the high-water mark
    assert src.max_send_buffer < 1024 * 1024


@pytest_twisted.inlineCallbacks
def test_utp_native_sends_64mib_to_python(reactor, node, processes, utp_socket):
    sink = Sink()
    utp_socket.listen(OneFactory(sink))
    port = utp_socket.address()[1]
    peer = processes.node("utp_peer.js", "connect", "127.0.0.1", str(port), f"source:{BIG}", env=BIG_RCVBUF)
    sent = yield peer.wait_for(event("sent"), timeout=90)
    reason = yield sink.done
    assert isinstance(reason, error.ConnectionDone), reason
    assert sink.count == BIG
    assert sink.hash.hexdigest() == sent["sha256"]
    yield peer.wait_for(event("close"), timeout=10)
    assert not [o for o in peer.lines if o.get("event") == "error"]


def _collector(reactor):
    """A UDPSocket on 127.0.0.1 whose uTP datagrams land in a list."""
    udp = UDPSocket(reactor, host="127.0.0.1")
    got = []
    waiters = []

    def receive(data, addr):
        got.append((data, addr))
        while waiters:
            waiters.pop().callback(None)

    udp.set_utp_receiver(receive)
    udp.listen()

    def wait(timeout=5):
        if got:
            return defer.succeed(None)
        d = defer.Deferred()
        waiters.append(d)
        return d.addTimeout(timeout, reactor)

    return udp, got, wait


@pytest_twisted.inlineCallbacks
def test_unknown_connection_reset_matches_libutps(reactor, node, processes, utp_socket):
    """Both stacks answer a DATA for an unknown id with the same RESET."""
    peer = processes.node("utp_peer.js", "listen", "0", "hold")
    node_port = (yield peer.wait_for(event("listening")))["port"]
    probe = HEADER.pack(0x01, 0, 4242, 123456, 0, 1048576, 777, 5) + b"stray"
    answers = {}
    for name, port in (("node", node_port), ("python", utp_socket.address()[1])):
        udp, got, wait = _collector(reactor)
        try:
            udp.send(probe, ("127.0.0.1", port))
            yield wait()
            # libutp's rate limit: the same offender again gets no second RESET
            udp.send(probe, ("127.0.0.1", port))
            yield defer.Deferred(lambda d: None).addTimeout(0.3, reactor).addErrback(lambda f: None)
            assert len(got) == 1, name
            answers[name] = decode(got[0][0])
        finally:
            yield udp.close()
    for p in answers.values():
        assert (p.type, p.connection_id, p.ack_nr, p.timestamp, p.timestamp_diff, p.wnd_size, p.extensions) == (
            ST_RESET, 4242, 777, 0, 0, 0, (),
        )


@pytest_twisted.inlineCallbacks
def test_reset_from_utp_native_for_a_forgotten_connection(reactor, node, processes, utp_socket):
    """utp-native restarted on the same port answers our packets with RESET."""
    peer = processes.node("utp_peer.js", "listen", "0", "hold")
    port = (yield peer.wait_for(event("listening")))["port"]
    sink = Sink(hello=b"hi")
    yield utp_socket.connect("127.0.0.1", port, OneFactory(sink))
    yield peer.wait_for(event("data"))
    peer.signal("KILL")  # vanishes without a packet
    yield peer.ended
    again = processes.node("utp_peer.js", "listen", str(port), "hold")
    yield again.wait_for(event("listening"))
    sink.transport.write(b"anyone there?")
    reason = yield sink.done.addTimeout(10, reactor)
    assert isinstance(reason, UTPConnectionResetError)
    assert utp_socket.connections == {}


@pytest_twisted.inlineCallbacks
def test_abort_reaches_utp_native_as_a_reset(reactor, node, processes, utp_socket):
    peer = processes.node("utp_peer.js", "listen", "0", "hold")
    port = (yield peer.wait_for(event("listening")))["port"]
    sink = Sink(hello=b"hi")
    yield utp_socket.connect("127.0.0.1", port, OneFactory(sink))
    yield peer.wait_for(event("data"))
    sink.transport.abortConnection()
    reason = yield sink.done
    assert isinstance(reason, error.ConnectionAborted)
    err = yield peer.wait_for(event("error"), timeout=10)
    assert err["code"] == "UTP_ECONNRESET"


@pytest_twisted.inlineCallbacks
def test_utp_native_half_close_then_answer(reactor, node, processes, utp_socket):
    """Node ends first; our (non-half-closeable) protocol answers and closes: no errors."""
    got = []

    class Answer(Sink):
        def dataReceived(self, data):
            got.append(data)
            self.transport.write(b"pong:" + data)

    proto = Answer()
    utp_socket.listen(OneFactory(proto))
    peer = processes.node("utp_peer.js", "connect", "127.0.0.1", str(utp_socket.address()[1]), "hold")
    yield peer.wait_for(event("bound"))
    peer.send({"cmd": "write", "hex": b"ping".hex()})
    data = yield peer.wait_for(event("data"))
    assert bytes.fromhex(data["hex"]) == b"pong:ping"
    peer.send({"cmd": "end"})
    reason = yield proto.done.addTimeout(10, reactor)
    assert isinstance(reason, error.ConnectionDone)
    yield peer.wait_for(event("end"))
    yield peer.wait_for(event("close"))
    assert not [o for o in peer.lines if o.get("event") == "error"]


@pytest_twisted.inlineCallbacks
def test_python_sender_recovers_losses_at_utp_natives_default_buffer(reactor, node, processes, utp_socket):
    """utp-native's ~208 KiB kernel buffer overflows: SACK/RTO recovery against libutp."""
    peer = processes.node("utp_peer.js", "listen", "0", "sink")
    port = (yield peer.wait_for(event("listening")))["port"]
    blob = random_blob(4 * 1024 * 1024)
    src = Source(blob)
    yield utp_socket.connect("127.0.0.1", port, OneFactory(src))
    end = yield peer.wait_for(event("end"), timeout=60)
    assert end["bytes"] == len(blob)
    assert end["sha256"] == hashlib.sha256(blob).hexdigest()
    assert isinstance((yield src.done), error.ConnectionDone)


@pytest_twisted.inlineCallbacks
def test_paused_python_reader_throttles_utp_native(reactor, node, processes, utp_socket):
    """Our advertised window (receive buffer minus unread bytes) holds libutp back."""
    size = 8 * 1024 * 1024

    class Pausing(Sink):
        paused_at = None

        def dataReceived(self, data):
            Sink.dataReceived(self, data)
            if self.paused_at is None and self.count > 1024 * 1024:
                self.paused_at = self.count
                self.transport.pauseProducing()

    sink = Pausing()
    utp_socket.listen(OneFactory(sink))
    peer = processes.node(
        "utp_peer.js", "connect", "127.0.0.1", str(utp_socket.address()[1]), f"source:{size}", env=BIG_RCVBUF
    )
    yield peer.wait_for(event("connect"))
    for _ in range(100):
        if sink.paused_at is not None:
            break
        yield deferLater(reactor, 0.05)
    assert sink.paused_at is not None
    yield deferLater(reactor, 2.0)
    conn = sink.transport
    unread = conn._readbuf_bytes
    assert sink.count == sink.paused_at  # nothing delivered while paused
    assert unread <= 1024 * 1024 + 64 * 1024  # the 1 MiB window held libutp back
    assert not [o for o in peer.lines if o.get("event") == "sent"]
    conn.resumeProducing()
    sent = yield peer.wait_for(event("sent"), timeout=30)
    reason = yield sink.done.addTimeout(30, reactor)
    assert isinstance(reason, error.ConnectionDone)
    assert sink.count == size and sink.hash.hexdigest() == sent["sha256"]


@pytest_twisted.inlineCallbacks
def test_utp_native_destroy_is_an_orderly_close_for_us(reactor, node, processes, utp_socket):
    """utp-native's destroy() sends FIN and frees its socket once acked; our
    FIN then draws a RESET, which must still end as ConnectionDone."""
    peer = processes.node("utp_peer.js", "listen", "0", "hold")
    port = (yield peer.wait_for(event("listening")))["port"]
    sink = Sink(hello=b"hi")
    yield utp_socket.connect("127.0.0.1", port, OneFactory(sink))
    yield peer.wait_for(event("data"))
    peer.send({"cmd": "destroy"})
    reason = yield sink.done.addTimeout(10, reactor)
    assert isinstance(reason, error.ConnectionDone)
    yield peer.wait_for(event("close"))
    assert not [o for o in peer.lines if o.get("event") == "error"]
