"""
The command registry of a DHT node (dht-rpc ``command(name, {query, update})``)
and the :class:`Request` a command handler is called with.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

from twisted.internet import defer

from txhyperswarm.dht.query import decode_to

__all__ = ["Request", "Handler", "Command", "CommandRegistry", "BUILT_IN"]

Address = Tuple[str, int]
Handler = Callable[["Request"], Union[bytes, None, defer.Deferred]]

#: The commands every node answers itself (:mod:`txhyperswarm.dht.handlers`).
BUILT_IN = frozenset((b"_ping", b"_find_node", b"_holepunch"))


class Request:
    """
    An incoming QUERY or UPDATE, as a command handler sees it.

    :ivar node: ``(host, port)`` of the sender (UDP source).
    :ivar id: the sender's 32-byte id, ``None`` when it sent none (ephemeral).
    :ivar target: the 32-byte(ish) target, as sent.
    :ivar value: the value bytes, ``None`` when absent (``b""`` when present
        but empty).
    :ivar command: the command name (``str``).
    :ivar is_update: True for an UPDATE (the roundtrip token was valid).
    """

    __slots__ = ("node", "id", "target", "value", "command", "is_update", "_to")

    def __init__(self, node, node_id, target, value, command, is_update, to) -> None:
        self.node = node
        self.id = node_id
        self.target = target
        self.value = value
        self.command = command
        self.is_update = is_update
        self._to = to

    @property
    def to(self) -> Optional[Address]:
        """Our address as the sender targeted it, ``None`` if not sent."""
        return decode_to(self._to) if self._to is not None else None

    def __repr__(self) -> str:
        kind = "UPDATE" if self.is_update else "QUERY"
        return f"<Request {kind} {self.command} from {self.node[0]}:{self.node[1]}>"


class Command:
    """A registered command: its name and its two handlers (either may be ``None``)."""

    __slots__ = ("name", "query", "update")

    def __init__(self, name: str, query: Optional[Handler], update: Optional[Handler]) -> None:
        self.name = name
        self.query = query
        self.update = update


class CommandRegistry:
    """The commands a node serves beside the built-in ones, by wire name."""

    def __init__(self) -> None:
        self._commands: Dict[bytes, Command] = {}

    def add(self, name: str, query: Optional[Handler] = None, update: Optional[Handler] = None) -> None:
        """
        Register (or replace) ``name``.

        :raises ValueError: ``name`` is a built-in command.
        """
        key = name.encode("utf-8")
        if key in BUILT_IN:
            raise ValueError(f"{name} is a built-in command")
        self._commands[key] = Command(name, query, update)

    def remove(self, name: str) -> None:
        """Stop serving ``name`` (nothing if it is not registered)."""
        self._commands.pop(name.encode("utf-8"), None)

    def get(self, wire_name: bytes) -> Optional[Command]:
        """The command a request names (its ``command`` field), or ``None``."""
        return self._commands.get(wire_name)
