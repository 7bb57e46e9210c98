"""
The soak workload: one DHT bootstrap node and ten :class:`Hyperswarm` peers
on real sockets on 127.0.0.1 (the real reactor), each looping with seeded
randomness, while the process's RSS and open file descriptors are sampled;
then everything is stopped and checked.

The peers (``peers=10``):

* 2 **exposers**: ``--expose``-like tunnels (:class:`txhyperswarm.tunnel.Tunnels`)
  to a local echo server, announcing :data:`TUNNEL_TOPIC`; they leave and
  re-join it now and then. The second one closes its TCP listener once
  bound, so every tunnel to it comes over uTP (a holepunch through the
  bootstrap node, then uTP: how the dialler picks, :mod:`txhyperswarm.dial`).
* 2 **listeners**: ``--listen``-like tunnels on a local port; clients in
  this process send 1 KiB-256 KiB of random bytes through them, half-close,
  and check that exactly the same bytes come back (one swarm connection per
  tunnel, dialled with ``swarm.connect``). They look up the topic, and
  leave and re-join it now and then.
* the rest **chatters**: join and leave three chat topics (announcing or
  not, leaving with or without ``close_connections``), let the queue dial
  the peers found, dial some themselves (``swarm.connect``, closed after one
  echo round), drop connections (``loseConnection`` or ``abortConnection``),
  run echo rounds (the dialling side sends 1 B-64 KiB of random bytes, the
  other side echoes them; every byte is checked), and now and then restart
  (stop the swarm, start a new one on a new port). The last two close their
  TCP listeners once bound, so they are reached over uTP only.

Multicast DNS (``mdns=True``) runs on the peers that accept TCP (a peer
found by mDNS has no referrer to holepunch through, so a uTP-only one would
be unreachable by it); it needs a private network namespace.

Samples (every ``sample_every`` seconds): RSS (``/proc/self/status``
VmRSS), open fds (``/proc/self/fd``), live connections, delayed calls and
the work counts so far. At the end (:meth:`Soak.run`): no new action
starts, the work in flight finishes (bounded), every service stops, and
:class:`SoakResult` says what failed:

* RSS growth over the second half under ``max_growth`` (5 %): the median
  of the last three samples against the highest sample of the first half
  (the allocator's warm-up: RSS climbs for the first minutes to the level
  of the busiest moment, then stays; the sample nearest the middle is
  reported too);
* the open fds after the stop equal those before the soak started;
* no delayed call of the reactor that was not there before the soak is
  left after the stop;
* no error logged (``log.failure``, ``critical``, an unhandled error in a
  Deferred) and every error counter 0: the soak's own (a byte that came
  back wrong, a tunnel that failed or timed out, a join that errbacked)
  and the library's (the swarms' ``errors``, the tunnels' ``failed``, the
  ``*error*`` reasons of the uTP, UDP, mDNS and DHT drop counters, the
  bootstrap node's bad ``peers`` requests);
* work was done: joins, leaves, TCP and uTP connections, disconnects, echo
  rounds and tunnels all > 0.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import statistics
import time
import tracemalloc
from collections import Counter
from typing import Any, Dict, List, Optional, Set

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from txhyperswarm.dht import peers as dht_peers
from txhyperswarm.dht.node import DHTNode
from txhyperswarm.swarm import Hyperswarm, SwarmClosed
from txhyperswarm.tunnel import Tunnels

__all__ = ["Soak", "SoakResult", "TUNNEL_TOPIC", "CHAT_TOPICS", "rss_bytes", "open_fds"]

TUNNEL_TOPIC = hashlib.sha256(b"txhyperswarm soak tunnel").digest()
CHAT_TOPICS = [hashlib.sha256(b"txhyperswarm soak chat %d" % i).digest() for i in range(3)]
#: Seconds a tunnel client may take (connect, send, the echo back).
TUNNEL_TIMEOUT = 30.0
#: Seconds the end waits for the work in flight before stopping anyway.
DRAIN_TIMEOUT = 20.0
#: Seconds a peer waits between two actions (uniform).
ACT_EVERY = (0.3, 1.5)
#: Tunnel clients in flight per listener.
TUNNELS_IN_FLIGHT = 2


def rss_bytes() -> int:
    """This process's resident set size (``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> Dict[int, str]:
    """The open file descriptors, ``{fd: what it points to}`` (without the listing's own)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return out


def _sleep(reactor, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def _error_keys(counter: Any, prefix: str) -> Counter:
    """The ``*error*`` reasons of a drop counter, prefixed."""
    return Counter({f"{prefix}.{k}": v for k, v in dict(counter or {}).items() if "error" in str(k) and v})


# ---------------------------------------------------------------- protocols


@implementer(IHalfCloseableProtocol)
class _Echo(Protocol):
    """The exposed local server: sends back what it reads; ends when the client ends."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class _TunnelClient(Protocol):
    """A local client of a ``--listen`` port: writes ``payload``, half-closes, reads to the end."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.got = bytearray()
        self.timed_out = False
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.got += data

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.got))


@implementer(IHalfCloseableProtocol)
class _Chat(Protocol):
    """
    A chatter's swarm connection. The side that dialled runs echo rounds
    (:meth:`round`); the other side echoes. Every byte that comes back is
    checked against what was sent.
    """

    def __init__(self, peer: "_Peer") -> None:
        self.peer = peer
        self.sender = False
        self.info: Any = None
        self.expect = b""
        self.got = 0
        self.busy = False
        self.open = False
        self.close_after_round = False

    def connectionMade(self) -> None:
        self.open = True
        self.peer.live.add(self)

    def round(self) -> bool:
        """Send a new round (``False``: one is running, or the connection is gone)."""
        if self.busy or not self.open:
            return False
        self.sender = True
        self.busy = True
        self.expect = self.peer.rng.randbytes(self.peer.rng.randint(1, 64 * 1024))
        self.got = 0
        self.transport.write(self.expect)
        return True

    def dataReceived(self, data: bytes) -> None:
        soak = self.peer.soak
        if not self.sender:
            self.transport.write(data)
            soak.counts["echoed_bytes"] += len(data)
            return
        n = len(data)
        if not self.busy or self.expect[self.got:self.got + n] != data:
            soak.error("echo_mismatch", f"{self.peer.name}: {n} bytes that were not sent came back")
            self.transport.abortConnection()
            return
        self.got += n
        if self.got == len(self.expect):
            self.busy = False
            soak.counts["rounds"] += 1
            soak.counts["round_bytes"] += self.got
            if self.close_after_round:
                self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:
        self.open = False
        self.peer.live.discard(self)
        if self.busy:
            self.peer.soak.counts["rounds_cut"] += 1  # the other side dropped it: normal here


class _EchoFactory(Factory):
    noisy = False
    protocol = _Echo


class _ChatFactory(Factory):
    noisy = False

    def __init__(self, peer: "_Peer") -> None:
        self.peer = peer

    def buildProtocol(self, addr: Any) -> _Chat:
        return _Chat(self.peer)


# ---------------------------------------------------------------- peers


class _Peer:
    """One swarm peer of the soak and its action loop."""

    def __init__(self, soak: "Soak", index: int, role: str, utp_only: bool) -> None:
        self.soak = soak
        self.reactor = soak.reactor
        self.index = index
        self.role = role
        self.utp_only = utp_only
        self.name = f"{role}{index}{'/utp' if utp_only else ''}"
        self.rng = random.Random(f"{soak.seed}-{index}")
        self.swarm: Any = None
        self.tunnels: Optional[Tunnels] = None
        self.local_port: Any = None
        self.live: Set[_Chat] = set()
        self.joined: Dict[bytes, bool] = {}  # topic -> announce
        self.known: Dict[tuple, Any] = {}  # (host, port) -> a DHT PeerRecord (chatters)
        self.inflight: Set[defer.Deferred] = set()
        self.timer: Any = None
        self.acting = False
        self.busy = False  # an action that must not overlap (a restart) runs

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        soak = self.soak
        multicast = soak.mdns and not self.utp_only and self.role != "listen"
        options: Dict[str, Any] = dict(
            bootstrap=[("127.0.0.1", soak.boot_port)], host="127.0.0.1", multicast=multicast,
            rng=random.Random(self.rng.random()),  # ephemeral: adaptive, as by default
            network_options={"random": random.Random(self.rng.random())},
        )
        if self.role == "expose":
            self.tunnels = Tunnels(self.reactor, rng=random.Random(self.rng.random()))
            endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", soak.echo_port)
            swarm = Hyperswarm(self.reactor, factory=self.tunnels.expose_factory(endpoint, "echo"),
                               max_client_sockets=0, **options)
            swarm.on("connection", self.tunnels.swarm_connection)
            swarm.on("connection", self._count_connection)
        elif self.role == "listen":
            self.tunnels = Tunnels(self.reactor, rng=random.Random(self.rng.random()))
            holder: List[Hyperswarm] = []
            swarm_factory, local_factory = self.tunnels.listen_factories(
                lambda peer: holder[0].connect(peer), [TUNNEL_TOPIC], "soak")
            swarm = Hyperswarm(self.reactor, factory=swarm_factory, max_client_sockets=0,
                               max_server_sockets=-1, **options)
            holder.append(swarm)
            swarm.on("peer", self.tunnels.peer_found)
            self.local_port = self.reactor.listenTCP(0, local_factory, interface="127.0.0.1")
        else:
            swarm = Hyperswarm(self.reactor, factory=_ChatFactory(self), **options)
            swarm.on("connection", self._chat_connection)
            swarm.on("peer", self._found)
        if self.utp_only:
            swarm.once("listening", lambda: swarm.network.tcp_port.stopListening())
        self.swarm = swarm
        swarm.startService()

    def begin(self) -> None:
        self.acting = True
        if self.role in ("expose", "listen"):
            self._track(self.swarm.join(TUNNEL_TOPIC, announce=self.role == "expose",
                                        lookup=self.role == "listen"))
            self.joined[TUNNEL_TOPIC] = self.role == "expose"
            self.soak.counts["joins"] += 1
        self._schedule()

    def halt(self) -> None:
        """No new action."""
        self.acting = False
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def drained(self) -> bool:
        return not self.inflight and not self.busy and not any(c.busy for c in self.live)

    def stop(self) -> defer.Deferred:
        """Stop everything of this peer; harvest its counters."""
        self.halt()
        waits = []
        if self.tunnels is not None:
            waits.append(self.tunnels.close_all())
        if self.local_port is not None:
            waits.append(defer.maybeDeferred(self.local_port.stopListening))
        for d in list(self.inflight):
            d.cancel()
        swarm = self.swarm
        d = defer.DeferredList(waits, consumeErrors=True)
        d.addCallback(lambda _: swarm.stopService())
        d.addCallback(lambda _: self._harvest(swarm))
        return d

    def _harvest(self, swarm: Hyperswarm) -> None:
        """Add the library's error counters of ``swarm`` (stopped) to the soak's."""
        soak = self.soak
        errs: Counter = Counter({f"swarm.{k}": v for k, v in swarm.errors.items() if v})
        net = swarm.network
        if net.utp is not None:
            errs += _error_keys(net.utp.dropped, "utp")
            stats = net.utp.stats()
            soak.counts["utp_bytes"] += stats["bytes_sent"]
        if net.udp is not None:
            errs += _error_keys(net.udp.dropped, "udp")
        if net.mdns is not None:
            errs += _error_keys(net.mdns.dropped, "mdns")
        if net.dht is not None:
            errs += _error_keys(net.dht.dropped, "dht")
        if self.tunnels is not None:
            errs += Counter({f"tunnel.{k}": v for k, v in self.tunnels.failed.items() if v})
            for (kind, direction), n in self.tunnels.bytes.items():
                soak.counts[f"tunnel_{kind}_bytes_{direction}"] += n
        for key, n in errs.items():
            soak.error(key, f"{self.name}: {key} = {n}", n)

    # -- actions -------------------------------------------------------------

    def _schedule(self) -> None:
        if self.acting:
            self.timer = self.reactor.callLater(self.rng.uniform(*ACT_EVERY), self._act)

    def _act(self) -> None:
        self.timer = None
        if not self.acting:
            return
        try:
            if not self.busy:
                getattr(self, f"_act_{self.role}")()
        except Exception:
            self.soak.error("soak_bug", f"{self.name}: an action raised")
            self.soak.log_failure(Failure())
        self._schedule()

    def _track(self, d: defer.Deferred, what: str = "join") -> defer.Deferred:
        self.inflight.add(d)

        def done(result: Any) -> Any:
            self.inflight.discard(d)
            if isinstance(result, Failure):
                if result.check(SwarmClosed, defer.CancelledError):
                    return None
                self.soak.error(f"{what}_failed", f"{self.name}: {what}: {result.getErrorMessage()}")
                return None
            return result

        return d.addBoth(done)

    def _toggle(self, topic: bytes, announce: bool, lookup: bool, close_connections: bool = False) -> None:
        if topic in self.joined:
            del self.joined[topic]
            self._track(self.swarm.leave(topic, close_connections=close_connections), "leave")
            self.soak.counts["leaves"] += 1
        else:
            self.joined[topic] = announce
            self._track(self.swarm.join(topic, announce=announce, lookup=lookup))
            self.soak.counts["joins"] += 1

    def _act_expose(self) -> None:
        # mostly joined: leave one time in five, re-join at once after
        if TUNNEL_TOPIC not in self.joined or self.rng.random() < 0.2:
            self._toggle(TUNNEL_TOPIC, announce=True, lookup=False)

    def _act_listen(self) -> None:
        r = self.rng.random()
        if TUNNEL_TOPIC not in self.joined or r < 0.1:
            self._toggle(TUNNEL_TOPIC, announce=False, lookup=True)
        clients = sum(1 for d in self.inflight if getattr(d, "tunnel", False))
        if clients < TUNNELS_IN_FLIGHT and self.tunnels.candidates([TUNNEL_TOPIC]):
            self._tunnel()

    def _tunnel(self) -> None:
        size = self.rng.randint(1024, 256 * 1024)
        payload = self.rng.randbytes(size)
        client = _TunnelClient(payload)
        port = self.local_port.getHost().port
        connecting = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(lambda: client))
        timer = self.reactor.callLater(TUNNEL_TIMEOUT, self._tunnel_timeout, client)
        soak = self.soak

        def failed_to_connect(f: Failure) -> None:
            if not client.done.called:
                client.done.errback(f)

        connecting.addErrback(failed_to_connect)

        def finished(got: Any) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(got, Failure):
                if not got.check(defer.CancelledError):
                    soak.error("tunnel_failed", f"{self.name}: {got.getErrorMessage()}")
                return
            if got == payload:
                soak.counts["tunnels"] += 1
                soak.counts["tunnel_bytes"] += 2 * size
            elif got or not client.timed_out:
                soak.error("tunnel_mismatch", f"{self.name}: sent {size} bytes, got {len(got)} back"
                           f"{' (same prefix)' if payload.startswith(got) else ' (different bytes)'}")

        d = client.done
        d.tunnel = True
        d.addBoth(finished)
        self.inflight.add(d)
        d.addBoth(lambda _: self.inflight.discard(d))

    def _tunnel_timeout(self, client: _TunnelClient) -> None:
        client.timed_out = True
        self.soak.error("tunnel_timeout", f"{self.name}: a tunnel took more than {TUNNEL_TIMEOUT:g} s")
        if client.transport is not None:
            client.transport.abortConnection()
        elif not client.done.called:
            client.done.callback(b"")

    def _act_chat(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.25:
            topic = rng.choice(CHAT_TOPICS)
            announce = rng.random() < 0.7
            self._toggle(topic, announce=announce, lookup=True, close_connections=rng.random() < 0.5)
        elif r < 0.45:
            self._disconnect()
        elif r < 0.6:
            self._connect()
        elif r < 0.985:
            senders = [c for c in self.live if c.sender or (c.info is not None and c.info.client)]
            if senders:
                rng.choice(sorted(senders, key=id)).round()
        else:
            self._restart()

    def _disconnect(self) -> None:
        if not self.live:
            return
        conn = self.rng.choice(sorted(self.live, key=id))
        if self.rng.random() < 0.2:
            conn.transport.abortConnection()
        else:
            conn.transport.loseConnection()
        self.soak.counts["disconnects"] += 1

    def _connect(self) -> None:
        if not self.known:
            return
        key = self.rng.choice(sorted(self.known))
        record = self.known[key]
        d = self.swarm.connect(record)
        self.inflight.add(d)
        soak = self.soak

        def connected(result: Any) -> None:
            protocol, info = result
            soak.counts[f"connect_{info.type}"] += 1
            protocol.info = info
            protocol.close_after_round = True
            if not protocol.round():
                protocol.transport.loseConnection()

        def failed(f: Failure) -> None:
            if f.check(SwarmClosed, defer.CancelledError):
                return
            # a peer that restarted (gone from that port) or is busy: a normal outcome here
            soak.counts["connect_failed"] += 1
            self.known.pop(key, None)

        d.addCallbacks(connected, failed)
        d.addBoth(lambda _: self.inflight.discard(d))

    def _restart(self) -> None:
        self.busy = True
        self.soak.counts["restarts"] += 1
        old = self.swarm
        self.joined.clear()
        self.known.clear()

        def again(_: Any) -> None:
            self.busy = False
            if self.soak.stopping:
                return
            self.start()

        d = old.stopService()
        d.addCallback(lambda _: self._harvest(old))
        d.addBoth(again)
        self.inflight.add(d)
        d.addBoth(lambda _: self.inflight.discard(d))

    def _found(self, record: Any) -> None:
        if record.referrer is not None or (record.host, record.port) not in self.known:
            self.known[(record.host, record.port)] = record

    def _chat_connection(self, protocol: Any, info: Any) -> None:
        self._count_connection(protocol, info)
        protocol.info = info
        if info.client:
            protocol.round()

    def _count_connection(self, protocol: Any, info: Any) -> None:
        self.soak.counts[f"conn_{info.type}_{'out' if info.client else 'in'}"] += 1


# ---------------------------------------------------------------- the soak


class SoakResult:
    """
    What a soak did and found.

    :ivar samples: ``[{t, rss, fds, connections, delayed, counts...}]``.
    :ivar counts: the work done (``Counter``).
    :ivar errors: the errors counted (``Counter``), with :attr:`messages`.
    :ivar problems: what failed, one line each (empty: the soak passed).
    """

    def __init__(self) -> None:
        self.samples: List[dict] = []
        self.counts: Counter = Counter()
        self.errors: Counter = Counter()
        self.messages: List[str] = []
        self.problems: List[str] = []
        self.figures: Dict[str, Any] = {}
        self.leftover_calls: List[str] = []
        self.fd_diff: List[str] = []
        self.growth_by_type: List[tuple] = []
        self.tracemalloc_top: List[str] = []

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        """The samples, one line each."""
        lines = [f"{'t s':>6} {'RSS MiB':>8} {'fds':>5} {'conns':>5} {'calls':>5} {'joins':>6} {'conns+':>6}"
                 f" {'rounds':>7} {'tunnels':>7} {'MiB tun':>8}"]
        for s in self.samples:
            c = s["counts"]
            conns = sum(v for k, v in c.items() if k.startswith("conn_") or k in ("connect_tcp", "connect_utp"))
            lines.append(f"{s['t']:6.0f} {s['rss'] / 2**20:8.1f} {s['fds']:5d} {s['connections']:5d}"
                         f" {s['delayed']:5d} {c['joins']:6d} {conns:6d} {c['rounds']:7d} {c['tunnels']:7d}"
                         f" {c['tunnel_bytes'] / 2**20:8.1f}")
        return "\n".join(lines)

    def report(self) -> str:
        """The figures, the work, the errors and the verdict."""
        f = self.figures
        lines = [
            f"RSS MiB: first {f['rss_first'] / 2**20:.1f}, first half's highest {f['rss_mid'] / 2**20:.1f}, "
            f"last {f['rss_last'] / 2**20:.1f}, after stop {f['rss_after'] / 2**20:.1f}; "
            f"growth over the second half {f['growth'] * 100:+.2f} % (limit {f['max_growth'] * 100:.0f} %; "
            f"from the middle sample, {f['rss_at_middle'] / 2**20:.1f} MiB: {f['growth_from_middle'] * 100:+.2f} %)",
            f"fds: {f['fds_start']} before, {f['fds_end']} after the stop (peak {f['fds_peak']})",
            f"delayed calls: {f['calls_before']} before, {f['calls_after']} after the stop, "
            f"{len(self.leftover_calls)} left by the soak",
            "work: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())),
            "errors: " + (", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"),
        ]
        lines += [f"  {m}" for m in self.messages[:10]]
        lines += [f"  left: {c}" for c in self.leftover_calls[:10]]
        lines += [f"  fd: {d}" for d in self.fd_diff[:10]]
        if self.growth_by_type:
            lines.append("objects by type, middle -> last (largest growth): " + ", ".join(
                f"{name} {a}->{b}" for name, a, b in self.growth_by_type))
        lines += [f"  {t}" for t in self.tracemalloc_top]
        lines.append("verdict: " + ("PASS" if self.ok else "FAIL"))
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _type_census() -> Counter:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


class Soak:
    """
    The workload (module docstring).

    :param reactor: the real reactor (running).
    :param seconds: how long the peers loop.
    :param seed: seeds every peer's choices.
    :param peers: how many swarm peers (at least 6: 2 exposers, 2 listeners,
        the rest chatters).
    :param sample_every: seconds between samples.
    :param mdns: run multicast DNS on the peers that accept TCP.
    :param max_growth: the RSS growth allowed over the second half.
    :param use_tracemalloc: trace allocations; the top growth between the
        middle and the end goes into the result.
    :param on_sample: ``on_sample(sample)`` for each sample (the runner prints them).
    """

    def __init__(self, reactor: Any, *, seconds: float = 60.0, seed: int = 1, peers: int = 10,
                 sample_every: float = 3.0, mdns: bool = False, max_growth: float = 0.05,
                 use_tracemalloc: bool = False, on_sample: Any = None) -> None:
        if peers < 6:
            raise ValueError("a soak needs at least 6 peers")
        self.reactor = reactor
        self.seconds = seconds
        self.seed = seed
        self.n_peers = peers
        self.sample_every = sample_every
        self.mdns = mdns
        self.max_growth = max_growth
        self.use_tracemalloc = use_tracemalloc
        self.on_sample = on_sample
        self.counts: Counter = Counter()
        self.errors: Counter = Counter()
        self.messages: List[str] = []
        self.peers: List[_Peer] = []
        self.stopping = False
        self.boot: Any = None
        self.boot_port = 0
        self.boot_peers: Any = None
        self.echo_port = 0
        self._echo: Any = None
        self._t0 = 0.0

    # -- what the peers call ------------------------------------------------------

    def error(self, key: str, message: str, n: int = 1) -> None:
        self.errors[key] += n
        if len(self.messages) < 100:
            self.messages.append(message)

    def log_failure(self, failure: Failure) -> None:
        self.messages.append(failure.getTraceback())

    # -- the observer of logged errors ------------------------------------------------

    def _observe(self, event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError") or event.get("log_level") is LogLevel.critical:
            self.errors["logged"] += 1
            if len(self.messages) < 100:
                text = formatEvent(event)
                failure = event.get("log_failure")
                if failure is not None:
                    text += "\n" + failure.getTraceback()
                self.messages.append("logged: " + text)

    # -- run ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def run(self):
        """Run the soak; fires a :class:`SoakResult`."""
        reactor = self.reactor
        result = SoakResult()
        # Twisted keeps one /dev/null descriptor for ever from the first
        # listenTCP on (tcp._reservedFD, for EMFILE): open it before counting
        warm = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        yield warm.stopListening()
        gc.collect()
        fds_start = open_fds()
        calls_before = set(reactor.getDelayedCalls())
        globalLogPublisher.addObserver(self._observe)
        if self.use_tracemalloc:
            tracemalloc.start(1)
        samples = result.samples
        mid_census: Optional[Counter] = None
        mid_snapshot = None
        try:
            yield self._start()
            self._t0 = time.monotonic()
            # the exposers announce first, so the listeners' first lookup finds them
            exposers = [p for p in self.peers if p.role == "expose"]
            for p in exposers:
                p.begin()
            yield defer.DeferredList([defer.DeferredList(list(p.inflight)) for p in exposers])
            for p in self.peers:
                if p.role != "expose":
                    p.begin()
            half = self.seconds / 2
            next_t = 0.0
            while True:
                now = time.monotonic() - self._t0
                if now >= next_t:
                    samples.append(self._sample(now))
                    if self.on_sample is not None:
                        self.on_sample(samples[-1])
                    next_t += self.sample_every
                    if mid_census is None and now >= half:
                        gc.collect()
                        mid_census = _type_census()
                        if self.use_tracemalloc:
                            mid_snapshot = tracemalloc.take_snapshot()
                if now >= self.seconds:
                    break
                yield _sleep(reactor, min(next_t, self.seconds) - now)
            self.stopping = True
            for p in self.peers:
                p.halt()
            gc.collect()
            end_census = _type_census()
            if mid_snapshot is not None:
                end_snapshot = tracemalloc.take_snapshot()
                stats = end_snapshot.compare_to(mid_snapshot, "lineno")
                result.tracemalloc_top = [str(s) for s in stats[:10]]
            if mid_census is not None:
                grown = sorted(end_census, key=lambda k: end_census[k] - mid_census.get(k, 0), reverse=True)[:8]
                result.growth_by_type = [(k, mid_census.get(k, 0), end_census[k]) for k in grown
                                         if end_census[k] > mid_census.get(k, 0)]
            yield self._drain()
        finally:
            self.stopping = True
            yield self._stop()
            # connectionLost and stopListening finish on later reactor turns
            for _ in range(5):
                yield _sleep(reactor, 0.1)
            gc.collect()
            yield _sleep(reactor, 0)
            globalLogPublisher.removeObserver(self._observe)
            if self.use_tracemalloc:
                tracemalloc.stop()
        fds_end = open_fds()
        leftover = [c for c in reactor.getDelayedCalls() if c not in calls_before and c.active()]
        result.leftover_calls = [str(c) for c in leftover]
        result.fd_diff = ([f"{fd} -> {what} (opened)" for fd, what in sorted(fds_end.items()) if fd not in fds_start]
                          + [f"{fd} -> {what} (closed)" for fd, what in sorted(fds_start.items()) if fd not in fds_end])
        result.counts = Counter(self.counts)
        result.errors = Counter(self.errors)
        result.messages = list(self.messages)
        self._judge(result, len(fds_start), len(fds_end), len(calls_before), len(reactor.getDelayedCalls()))
        return result

    @defer.inlineCallbacks
    def _start(self):
        reactor = self.reactor
        self._echo = reactor.listenTCP(0, _EchoFactory(), interface="127.0.0.1")
        self.echo_port = self._echo.getHost().port
        self.boot = DHTNode(reactor, bootstrap=[], host="127.0.0.1", port=0, ephemeral=False)
        self.boot_peers = dht_peers.register(self.boot)
        self.boot.startService()
        self.boot_port = self.boot.address()[1]
        roles = ["expose", "expose", "listen", "listen"] + ["chat"] * (self.n_peers - 4)
        for i, role in enumerate(roles):
            utp_only = (role == "expose" and i == 1) or (role == "chat" and i >= self.n_peers - 2)
            self.peers.append(_Peer(self, i, role, utp_only))
        for p in self.peers:
            p.start()
        deadline = time.monotonic() + 20
        while not all(p.swarm.address() is not None for p in self.peers):
            if time.monotonic() > deadline:
                raise RuntimeError("the peers did not bind within 20 s")
            yield _sleep(reactor, 0.05)

    @defer.inlineCallbacks
    def _drain(self):
        """Wait (bounded) for the work in flight: tunnels, rounds, restarts."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while not all(p.drained() for p in self.peers) and time.monotonic() < deadline:
            yield _sleep(self.reactor, 0.1)
        left = [p.name for p in self.peers if not p.drained()]
        if left:
            self.counts["not_drained"] += len(left)

    @defer.inlineCallbacks
    def _stop(self):
        yield defer.DeferredList([p.stop() for p in self.peers if p.swarm is not None], consumeErrors=True)
        if self.boot is not None:
            yield self.boot.stopService()
            self.errors.update({f"bootstrap.peers.{k}": v for k, v in self.boot_peers.errors.items() if v})
            self.errors.update(_error_keys(self.boot.dropped, "bootstrap.dht"))
        if self._echo is not None:
            yield defer.maybeDeferred(self._echo.stopListening)

    def _sample(self, t: float) -> dict:
        return {
            "t": t,
            "rss": rss_bytes(),
            "fds": len(open_fds()),
            "connections": sum(len(p.swarm.connections) for p in self.peers if p.swarm is not None),
            "delayed": len(self.reactor.getDelayedCalls()),
            "counts": Counter(self.counts),
        }

    def _judge(self, result: SoakResult, fds_start: int, fds_end: int, calls_before: int, calls_after: int) -> None:
        samples = result.samples
        problems = result.problems
        rss = [s["rss"] for s in samples]
        # the middle: the highest RSS of the first half (what the allocator
        # had already taken while warming up); the end: the median of the
        # last three samples (one in-flight burst does not decide)
        mid = max(s["rss"] for s in samples if s["t"] <= self.seconds / 2)
        last = statistics.median(rss[-3:])
        growth = (last - mid) / mid
        mid_i = min(range(len(samples)), key=lambda i: abs(samples[i]["t"] - self.seconds / 2))
        result.figures = dict(
            rss_first=rss[0], rss_mid=mid, rss_last=last, rss_after=rss_bytes(), growth=growth,
            rss_at_middle=rss[mid_i], growth_from_middle=(last - rss[mid_i]) / rss[mid_i],
            max_growth=self.max_growth, fds_start=fds_start, fds_end=fds_end,
            fds_peak=max(s["fds"] for s in samples), calls_before=calls_before, calls_after=calls_after,
        )
        if growth >= self.max_growth:
            problems.append(f"RSS grew {growth * 100:.2f} % over the second half "
                            f"({mid / 2**20:.1f} -> {last / 2**20:.1f} MiB)")
        if fds_end != fds_start:
            problems.append(f"open fds: {fds_start} before, {fds_end} after")
        if result.leftover_calls:
            problems.append(f"{len(result.leftover_calls)} delayed call(s) left after the stop")
        if result.errors:
            problems.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())))
        c = result.counts
        need = {
            "joins": c["joins"], "leaves": c["leaves"], "disconnects": c["disconnects"],
            "rounds": c["rounds"], "tunnels": c["tunnels"],
            "tcp connections": c["conn_tcp_out"] + c["conn_tcp_in"] + c["connect_tcp"],
            "utp connections": c["conn_utp_out"] + c["conn_utp_in"] + c["connect_utp"],
            "utp tunnel bytes": c["tunnel_utp_bytes_in"],
        }
        for what, n in need.items():
            if not n:
                problems.append(f"no {what}: the soak did not do its work")
        if c["not_drained"]:
            problems.append(f"{c['not_drained']} peer(s) still had work in flight {DRAIN_TIMEOUT:g} s after the end")
