"""
The dht-rpc 4.9.6 request/response layer (Node's ``lib/io.js``; dht.md 1.4-1.6).

* Request ids: a 16-bit counter from a random start, wrapping; responses are
  matched by rid alone.
* Timeouts and retries run on a 750 ms tick driven by the injected reactor:
  a request starts with ``timeout = 4`` ticks; at ``timeout == 2`` it is
  resent (same bytes, same rid) while fewer than 3 tries were made, else it
  counts down and fails at 0 - 3 transmissions, failure at about tick 10.
* Saturation: at >= 50 requests/s and >= 16 in flight, new requests queue
  FIFO and are released as others finish; retries wait too.
* Inbound limits, before decoding: :data:`RATE_LIMIT_PER_IP` datagrams a
  second per source IP (``dropped["rate_ip"]``), and once all limited
  sources together sent :data:`OVERLOAD_RATE` in the current second, only
  :data:`OVERLOAD_LIMIT_PER_IP` per source (``dropped["overload"]``).
* Roundtrip tokens (:mod:`txhyperswarm.dht.tokens`), rotated every 5 min;
  an UPDATE with a bad token is dropped without a reply.
* ``_holepunch`` via a referrer: 500 ms after the first request to a peer
  learned from another node, and with every retry.

The owner (``DHTNode``) receives decoded messages through
:class:`IRPCController` (twisted.names' ``controller.messageReceived`` is the
model): ``request_received``, ``response_received`` and ``wrong_id``.
"""

from __future__ import annotations

import os
import random
from collections import Counter, deque
from typing import Callable, Deque, Dict, Optional, Tuple

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface

from txhyperswarm.dht import _wire
from txhyperswarm.dht._wire import SMALL_VARINTS, varint
from txhyperswarm.dht.errors import RequestCancelled, RequestTimeout
from txhyperswarm.dht.messages import (
    QUERY,
    RESPONSE,
    DecodeError,
    Holepunch,
    Message,
    decode_message,
    encode_peer,
    is_ipv4_literal,
)
from txhyperswarm.dht.routing import Contact
from txhyperswarm.dht.tokens import ROTATE_INTERVAL, TokenStore

__all__ = [
    "RPC",
    "IRPCController",
    "TICK_INTERVAL",
    "TRIES",
    "CONCURRENCY",
    "CONCURRENCY_RPS",
    "RATE_LIMIT_PER_IP",
    "RATE_LIMIT_EXEMPT",
    "OVERLOAD_RATE",
    "OVERLOAD_LIMIT_PER_IP",
]

#: Seconds between IO ticks (dht-rpc: 750 ms).
TICK_INTERVAL = 0.75
#: Transmissions per request (original + 2 resends).
TRIES = 3
#: In-flight requests that, with the rate limit, mean "saturated".
CONCURRENCY = 16
#: Requests per second that, with the in-flight limit, mean "saturated".
CONCURRENCY_RPS = 50
#: Delay of the first automatic holepunch via a referrer (dht-rpc: 500 ms).
FAST_HOLEPUNCH_DELAY = 0.5

_HOLEPUNCH = b"_holepunch"
#: Datagrams a source IP may send us per second before the rest of that
#: second is dropped undecoded (``dropped["rate_ip"]``). A Node peer sends
#: a few a second; 0 or ``None``: no limit.
RATE_LIMIT_PER_IP = 2000
#: Sources the limit does not apply to: the machine itself (Linux drops a
#: 127/8 source arriving from outside, so it cannot be spoofed), where the
#: benchmarks and a local stack run thousands of RPCs a second.
RATE_LIMIT_EXEMPT = frozenset({"127.0.0.1"})
#: Datagrams a second from all limited sources together beyond which the
#: node is overloaded: for the rest of that second a source that already
#: sent :data:`OVERLOAD_LIMIT_PER_IP` is dropped undecoded too
#: (``dropped["overload"]``). A flood from many addresses, each under
#: :data:`RATE_LIMIT_PER_IP`, is then shed instead of queueing in the
#: socket's receive buffer ahead of everyone else's requests.
OVERLOAD_RATE = 10000
#: Datagrams a second one source IP may send while the node is overloaded
#: (a Node peer sends a few).
OVERLOAD_LIMIT_PER_IP = 20
#: Source IPs counted in one second at most (beyond: the count restarts).
_RATE_TRACKED = 65536

Callback = Callable[[Optional[Exception], Optional[Message], Optional[Tuple[str, int]], "_Request"], None]


class IRPCController(Interface):
    """
    What an :class:`RPC` calls up with the messages it decoded (its owner,
    the ``DHTNode``). Exceptions raised here are logged and counted as
    ``dropped["error"]``; they never reach the socket.
    """

    def request_received(msg, host, port, is_update):
        """
        A QUERY (``is_update`` false) or an UPDATE whose roundtrip token was
        valid came from ``host:port``; answer it with :meth:`RPC.response`,
        :meth:`RPC.error` or not at all.
        """

    def response_received(msg, host, port):
        """
        A RESPONSE came from ``host:port`` (called before the matching
        request's callback, and also when no request matches).
        """

    def wrong_id(contact):
        """
        The response to a request sent to ``contact`` (a
        :class:`~txhyperswarm.dht.routing.Contact` with an id) carried
        another id or none: the contact is stale.
        """


class _Request:
    __slots__ = (
        "rid",
        "callback",
        "command",
        "buffer",
        "peer",
        "timeout",
        "tries",
        "holepunch_call",
        "sent_id",
        "done",
    )


class _Speedometer:
    """
    Node's ``speedometer()`` (5 s window, 4 slots per second): the mean
    rate per second of events over the last 5 seconds.
    """

    RESOLUTION = 4
    SIZE = RESOLUTION * 5

    def __init__(self, seconds: Callable[[], float]) -> None:
        self._seconds = seconds
        self._buffer = [0]
        self._pointer = 1
        self._last = int(seconds() * self.RESOLUTION)

    def __call__(self, delta: int = 0) -> float:
        now = int(self._seconds() * self.RESOLUTION)
        dist = now - self._last
        if dist > self.SIZE:
            dist = self.SIZE
        self._last = now
        buf = self._buffer
        size = self.SIZE
        while dist > 0:
            dist -= 1
            if self._pointer == size:
                self._pointer = 0
            prev = buf[self._pointer - 1] if self._pointer else buf[size - 1]
            if self._pointer < len(buf):
                buf[self._pointer] = prev
            else:
                buf.append(prev)
            self._pointer += 1
        if delta:
            buf[self._pointer - 1] += delta
        top = buf[self._pointer - 1]
        if len(buf) < self.RESOLUTION:
            return top
        btm = 0 if len(buf) < size else buf[0 if self._pointer == size else self._pointer]
        return (top - btm) * self.RESOLUTION / len(buf)


class RPC:
    """
    Requests, responses, retries and tokens over a ``send(data, addr)``.

    :param reactor: ``IReactorTime`` (a ``Clock`` in tests).
    :param send: ``send(data, (host, port))`` puts one datagram on the wire.
    :param controller: the owner, an :class:`IRPCController`, called with
        decoded messages.
    :param node_id: the id sent in every message, ``None`` when ephemeral.
    :param dropped: counter of dropped datagrams by reason (shared with the
        owner).
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        send: Callable[[bytes, Tuple[str, int]], object],
        controller: IRPCController,
        node_id: Optional[bytes],
        dropped: Optional[Counter] = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        rate_limit_per_ip: Optional[int] = RATE_LIMIT_PER_IP,
        rate_limit_exempt=RATE_LIMIT_EXEMPT,
    ) -> None:
        self._reactor = reactor
        #: Datagrams per source IP per second (:data:`RATE_LIMIT_PER_IP`).
        self.rate_limit_per_ip = rate_limit_per_ip
        #: Source IPs exempt from it (:data:`RATE_LIMIT_EXEMPT`).
        self.rate_limit_exempt = frozenset(rate_limit_exempt or ())
        #: Datagrams a second from all limited sources beyond which each
        #: may send only :attr:`overload_limit_per_ip` (:data:`OVERLOAD_RATE`;
        #: 0 or ``None``: never).
        self.overload_rate = OVERLOAD_RATE
        #: ... (:data:`OVERLOAD_LIMIT_PER_IP`).
        self.overload_limit_per_ip = OVERLOAD_LIMIT_PER_IP
        self._window: Dict[str, int] = {}
        self._window_total = 0
        self._window_loop = LoopingCall(self._new_window)
        self._window_loop.clock = reactor
        self._send = send
        self._controller = controller
        #: In-flight requests that, with :attr:`concurrency_rps`, mean
        #: "saturated" (dht-rpc ``concurrency``); walks keep this many in flight.
        self.concurrency = CONCURRENCY
        #: Requests per second that, with :attr:`concurrency`, mean "saturated".
        self.concurrency_rps = CONCURRENCY_RPS
        self._id: Optional[bytes] = None
        self._id_field: Optional[bytes] = None
        self.id = node_id
        self.dropped = dropped if dropped is not None else Counter()
        self.tokens = TokenStore(random_bytes)
        self._rid = random.randrange(65536)
        #: In-flight requests by rid, oldest first (dht-rpc ``inflight``).
        self._requests: Dict[int, _Request] = {}
        self._pending: Deque[tuple] = deque()
        self._speed = _Speedometer(reactor.seconds)
        self._tick_loop = LoopingCall(self._on_tick)
        self._tick_loop.clock = reactor
        self._rotate_loop = LoopingCall(self.tokens.rotate)
        self._rotate_loop.clock = reactor
        self._to_cache: Dict[Tuple[str, int], bytes] = {}
        #: Not running (before :meth:`start`, after :meth:`destroy`): requests
        #: are refused at once, nothing is sent. Before start no tick would
        #: ever time a request out.
        self.destroyed = True
        #: Outgoing requests by command: (command bytes) -> count.
        self.sent: Counter = Counter()

    @property
    def id(self) -> Optional[bytes]:
        """The id sent in every message (``None``: ephemeral, no id field)."""
        return self._id

    @id.setter
    def id(self, node_id: Optional[bytes]) -> None:
        self._id = node_id
        self._id_field = None if node_id is None else b"\x1a\x20" + node_id

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start the 750 ms tick and the 5 min token rotation (again after :meth:`destroy`)."""
        self.destroyed = False
        if not self._tick_loop.running:
            self._tick_loop.start(TICK_INTERVAL, now=False)
            self._rotate_loop.start(ROTATE_INTERVAL, now=False)
            self._window_loop.start(1.0, now=False)

    def destroy(self) -> None:
        """Stop timers; queued and in-flight requests fail with RequestCancelled."""
        if self.destroyed:
            return
        self.destroyed = True
        for loop in (self._tick_loop, self._rotate_loop, self._window_loop):
            if loop.running:
                loop.stop()
        pending, self._pending = self._pending, deque()
        for entry in pending:
            self._refuse(entry)
        for req in list(self._requests.values()):
            self._cancel(req)

    def _new_window(self) -> None:
        self._window.clear()
        self._window_total = 0

    # -- ids --------------------------------------------------------------

    def _free(self) -> int:
        rid = self._rid
        self._rid = (rid + 1) & 0xFFFF
        return rid

    # -- receiving --------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Tuple[str, int]) -> None:
        """The DHT receiver for ``UDPSocket.set_dht_receiver``. Never raises."""
        host, port = addr
        if not port:
            self.dropped["port0"] += 1
            return
        limit = self.rate_limit_per_ip
        if limit and host not in self.rate_limit_exempt:
            # before decoding: a flood from one address is shed for the
            # price of a dict update
            window = self._window
            n = window.get(host, 0) + 1
            if n > limit:
                self.dropped["rate_ip"] += 1
                return
            if n > self.overload_limit_per_ip and self.overload_rate and self._window_total >= self.overload_rate:
                self.dropped["overload"] += 1
                return
            if n == 1 and len(window) >= _RATE_TRACKED:
                window.clear()
            window[host] = n
            self._window_total += 1
        try:
            msg = decode_message(data)
        except DecodeError as e:
            self.dropped[e.reason] += 1
            return
        try:
            t = msg.type
            if t == RESPONSE:
                self._controller.response_received(msg, host, port)
                self._finish(msg.rid, None, msg, addr)
            elif t == QUERY:
                self._controller.request_received(msg, host, port, False)
            else:  # UPDATE (closed enum: nothing else parses)
                rt = msg.roundtripToken
                if not (msg.HasField("roundtripToken") and self.tokens.valid(rt, host)):
                    self.dropped["bad_token"] += 1
                    return
                self._controller.request_received(msg, host, port, True)
        except Exception:
            self.dropped["error"] += 1
            self.log.failure("DHT message from {host}:{port} failed", host=host, port=port)

    # -- requests ---------------------------------------------------------

    def _saturated(self) -> bool:
        return len(self._requests) >= self.concurrency and self._speed(0) >= self.concurrency_rps

    def query(
        self,
        command: bytes,
        target: Optional[bytes],
        value: Optional[bytes],
        peer: Contact,
        callback: Callback,
        immediately: bool = False,
    ) -> Optional[_Request]:
        """
        Send a QUERY to ``peer`` (queued when saturated unless
        ``immediately``). ``callback(err, msg, addr, req)`` runs exactly once.

        :returns: the in-flight request (for :meth:`cancel`), or ``None``
            when it was queued or refused.
        :raises ValueError: ``peer`` is an IPv4 address with a port that is
            not 0-65535 (checked before queueing: a queued request is sent
            from the tick, which must not raise).
        """
        return self._request(_wire.QUERY_HEAD, command, target, value, None, peer, callback, immediately)

    def update(
        self,
        command: bytes,
        target: Optional[bytes],
        value: Optional[bytes],
        peer: Contact,
        callback: Callback,
    ) -> Optional[_Request]:
        """Send an UPDATE carrying ``peer.token`` (returns and raises like :meth:`query`)."""
        return self._request(_wire.UPDATE_HEAD, command, target, value, peer.token, peer, callback, False)

    def _request(self, head, command, target, value, token, peer, callback, immediately) -> Optional[_Request]:
        host = peer.host
        to = encode_peer(host, peer.port) if is_ipv4_literal(host) else None
        entry = (head, command, target, value, token, peer, callback, to)
        if self.destroyed:
            self._refuse(entry)
        elif immediately or not (self._pending or self._saturated()):
            return self._request_immediately(entry)
        else:
            self._pending.append(entry)
        return None

    @staticmethod
    def _refuse(entry: tuple) -> None:
        command, peer, callback = entry[1], entry[5], entry[6]
        callback(RequestCancelled(command, peer.host, peer.port), None, None, None)

    def _request_immediately(self, entry: tuple) -> _Request:
        head, command, target, value, token, peer, callback, to = entry
        rid = self._free()
        buffer = _wire.encode(head, rid, to, self.id, target, None, token, command, None, value)
        self._speed(1)
        self.sent[command] += 1
        req = _Request()
        req.rid = rid
        req.callback = callback
        req.command = command
        req.buffer = buffer
        req.peer = peer
        req.timeout = 4
        req.tries = 0
        req.holepunch_call = None
        req.sent_id = self.id
        req.done = False
        if peer.referrer is not None and not peer.fast_holepunch:
            peer.fast_holepunch = True
            req.holepunch_call = self._reactor.callLater(FAST_HOLEPUNCH_DELAY, self._fast_holepunch, req)
        old = self._requests.pop(rid, None)
        if old is not None:  # 65536 requests in flight: the oldest loses its slot
            self._cancel(old)
        self._requests[rid] = req
        self.send(buffer, (peer.host, peer.port))
        if command == _HOLEPUNCH:
            self._holepunch(req)
        return req

    def _fast_holepunch(self, req: _Request) -> None:
        req.holepunch_call = None
        self._holepunch(req)

    def _holepunch(self, req: _Request) -> None:
        """Ask ``req.peer.referrer`` to poke ``req.peer`` (dht.md 1.9)."""
        referrer = req.peer.referrer
        if referrer is None or self.destroyed:
            return
        rid = req.rid if req.command == _HOLEPUNCH else self._free()
        rhost, rport = referrer
        to = encode_peer(rhost, rport) if is_ipv4_literal(rhost) else None
        punch = Holepunch()
        punch.to = encode_peer(req.peer.host, req.peer.port)
        buffer = _wire.encode(
            _wire.QUERY_HEAD, rid, to, req.sent_id, command=_HOLEPUNCH, value=punch.SerializeToString()
        )
        self.send(buffer, referrer)

    def cancel(self, req: _Request) -> None:
        """Give up on a request: its callback gets RequestCancelled."""
        if not req.done and self._requests.get(req.rid) is req:
            self._cancel(req)

    def _cancel(self, req: _Request, err: Optional[Exception] = None) -> None:
        if err is None:
            err = RequestCancelled(req.command, req.peer.host, req.peer.port)
        self._finish(req.rid, err, None, None)

    def _finish(self, rid: int, err, msg, addr) -> None:
        req = self._requests.pop(rid, None)
        if req is None:
            if msg is not None:
                self.dropped["unknown_rid"] += 1
            return
        req.done = True
        if req.holepunch_call is not None:
            if req.holepunch_call.active():
                req.holepunch_call.cancel()
            req.holepunch_call = None
        if msg is not None:
            peer_id = req.peer.id
            if peer_id is not None and msg.id != peer_id:
                self._controller.wrong_id(req.peer)
        try:
            req.callback(err, msg, addr, req)
        except Exception:
            self.log.failure("DHT request callback failed")
        pending = self._pending
        while pending and not self._saturated():
            self._request_immediately(pending.popleft())

    def _on_tick(self) -> None:
        for req in list(self._requests.values()):
            if req.done:
                continue
            if req.timeout == 2:
                req.tries += 1
                if req.tries < TRIES:
                    if self._saturated():
                        req.tries -= 1
                    else:
                        self._retry(req)
                    continue
            req.timeout -= 1
            if req.timeout:
                continue
            self._cancel(req, RequestTimeout(req.command, req.peer.host, req.peer.port))

    def _retry(self, req: _Request) -> None:
        req.timeout = 4
        self.send(req.buffer, (req.peer.host, req.peer.port))
        if req.peer.referrer is not None:
            self._holepunch(req)

    # -- sending ----------------------------------------------------------

    def peer_bytes(self, host: str, port: int) -> bytes:
        """``encode_peer``, cached: responses echo the same few addresses."""
        key = (host, port)
        to = self._to_cache.get(key)
        if to is None:
            to = encode_peer(host, port)
            if len(self._to_cache) >= 4096:
                self._to_cache.clear()
            self._to_cache[key] = to
        return to

    def send(self, data: bytes, addr: Tuple[str, int]) -> None:
        """
        Put one datagram on the wire; never raises. A transport that refuses
        it (a host name, an oversized datagram) loses it like the network
        would, counted in ``dropped["send_error"]``: the request then times
        out, and the 750 ms tick that resends it keeps running.
        """
        if self.destroyed:
            return
        try:
            self._send(data, addr)
        except Exception as e:
            self._send_failed(e, addr)

    def _send_failed(self, err: Exception, addr) -> None:
        self.dropped["send_error"] += 1
        self.log.warn("cannot send a DHT datagram to {addr}: {err}", addr=addr, err=err)

    def response(
        self,
        rid: int,
        host: str,
        port: int,
        value: Optional[bytes] = None,
        closer_nodes: Optional[bytes] = None,
        to: Optional[bytes] = None,
    ) -> None:
        """A RESPONSE to ``host:port`` with our token for ``host``."""
        if self.destroyed:
            return
        # The per-request responder path: _wire.encode unrolled for a
        # response whose to (6 bytes), id and token (32) are known.
        if to is None:
            to = self.peer_bytes(host, port)
        parts = [_wire.RESPONSE_HEAD, SMALL_VARINTS[rid] if rid < 128 else varint(rid), b"\x52\x06", to]
        if self._id_field is not None:
            parts.append(self._id_field)
        if closer_nodes is not None:
            n = len(closer_nodes)
            parts.append(b"\x2a")
            parts.append(SMALL_VARINTS[n] if n < 128 else varint(n))
            parts.append(closer_nodes)
        parts.append(b"\x32\x20")
        parts.append(self.tokens.token(host))
        if value is not None:
            n = len(value)
            parts.append(b"\x4a")
            parts.append(SMALL_VARINTS[n] if n < 128 else varint(n))
            parts.append(value)
        try:
            self._send(b"".join(parts), (host, port))
        except Exception as e:
            self._send_failed(e, (host, port))

    def error(
        self,
        rid: int,
        host: str,
        port: int,
        error: bytes,
        closer_nodes: Optional[bytes] = None,
        value: Optional[bytes] = None,
    ) -> None:
        """An error RESPONSE (no token)."""
        self.send(
            _wire.encode(
                _wire.RESPONSE_HEAD, rid, self.peer_bytes(host, port), self.id,
                closer_nodes=closer_nodes, error=error, value=value,
            ),
            (host, port),
        )

    def forward(self, msg: Message, addr: Tuple[str, int]) -> None:
        """Send an already decoded message on (the holepunch relay)."""
        self.send(msg.SerializeToString(), addr)

    @property
    def inflight_count(self) -> int:
        return len(self._requests)

    def pending_count(self) -> int:
        return len(self._pending)
