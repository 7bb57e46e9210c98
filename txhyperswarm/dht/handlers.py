"""
What a DHT node answers: the built-in commands (``_ping``, ``_find_node``,
``_holepunch`` and its relay, dht.md 1.7 and 1.9) and the registered
commands of a :class:`~txhyperswarm.dht.commands.CommandRegistry`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Dict, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txhyperswarm.dht.commands import CommandRegistry, Request
from txhyperswarm.dht.errors import CommandError, IgnoreRequest
from txhyperswarm.dht.messages import DecodeError, Holepunch, Message, decode_holepunch, encode_peer
from txhyperswarm.dht.query import decode_to

__all__ = [
    "Responder",
    "first_peer",
    "norm_target",
    "PING",
    "FIND_NODE",
    "HOLEPUNCH",
    "OTHER",
    "MAX_PENDING_PER_IP",
    "MAX_PENDING",
    "HOLEPUNCH_RELAY_PER_IP",
    "HOLEPUNCH_RELAY_TOTAL",
]

Address = Tuple[str, int]

PING = b"_ping"
FIND_NODE = b"_find_node"
HOLEPUNCH = b"_holepunch"
#: The key of :attr:`Responder.received` for commands we do not serve.
OTHER = b"(other)"
_UNSUPPORTED = b"Unsupported command"
_UPDATE_NOT_SUPPORTED = b"Update not supported"


def first_peer(raw: bytes) -> Optional[Address]:
    """ipv4-peers' first peer of ``raw`` (dht-rpc ``decodePeer``), ``None`` if none."""
    return decode_to(raw[:6])


def norm_target(target: bytes) -> bytes:
    """A target as the routing table compares it: 32 bytes, cut or zero-padded."""
    if len(target) == 32:
        return target
    return target[:32].ljust(32, b"\0")


#: Requests from one source IP a node works on at once (handlers that
#: answer later, e.g. through a Deferred).
MAX_PENDING_PER_IP = 64
#: ... and from all sources together.
MAX_PENDING = 4096
#: ``_holepunch`` requests from one source IP the node relays per second
#: (``dropped["holepunch_ip"]`` beyond). A relayed holepunch goes to any
#: address the request names, so a spoofed source makes the node a
#: reflector. A Node peer (dht-rpc 4.9.6) sends one per dial through a
#: referrer and one with each retry of a request to a node it learned
#: through a referrer: a few to a few tens a second. A peer dialling its
#: whole swarm at once through one referrer stays under this (256 = the
#: daemon's default --max-peers).
HOLEPUNCH_RELAY_PER_IP = 256
#: ... and from all sources together per second (``dropped["holepunch_total"]``).
HOLEPUNCH_RELAY_TOTAL = 2048
#: Source IPs counted in one second at most (beyond: the count restarts).
_RELAY_TRACKED = 65536


class Responder:
    """
    Answers the requests a node receives.

    :param rpc: the :class:`~txhyperswarm.dht.rpc.RPC` to answer through.
    :param table: the routing table (the closest nodes go in every answer).
    :param own_id: our id (a ``_ping`` naming another id is not answered).
    :param commands: the registered commands.
    :param dropped: the node's counter of dropped requests by reason.
    :param max_pending_per_ip: requests from one source IP whose handler
        has not answered yet (a Deferred); more are dropped unanswered
        (``dropped["pending_ip"]``).
    :param max_pending: the same for all sources together
        (``dropped["pending_total"]``).
    :param seconds: the clock of the holepunch relay's one-second windows
        (the reactor's ``seconds``).
    :param holepunch_relay_per_ip: ``_holepunch`` requests from one source
        IP relayed per second; more are dropped (``dropped["holepunch_ip"]``).
        ``0`` or ``None``: no limit.
    :param holepunch_relay_total: the same for all sources together
        (``dropped["holepunch_total"]``). Sources in the RPC layer's
        ``rate_limit_exempt`` are counted in neither.
    """

    log = Logger()

    def __init__(
        self,
        rpc,
        table,
        own_id: bytes,
        commands: CommandRegistry,
        dropped: Counter,
        max_pending_per_ip: int = MAX_PENDING_PER_IP,
        max_pending: int = MAX_PENDING,
        seconds: Optional[Callable[[], float]] = None,
        holepunch_relay_per_ip: Optional[int] = HOLEPUNCH_RELAY_PER_IP,
        holepunch_relay_total: Optional[int] = HOLEPUNCH_RELAY_TOTAL,
    ) -> None:
        self.max_pending_per_ip = max_pending_per_ip
        self.max_pending = max_pending
        self.holepunch_relay_per_ip = holepunch_relay_per_ip
        self.holepunch_relay_total = holepunch_relay_total
        self._seconds = seconds if seconds is not None else time.monotonic
        #: Holepunches relayed in the current second, by source IP, and in all.
        self._relayed: Dict[str, int] = {}
        self._relayed_total = 0
        self._relay_second: Optional[int] = None
        #: Requests whose handler has not answered yet, by source IP.
        self.pending: Counter = Counter()
        self.pending_total = 0
        self._rpc = rpc
        self._table = table
        self._id = own_id
        self._commands = commands
        self.dropped = dropped
        #: Requests received by command (bytes); unknown ones as :data:`OTHER`.
        self.received: Counter = Counter()

    def request_received(self, msg: Message, host: str, port: int, is_update: bool) -> None:
        """Answer one request (or not: counted in :attr:`dropped`)."""
        cmd = msg.command
        if cmd == PING:
            self.received[PING] += 1
            if msg.HasField("value") and msg.value != self._id:
                self.dropped["ping_id"] += 1
                return
            to = self._rpc.peer_bytes(host, port)
            self._rpc.response(msg.rid, host, port, to, None, to)
        elif cmd == FIND_NODE:
            self.received[FIND_NODE] += 1
            target = msg.target
            if len(target) != 32:
                self.dropped["no_target"] += 1
                return
            self._rpc.response(msg.rid, host, port, None, self._table.closest_compact(target))
        elif cmd == HOLEPUNCH:
            self.received[HOLEPUNCH] += 1
            self._holepunch(msg, host, port)
        else:
            self._command(is_update, msg, host, port)

    # -- _holepunch -------------------------------------------------------

    def _holepunch(self, msg: Message, host: str, port: int) -> None:
        if not msg.HasField("value"):
            self.dropped["value"] += 1
            return
        try:
            punch = decode_holepunch(msg.value)
        except DecodeError:
            self.dropped["value"] += 1
            return
        if punch.HasField("to"):
            to = first_peer(punch.to)
            if to is None or to == (host, port):
                self.dropped["value"] += 1
                return
            if self._relay_allowed(host):
                self._relay(msg, host, port, to)
            return
        if punch.HasField("from"):
            frm = first_peer(getattr(punch, "from"))
            if frm is not None:
                host, port = frm
        self._rpc.response(msg.rid, host, port)

    def _relay_allowed(self, host: str) -> bool:
        """Whether the relay budget of this second has room for one from ``host`` (counted)."""
        per_ip, total = self.holepunch_relay_per_ip, self.holepunch_relay_total
        if not (per_ip or total) or host in self._rpc.rate_limit_exempt:
            return True
        second = int(self._seconds())
        if second != self._relay_second:
            self._relay_second = second
            self._relayed.clear()
            self._relayed_total = 0
        if total and self._relayed_total >= total:
            self.dropped["holepunch_total"] += 1
            return False
        relayed = self._relayed
        n = relayed.get(host, 0)
        if per_ip and n >= per_ip:
            self.dropped["holepunch_ip"] += 1
            return False
        if not n and len(relayed) >= _RELAY_TRACKED:
            relayed.clear()
        relayed[host] = n + 1
        self._relayed_total += 1
        return True

    def _relay(self, msg: Message, host: str, port: int, to: Address) -> None:
        """Pass a ``_holepunch`` on to ``to``, saying it came from ``host:port``."""
        fwd = Message()
        fwd.CopyFrom(msg)
        fwd.version = 1
        if self._rpc.id is not None:
            fwd.id = self._rpc.id
        else:
            fwd.ClearField("id")
        fwd.to = encode_peer(*to)
        relay = Holepunch()
        setattr(relay, "from", encode_peer(host, port))
        fwd.value = relay.SerializeToString()
        if not fwd.HasField("error"):
            fwd.error = b""  # as Node's re-encode of a decoded message
        self.log.debug("relaying holepunch {a} -> {b}", a=(host, port), b=to)
        self._rpc.forward(fwd, to)

    # -- registered commands ----------------------------------------------

    def _command(self, is_update: bool, msg: Message, host: str, port: int) -> None:
        if not msg.HasField("target"):
            self.dropped["no_target"] += 1
            return
        command = self._commands.get(msg.command)
        rid = msg.rid
        target = msg.target
        if command is None:
            self.received[OTHER] += 1
            self._rpc.error(rid, host, port, _UNSUPPORTED, self._closer(target))
            return
        self.received[msg.command] += 1
        handler = command.update if is_update else command.query
        if handler is None:
            if is_update:
                self._rpc.error(rid, host, port, _UPDATE_NOT_SUPPORTED, self._closer(target))
            else:
                self._rpc.response(rid, host, port, None, self._closer(target))
            return
        request = Request(
            (host, port),
            msg.id if msg.HasField("id") else None,
            target,
            msg.value if msg.HasField("value") else None,
            command.name,
            is_update,
            msg.to if msg.HasField("to") else None,
        )
        if self.pending_total >= self.max_pending:
            self.dropped["pending_total"] += 1
            return
        if self.pending[host] >= self.max_pending_per_ip:
            self.dropped["pending_ip"] += 1
            return
        try:
            result = handler(request)
        except Exception:
            self._answer(Failure(), rid, host, port, target, command.name)
            return
        if isinstance(result, defer.Deferred) and not result.called:
            self.pending[host] += 1
            self.pending_total += 1

            def settled(r, host=host):
                self.pending_total -= 1
                left = self.pending[host] - 1
                if left:
                    self.pending[host] = left
                else:
                    del self.pending[host]
                return r

            result.addBoth(settled)
            result.addCallbacks(
                self._answer,
                self._answer,
                callbackArgs=(rid, host, port, target, command.name),
                errbackArgs=(rid, host, port, target, command.name),
            )
        elif isinstance(result, defer.Deferred):
            result.addCallbacks(
                self._answer,
                self._answer,
                callbackArgs=(rid, host, port, target, command.name),
                errbackArgs=(rid, host, port, target, command.name),
            )
        else:
            self._answer(result, rid, host, port, target, command.name)

    def _answer(self, result, rid: int, host: str, port: int, target: bytes, name: str) -> None:
        if isinstance(result, Failure):
            exc = result.value
            if isinstance(exc, IgnoreRequest):
                self.dropped["value"] += 1
                return
            if isinstance(exc, CommandError):
                self._rpc.error(
                    rid, host, port, exc.text.encode("utf-8"), self._closer(target), exc.value
                )
                return
            self._handler_failed(result, name, host, port)
            return
        if result is not None and not isinstance(result, (bytes, bytearray, memoryview)):
            err = TypeError(f"{name} handler returned {type(result).__name__}, not bytes or None")
            self._handler_failed(Failure(err), name, host, port)
            return
        self._rpc.response(
            rid, host, port, bytes(result) if result is not None else None, self._closer(target)
        )

    def _handler_failed(self, failure: Failure, name: str, host: str, port: int) -> None:
        self.dropped["handler_error"] += 1
        self.log.failure(
            "{command} handler failed on a request from {host}:{port}",
            failure,
            command=name,
            host=host,
            port=port,
        )

    def _closer(self, target: bytes) -> bytes:
        return self._table.closest_compact(norm_target(target))
