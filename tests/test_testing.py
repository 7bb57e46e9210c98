"""txhyperswarm.testing: the in-memory network (UDP, multicast, TCP) runs the real classes unchanged."""

from __future__ import annotations

import errno
import io
import os
import socket

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, clientFromString, serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol
from twisted.protocols.basic import FileSender, LineReceiver
from zope.interface import implementer

from txhyperswarm.dht.node import DHTNode
from txhyperswarm.testing import UDPNetwork
from txhyperswarm.utp.socket import UTPSocket


class Collect(DatagramProtocol):
    def __init__(self):
        self.got = []

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))


def test_datagrams_arrive_after_the_latency_from_the_senders_address():
    net = UDPNetwork(latency=0.05)
    a, b = Collect(), Collect()
    pa = net.reactor("127.0.0.1").listenUDP(0, a)
    pb = net.reactor("127.0.0.2").listenUDP(7000, b)
    a.transport.write(b"hello", ("127.0.0.2", 7000))
    net.clock.advance(0.049)
    assert b.got == []
    net.clock.advance(0.001)
    assert b.got == [(b"hello", ("127.0.0.1", pa.getHost().port))]
    assert pb.getHost().port == 7000


def test_a_taken_port_cannot_be_bound_and_is_free_again_after_stopListening():
    net = UDPNetwork()
    r = net.reactor("127.0.0.1")
    p = r.listenUDP(5000, Collect())
    with pytest.raises(error.CannotListenError) as e:
        r.listenUDP(5000, Collect())
    assert e.value.socketError.errno == errno.EADDRINUSE
    p.stopListening()
    r.listenUDP(5000, Collect())
    with pytest.raises(error.CannotListenError):
        r.listenUDP(0, Collect(), interface="127.0.0.9")


def test_bad_destinations_raise_as_a_real_udp_port_does():
    net = UDPNetwork()
    a = Collect()
    net.reactor().listenUDP(0, a)
    with pytest.raises(error.InvalidAddressError):
        a.transport.write(b"x", ("localhost", 1))
    with pytest.raises(error.MessageLengthError):
        a.transport.write(b"x" * 65508, ("127.0.0.1", 1))


@settings(max_examples=30, deadline=None)
@given(loss=st.floats(0, 1), dup=st.floats(0, 1), reorder=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_every_datagram_is_counted_once_as_lost_or_delivered(loss, dup, reorder, seed):
    net = UDPNetwork(loss=loss, duplicate=dup, reorder=reorder, seed=seed)
    a, b = Collect(), Collect()
    net.reactor("127.0.0.1").listenUDP(1, a)
    net.reactor("127.0.0.2").listenUDP(2, b)
    for i in range(200):
        a.transport.write(b"%d" % i, ("127.0.0.2", 2))
    net.run(1)
    c = net.counts
    assert c["sent"] == 200
    assert c["delivered"] == len(b.got)
    assert c["delivered"] + c["lost"] == 200 + c["duplicated"]
    assert {d for d, _ in b.got} <= {b"%d" % i for i in range(200)}


def test_reordering_lets_later_datagrams_overtake():
    net = UDPNetwork(latency=0.01, reorder=0.5, seed=3)
    a, b = Collect(), Collect()
    net.reactor("127.0.0.1").listenUDP(1, a)
    net.reactor("127.0.0.2").listenUDP(2, b)
    for i in range(50):
        a.transport.write(bytes([i]), ("127.0.0.2", 2))
        net.clock.advance(0.001)
    net.run(1)
    order = [d[0] for d, _ in b.got]
    assert sorted(order) == list(range(50))
    assert order != list(range(50))


def test_dht_nodes_bootstrap_and_ping_over_it():
    net = UDPNetwork(latency=0.005)
    boot = DHTNode(net.reactor("127.0.0.1"), bootstrap=[], port=49737)
    boot.startService()
    peers = [DHTNode(net.reactor(), bootstrap=[("127.0.0.1", 49737)], ephemeral=False) for _ in range(5)]
    for p in peers:
        p.startService()
    net.run(10)
    assert all(p.routing_table_size >= 1 for p in peers)
    pong = []
    peers[0].ping("127.0.0.1", 49737).addCallback(pong.append)
    net.run(1)
    assert len(pong) == 1
    for n in [boot, *peers]:
        n.stopService()


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Sink(Protocol):
    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_utp_carries_a_stream_through_loss_reordering_and_duplication(loss):
    net = UDPNetwork(latency=0.01, loss=loss, duplicate=0.02, reorder=0.02, seed=7)
    server = UTPSocket(net.reactor("127.0.0.1"), net.udp_socket("127.0.0.1", 6000))
    server.listen(Factory.forProtocol(Echo))
    client = UTPSocket(net.reactor("127.0.0.2"), net.udp_socket("127.0.0.2"))
    got = []
    client.connect("127.0.0.1", 6000, Factory.forProtocol(Sink)).addCallback(got.append)
    assert net.run_until(lambda: got, 5)
    payload = bytes(range(256)) * 1024  # 256 KiB
    got[0].transport.write(payload)
    assert net.run_until(lambda: len(got[0].received) >= len(payload), 60)
    assert bytes(got[0].received) == payload
    client.close()
    server.close()
    net.run(1)


# -- TCP ------------------------------------------------------------------------


class LineEcho(LineReceiver):
    def lineReceived(self, line):
        self.sendLine(b"echo: " + line)


class Recorder(Protocol):
    """Keeps what it receives and how it ended."""

    def __init__(self):
        self.received = bytearray()
        self.made = False
        self.lost = None

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    """Half-closeable: notes both halves ending; replies once the other side stops sending."""

    reply = b""

    def __init__(self):
        super().__init__()
        self.read_lost = self.write_lost = False

    def readConnectionLost(self):
        self.read_lost = True
        if self.reply:
            self.transport.write(self.reply)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        self.write_lost = True


def connected_pair(net, server_proto=Recorder, client_proto=Recorder, port=8000):
    """A connection from 10.0.0.2 to 10.0.0.1:port: ``(server protocol, client protocol)``."""
    servers = []

    def build(addr):
        p = server_proto()
        servers.append(p)
        return p

    f = Factory()
    f.buildProtocol = build
    net.reactor("10.0.0.1").listenTCP(port, f)
    got = []
    TCP4ClientEndpoint(net.reactor("10.0.0.2"), "10.0.0.1", port).connect(Factory.forProtocol(client_proto)).addBoth(got.append)
    assert net.run_until(lambda: got and servers, 1)
    assert isinstance(got[0], Protocol), got[0]
    return servers[0], got[0]


def test_line_protocols_talk_through_string_endpoints():
    net = UDPNetwork(latency=0.02)
    ports = []
    serverFromString(net.reactor("10.0.0.1"), "tcp:7000").listen(Factory.forProtocol(LineEcho)).addCallback(ports.append)
    assert ports[0].getHost() == IPv4Address("TCP", "10.0.0.1", 7000)

    class Client(LineReceiver):
        lines = []

        def connectionMade(self):
            self.sendLine(b"one")
            self.sendLine(b"two")

        def lineReceived(self, line):
            self.lines.append((net.clock.seconds(), line))
            if len(self.lines) == 2:
                self.transport.loseConnection()

    got = []
    clientFromString(net.reactor("10.0.0.2"), "tcp:host=10.0.0.1:port=7000").connect(
        Factory.forProtocol(Client)
    ).addCallback(got.append)
    net.run_events(0.039)
    assert got == []  # a round trip: SYN, SYN-ACK
    net.run_events(0.001)
    [client] = got
    assert client.transport.getPeer() == IPv4Address("TCP", "10.0.0.1", 7000)
    host = client.transport.getHost()
    assert host.type == "TCP" and host.host == "10.0.0.2" and host.port >= 32768
    [(server_end, client_end)] = [c for c in net.tcp_connections() if c[0][1] == 7000]
    assert server_end == ("10.0.0.1", 7000) and client_end == ("10.0.0.2", host.port)
    net.run_events(0.04)  # there and back again
    assert [line for _, line in Client.lines] == [b"echo: one", b"echo: two"]
    assert Client.lines[0][0] == pytest.approx(0.08)
    net.run(0.1)
    assert net.tcp_connections() == []
    ports[0].stopListening()
    assert net.clock.getDelayedCalls() == []  # nothing left behind


def test_tcp4_endpoints_and_connector_lifecycle():
    net = UDPNetwork()
    events = []

    class F(ClientFactory):
        protocol = Recorder

        def startedConnecting(self, connector):
            events.append("started")

        def clientConnectionLost(self, connector, reason):
            events.append(("lost", reason.type))

    listening = []
    TCP4ServerEndpoint(net.reactor("10.0.0.1"), 0).listen(Factory.forProtocol(LineEcho)).addCallback(listening.append)
    port = listening[0].getHost().port
    assert port >= 32768 and ("10.0.0.1", port) in net.listening()
    connector = net.reactor("10.0.0.2").connectTCP("10.0.0.1", port, F())
    assert connector.getDestination() == IPv4Address("TCP", "10.0.0.1", port)
    net.run(0.1)
    assert connector.state == "connected"
    connector.disconnect()
    net.run(0.1)
    assert events == ["started", ("lost", error.ConnectionDone)]
    listening[0].stopListening()
    assert net.listening() == []


def test_a_port_nobody_listens_on_refuses_and_a_down_host_times_out():
    net = UDPNetwork(latency=0.01)
    net.reactor("10.0.0.1")
    failures = []

    class F(ClientFactory):
        protocol = Recorder

        def clientConnectionFailed(self, connector, reason):
            failures.append((net.clock.seconds(), reason.type))

    r = net.reactor("10.0.0.2")
    r.connectTCP("10.0.0.1", 9, F())
    net.run_events(1)
    assert failures == [(pytest.approx(0.02), error.ConnectionRefusedError)]
    ended = []
    clientFromString(r, "tcp:host=10.0.0.1:port=9").connect(Factory.forProtocol(Recorder)).addErrback(ended.append)
    net.run(0.1)
    assert ended[0].check(error.ConnectionRefusedError)

    net.reactor("10.0.0.1").listenTCP(9, Factory.forProtocol(Recorder))
    net.down.add(("10.0.0.1", None))
    del failures[:]
    start = net.clock.seconds()
    r.connectTCP("10.0.0.1", 9, F(), timeout=5)
    net.run_events(10)
    assert failures == [(pytest.approx(start + 5), error.TimeoutError)]
    # A host that is not on the network does not answer either.
    r.connectTCP("10.9.9.9", 9, F(), timeout=2)
    net.run_events(3)
    assert failures[-1][1] is error.TimeoutError


def test_names_bind_addresses_and_cancelled_connects():
    net = UDPNetwork()
    net.reactor("10.0.0.1").listenTCP(80, Factory.forProtocol(Recorder))
    net.add_name("server.test", "10.0.0.1")
    r = net.reactor("10.0.0.2")
    got = []
    TCP4ClientEndpoint(r, "server.test", 80, bindAddress=("10.0.0.2", 4000)).connect(
        Factory.forProtocol(Recorder)
    ).addBoth(got.append)
    TCP4ClientEndpoint(r, "nowhere.test", 80).connect(Factory.forProtocol(Recorder)).addBoth(got.append)
    TCP4ClientEndpoint(r, "10.0.0.1", 80, bindAddress=("10.0.0.2", 4000)).connect(
        Factory.forProtocol(Recorder)
    ).addBoth(got.append)
    net.run(0.1)
    assert got[0].check(error.DNSLookupError) and got[1].check(error.ConnectBindError)
    assert got[2].transport.getHost().port == 4000
    d = TCP4ClientEndpoint(r, "10.0.0.1", 80).connect(Factory.forProtocol(Recorder))
    d.cancel()
    failed = []
    d.addErrback(failed.append)
    net.run(0.1)
    assert failed[0].check(error.ConnectingCancelledError)
    assert len(net.tcp_connections()) == 2  # only the connection from port 4000


def test_client_ports_are_ephemeral_distinct_and_not_reused_at_once():
    net = UDPNetwork()
    net.reactor("10.0.0.1").listenTCP(80, Factory.forProtocol(Recorder))
    net.reactor("10.0.0.1").listenUDP(32769, Collect())  # UDP ports are another namespace
    r = net.reactor("10.0.0.2")
    r.listenTCP(32770, Factory.forProtocol(Recorder))
    clients = []
    for _ in range(3):
        TCP4ClientEndpoint(r, "10.0.0.1", 80).connect(Factory.forProtocol(Recorder)).addCallback(clients.append)
    net.run(0.1)
    ports = [c.transport.getHost().port for c in clients]
    assert ports == [32768, 32769, 32771]
    for c in clients:
        c.transport.loseConnection()
    net.run(0.1)
    TCP4ClientEndpoint(r, "10.0.0.1", 80).connect(Factory.forProtocol(Recorder)).addCallback(clients.append)
    net.run(0.1)
    assert clients[-1].transport.getHost().port == 32772


def test_a_client_that_gives_up_after_its_syn_arrived_resets_the_accepted_connection():
    net = UDPNetwork(latency=0.01)
    servers = []

    class F(Factory):
        def buildProtocol(self, addr):
            servers.append(Recorder())
            return servers[-1]

    net.reactor("10.0.0.1").listenTCP(80, F())
    failed = []

    class C(ClientFactory):
        protocol = Recorder

        def clientConnectionFailed(self, connector, reason):
            failed.append(reason)

    connector = net.reactor("10.0.0.2").connectTCP("10.0.0.1", 80, C())
    net.run_events(0.015)
    assert servers[0].made
    connector.stopConnecting()
    assert failed[0].check(error.UserError)
    net.run_events(0.1)
    assert servers[0].lost.check(error.ConnectionLost)
    assert net.tcp_connections() == [] and net.counts["tcp_refused"] == 0


def test_a_paused_reader_pauses_the_writers_producer_and_bounds_the_bytes():
    net = UDPNetwork(latency=0.005, tcp_window=64 * 1024)
    server, client = connected_pair(net)
    server.transport.pauseProducing()

    @implementer(IPushProducer)
    class Source:
        paused = False
        written = 0
        pauses = resumes = 0

        def tick(self):
            if not self.paused:
                client.transport.write(b"x" * 16384)
                self.written += 16384

        def pauseProducing(self):
            self.paused = True
            self.pauses += 1

        def resumeProducing(self):
            self.paused = False
            self.resumes += 1

        def stopProducing(self):
            pass

    src = Source()
    client.transport.registerProducer(src, True)
    with pytest.raises(RuntimeError):
        client.transport.registerProducer(Source(), True)
    for _ in range(500):
        src.tick()
        net.run(0.01)
    assert src.paused and src.pauses == 1
    assert len(server.received) == 0
    # window in flight + Twisted's 64 KiB send buffer + the write that crossed it
    assert src.written <= 64 * 1024 + 64 * 1024 + 16384
    server.transport.resumeProducing()
    for _ in range(200):
        src.tick()
        net.run(0.01)
    assert src.resumes >= 1 and src.written > 10 * 64 * 1024
    client.transport.unregisterProducer()
    net.run(1)
    assert len(server.received) == src.written


def test_a_reader_paused_inside_dataReceived_gets_the_rest_once_it_resumes():
    net = UDPNetwork(latency=0.001)

    class Stutter(Recorder):
        def dataReceived(self, data):
            super().dataReceived(data)
            self.transport.pauseProducing()
            net.clock.callLater(0.05, self.transport.resumeProducing)

    server, client = connected_pair(net, server_proto=Stutter)
    payload = bytes(range(256)) * 2048  # 512 KiB: more than the window
    client.transport.write(payload)
    assert net.run_until(lambda: len(server.received) == len(payload), 10)
    assert bytes(server.received) == payload


def test_a_4_mib_file_arrives_byte_exact_through_a_pull_producer():
    net = UDPNetwork(latency=0.002)
    server, client = connected_pair(net)
    sizes = []
    record = server.dataReceived
    server.dataReceived = lambda data: (sizes.append(len(data)), record(data))
    payload = os.urandom(4 * 1024 * 1024)
    done = []
    FileSender().beginFileTransfer(io.BytesIO(payload), client.transport).addCallback(done.append)
    assert net.run_until(lambda: len(server.received) == len(payload), 30)
    assert done and bytes(server.received) == payload
    assert max(sizes) == 65536  # a real reactor reads 64 KiB at most
    client.transport.loseConnection()
    net.run(0.1)
    assert server.lost.check(error.ConnectionDone) and client.lost.check(error.ConnectionDone)


def test_lose_connection_waits_for_buffered_data_and_the_other_side_sees_done():
    net = UDPNetwork(latency=0.01, tcp_window=1000)
    server, client = connected_pair(net)
    client.transport.write(b"a" * 10_000)
    client.transport.loseConnection()
    assert client.transport.disconnecting and client.lost is None
    client.transport.write(b"b")  # still accepted while disconnecting
    assert net.run_until(lambda: client.lost is not None, 5)
    assert client.lost.check(error.ConnectionDone)
    net.run(0.1)
    assert bytes(server.received) == b"a" * 10_000 + b"b"
    assert server.lost.check(error.ConnectionDone)


@pytest.mark.parametrize("who", ["client", "server"])
def test_half_close_both_ways(who):
    net = UDPNetwork(latency=0.01)
    server, client = connected_pair(net, server_proto=HalfCloser, client_proto=HalfCloser)
    closer, other = (client, server) if who == "client" else (server, client)
    other.reply = b"your answer"
    closer.transport.write(b"my question")
    closer.transport.loseWriteConnection()
    net.run_events(0.005)
    assert closer.write_lost and not other.read_lost
    closer.transport.write(b"ignored: the write side is closed")
    net.run(0.1)
    assert other.read_lost and bytes(other.received) == b"my question"
    assert other.lost.check(error.ConnectionDone)
    # the answer came back over the half still open, then the FIN
    assert bytes(closer.received) == b"your answer" and closer.read_lost
    assert closer.lost.check(error.ConnectionDone)


def test_a_registered_producer_is_stopped_when_the_connection_ends():
    net = UDPNetwork()
    server, client = connected_pair(net)

    @implementer(IPushProducer)
    class Producer:
        stopped = 0

        def pauseProducing(self):
            pass

        def resumeProducing(self):
            pass

        def stopProducing(self):
            self.stopped += 1

    p = Producer()
    client.transport.registerProducer(p, True)
    server.transport.abortConnection()
    net.run(0.1)
    assert client.lost.check(error.ConnectionLost) and p.stopped == 1
    late = Producer()
    client.transport.registerProducer(late, True)  # on a closed transport: stopped at once
    assert late.stopped == 1


def test_half_close_to_a_protocol_that_is_not_half_closeable_ends_it():
    net = UDPNetwork(latency=0.01)
    server, client = connected_pair(net, client_proto=HalfCloser)
    client.transport.write(b"bye")
    client.transport.loseWriteConnection()
    net.run(0.1)
    assert bytes(server.received) == b"bye" and server.lost.check(error.ConnectionDone)
    assert client.read_lost and client.lost.check(error.ConnectionDone)


def test_abort_drops_the_buffer_and_the_other_side_sees_connection_lost():
    net = UDPNetwork(latency=0.01, tcp_window=100)
    server, client = connected_pair(net)
    client.transport.write(b"z" * 10_000)
    client.transport.abortConnection()
    assert client.lost.check(error.ConnectionAborted)
    client.transport.write(b"after")  # ignored
    net.run(0.1)
    assert server.lost.check(error.ConnectionLost)
    assert len(server.received) <= 100
    assert net.tcp_connections() == []


def test_data_to_a_closed_end_is_answered_with_a_reset():
    net = UDPNetwork(latency=0.01)

    @implementer(IHalfCloseableProtocol)
    class KeepsTalking(HalfCloser):
        def readConnectionLost(self):
            self.read_lost = True  # and does not close: writes on

    server, client = connected_pair(net, client_proto=KeepsTalking)
    server.transport.loseConnection()
    assert server.lost.check(error.ConnectionDone)
    net.run_events(0.015)
    assert client.read_lost and client.lost is None
    client.transport.write(b"anyone there?")
    net.run_events(0.015)
    assert client.lost is None  # the RST is on its way back
    net.run_events(0.01)
    assert client.lost.check(error.ConnectionLost)
    assert server.received == b""


def test_an_error_in_dataReceived_is_logged_and_ends_that_connection(logged_errors):
    net = UDPNetwork()

    class Broken(Recorder):
        def dataReceived(self, data):
            raise ValueError("bad data")

    server, client = connected_pair(net, server_proto=Broken)
    client.transport.write(b"boom")
    net.run(0.1)
    assert server.lost.check(ValueError)
    assert client.lost.check(error.ConnectionDone)
    assert logged_errors.take(ValueError)


def test_data_for_a_down_host_waits_and_keepalive_notices_it_stays_down():
    net = UDPNetwork(latency=0.01)
    server, client = connected_pair(net)
    net.down.add(("10.0.0.1", None))
    client.transport.write(b"held")
    net.run(2)
    assert server.received == b""
    net.down.clear()
    net.run(3)
    assert server.received == b"held"  # retransmitted, not lost

    client.transport.setTcpKeepAlive(True)
    sock = client.transport.getHandle()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    assert client.transport.getTcpKeepAlive()
    client.transport.setTcpNoDelay(True)
    assert client.transport.getTcpNoDelay()
    net.run(30)
    assert client.lost is None  # probes answered
    net.down.add(("10.0.0.1", None))
    start = net.clock.seconds()
    assert net.run_until(lambda: client.lost is not None, 60, step=0.5)
    assert client.lost.check(error.ConnectionLost)
    assert net.clock.seconds() - start <= 10 + 2 * 3 + 1
    assert net.counts["tcp_keepalive_timeouts"] == 1


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(st.binary(min_size=0, max_size=70_000), max_size=25),
    window=st.integers(512, 300_000),
    then=st.lists(st.sampled_from(["pause", "resume", "wait", "write on"]), max_size=25),
)
@example(writes=[b"a" * 40_000, b"b" * 40_000, b"c" * 70_000], window=300_000, then=["write on", "write on"])
@example(writes=[b"a" * 70_000] * 5, window=100_000, then=["pause", "write on", "wait", "resume"])
def test_tcp_delivers_every_byte_in_order_whatever_the_write_sizes(writes, window, then):
    """Whatever the writes, the window and the reader's pauses: every byte, in order, in reads of <= 64 KiB."""
    net = UDPNetwork(latency=0.003, tcp_window=window)
    server, client = connected_pair(net)
    sizes = []
    record = server.dataReceived
    server.dataReceived = lambda data: (sizes.append(len(data)), record(data))
    for data, action in zip(writes, then + ["wait"] * len(writes)):
        client.transport.write(data)
        if action == "pause":
            server.transport.pauseProducing()
        elif action == "resume":
            server.transport.resumeProducing()
        if action != "write on":  # else the next write goes out at the same instant
            net.run(0.004, step=0.001)
    server.transport.resumeProducing()
    client.transport.loseConnection()
    total = b"".join(writes)
    assert net.run_until(lambda: server.lost is not None, 60)
    assert bytes(server.received) == total
    assert max(sizes, default=0) <= 65536  # as a real reactor reads


def test_the_reactor_ports_and_transports_provide_their_interfaces():
    from twisted.internet import interfaces as i
    from zope.interface.verify import verifyObject

    net = UDPNetwork()
    r = net.reactor("10.0.0.1")
    for iface in (i.IReactorTime, i.IReactorUDP, i.IReactorMulticast, i.IReactorTCP, i.IReactorPluggableNameResolver):
        assert verifyObject(iface, r)
    assert verifyObject(i.IListeningPort, r.listenTCP(0, Factory.forProtocol(Recorder)))
    mport = r.listenMulticast(0, Collect())
    assert verifyObject(i.IMulticastTransport, mport) and verifyObject(i.IUDPTransport, mport)
    server, client = connected_pair(net)
    for t in (server.transport, client.transport):
        for iface in (i.ITCPTransport, i.IConsumer, i.IPushProducer, i.ISystemHandle):
            assert verifyObject(iface, t)
    assert verifyObject(i.IConnector, r.connectTCP("10.0.0.1", 1, ClientFactory()))


def test_a_web_client_and_server_talk_http_over_hostname_endpoints():
    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Page(Resource):
        isLeaf = True

        def render_GET(self, request):
            return b"x" * 300_000

    net = UDPNetwork(latency=0.005)
    net.reactor("10.0.0.1").listenTCP(80, Site(Page()))
    net.add_name("web.test", "10.0.0.1")
    client = net.reactor("10.0.0.2")
    pool = HTTPConnectionPool(client, persistent=True)
    bodies = []
    for _ in range(2):
        Agent(client, pool=pool).request(b"GET", b"http://web.test/").addCallback(readBody).addCallback(bodies.append)
        net.run(1)
    assert bodies == [b"x" * 300_000] * 2
    assert len(net.tcp_connections()) == 2  # one connection, kept and reused
    pool.closeCachedConnections()
    net.run(1)
    assert net.tcp_connections() == []


def test_a_reconnecting_factory_retries_until_the_server_listens():
    from twisted.internet.protocol import ReconnectingClientFactory

    net = UDPNetwork()
    made = []

    class Retry(ReconnectingClientFactory):
        clock = net.clock
        maxDelay = 2

        def buildProtocol(self, addr):
            self.resetDelay()
            made.append(net.clock.seconds())
            return Recorder()

    f = Retry()
    net.reactor("10.0.0.2").connectTCP("10.0.0.1", 80, f)
    net.reactor("10.0.0.1")
    net.run(5)
    assert made == [] and f.retries >= 3
    net.reactor("10.0.0.1").listenTCP(80, Factory.forProtocol(Recorder))
    net.run(3)
    assert len(made) == 1
    f.stopTrying()


def test_an_error_in_buildProtocol_is_logged_and_the_client_sees_the_connection_closed(logged_errors):
    net = UDPNetwork()

    class Broken(Factory):
        def buildProtocol(self, addr):
            raise KeyError("no")

    net.reactor("10.0.0.1").listenTCP(80, Broken())
    got = []
    TCP4ClientEndpoint(net.reactor("10.0.0.2"), "10.0.0.1", 80).connect(Factory.forProtocol(Recorder)).addCallback(got.append)
    net.run(0.1)
    assert got[0].lost.check(error.ConnectionDone)
    assert logged_errors.take(KeyError)


def test_bytes_stay_in_order_when_the_latency_drops_mid_stream():
    net = UDPNetwork(latency=0.5)
    server, client = connected_pair(net)
    for i in range(100):
        client.transport.write(b"%03d" % i)
        net.clock.advance(0.01)
        if i == 50:
            net.latency = 0.001
    net.run(2)
    assert bytes(server.received) == b"".join(b"%03d" % i for i in range(100))


# -- multicast -------------------------------------------------------------------


@pytest.mark.parametrize("loopback", [True, False])
def test_multicast_reaches_every_member_and_the_sender_only_with_loopback(loopback):
    net = UDPNetwork(latency=0.01)
    members = {}
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        members[host] = Collect()
        port = net.reactor(host).listenMulticast(5353, members[host], listenMultiple=True)
        port.joinGroup("224.0.0.251")
    bystander = Collect()
    net.reactor("10.0.0.4").listenMulticast(5353, bystander)  # bound, never joined
    other_port = Collect()
    net.reactor("10.0.0.5").listenMulticast(5354, other_port).joinGroup("224.0.0.251")

    sender = members["10.0.0.1"].transport
    sender.setLoopbackMode(loopback)
    assert sender.getLoopbackMode() is loopback and sender.getTTL() == 1
    sender.write(b"hello group", ("224.0.0.251", 5353))
    net.run(0.1)
    expected = [(b"hello group", ("10.0.0.1", 5353))]
    assert members["10.0.0.2"].got == members["10.0.0.3"].got == expected
    assert members["10.0.0.1"].got == (expected if loopback else [])
    assert bystander.got == other_port.got == []

    members["10.0.0.3"].transport.leaveGroup("224.0.0.251")
    sender.write(b"again", ("224.0.0.251", 5353))
    net.run(0.1)
    again = [(b"again", ("10.0.0.1", 5353))]
    assert members["10.0.0.2"].got == expected + again and members["10.0.0.3"].got == expected

    sender.setTTL(0)  # TTL 0: the datagram stays on the sending host
    sender.write(b"local", ("224.0.0.251", 5353))
    net.run(0.1)
    assert members["10.0.0.2"].got == expected + again
    assert members["10.0.0.1"].got == (expected + again + [(b"local", ("10.0.0.1", 5353))] if loopback else [])


def test_multicast_memberships_fail_as_the_kernel_does_and_share_a_port():
    net = UDPNetwork()
    r = net.reactor("10.0.0.1")
    a, b = Collect(), Collect()
    pa = r.listenMulticast(5353, a, listenMultiple=True)
    pb = r.listenMulticast(5353, b, listenMultiple=True)
    with pytest.raises(error.CannotListenError):
        r.listenMulticast(5353, Collect())
    with pytest.raises(error.CannotListenError):
        r.listenUDP(5353, Collect())
    results = []
    for d in (
        pa.joinGroup("224.0.0.251", "10.0.0.1"),
        pa.joinGroup("224.0.0.251"),
        pa.joinGroup("10.0.0.7"),
        pa.joinGroup("224.0.0.252", "10.9.9.9"),
        pa.leaveGroup("224.0.0.99"),
        pb.joinGroup("224.0.0.251"),
        pa.setOutgoingInterface("10.0.0.1"),
        pa.setOutgoingInterface("10.9.9.9"),
    ):
        d.addBoth(results.append)
    assert results[0] is None and results[5] is None and results[6] == 1
    assert [f.value.args[2] for f in results[1:5]] == [errno.EADDRINUSE, errno.EINVAL, errno.ENODEV, errno.EADDRNOTAVAIL]
    assert results[7].check(OSError) and pa.getOutgoingInterface() == "10.0.0.1"
    sender = Collect()
    net.reactor("10.0.0.2").listenUDP(0, sender)
    sender.transport.write(b"group", ("224.0.0.251", 5353))  # a plain UDP socket can send to a group
    sender.transport.write(b"unicast", ("10.0.0.1", 5353))
    net.run(0.1)
    src = ("10.0.0.2", sender.transport.getHost().port)
    assert a.got == [(b"group", src)]
    assert b.got == [(b"group", src), (b"unicast", src)]  # unicast: the last bound
    pa.stopListening()
    assert not pa.member("224.0.0.251")
    assert net.bound() == [("10.0.0.1", 5353), src]
    assert r.interfaces() == [("10.0.0.1", False)]


def test_lossy_multicast_draws_each_copy_from_the_knobs():
    net = UDPNetwork(loss=0.5, seed=5)
    members = [Collect() for _ in range(3)]
    for i, m in enumerate(members):
        net.reactor(f"10.0.0.{i + 1}").listenMulticast(9000, m).joinGroup("239.1.2.3")
    for i in range(200):
        members[0].transport.write(b"%d" % i, ("239.1.2.3", 9000))
    net.run(0.1)
    counts = [len(m.got) for m in members]
    assert all(50 < c < 150 for c in counts) and len(set(counts)) > 1
    assert net.counts["multicast"] == 200


def test_mdns_discovery_runs_on_the_memory_network():
    from txhyperswarm.mdns import MulticastDiscovery

    net = UDPNetwork(latency=0.002)
    topic = bytes(range(32))
    a = MulticastDiscovery(net.reactor("10.0.0.1"), interface="10.0.0.1")
    b = MulticastDiscovery(net.reactor("10.0.0.2"), interface="10.0.0.2")
    a.startService()
    b.startService()
    a.announce(topic, 4000)
    found = []
    b.query(topic, timeout=1).addCallback(found.append)
    net.run(2)
    [peers] = found
    assert [(p.host, p.port) for p in peers] == [("10.0.0.1", 4000)]
    a.stopService()
    b.stopService()
    net.run(0.1)
    assert net.bound() == []
