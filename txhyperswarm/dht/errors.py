"""
Every exception the DHT layer raises or errbacks with, in one place.

* From a command handler: :class:`CommandError` (answer with an error) and
  :class:`IgnoreRequest` (send no reply).
* From one request: :class:`RemoteError` (the peer answered with an error),
  :class:`RequestTimeout` and :class:`RequestCancelled` (both
  :class:`RequestError`: no response came).
* From a walk: :class:`QueryError` (no node answered, or the node stopped).

Bad bytes from the network are the codec's :class:`~txhyperswarm.dht.messages.DecodeError`.
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = [
    "CommandError",
    "IgnoreRequest",
    "RemoteError",
    "RequestError",
    "RequestTimeout",
    "RequestCancelled",
    "QueryError",
]


class CommandError(Exception):
    """
    Raise from a command handler (or errback its Deferred with it) to answer
    with an error response: ``error`` = the text, optional ``value`` bytes
    (e.g. a proof), no roundtrip token.
    """

    def __init__(self, text: str, value: Optional[bytes] = None) -> None:
        super().__init__(text)
        self.text = text
        self.value = value


class IgnoreRequest(Exception):
    """
    Raise from a command handler to send no reply at all (as dht-rpc does
    when a value fails the command's input decoder). Counted in
    ``DHTNode.dropped["value"]``.
    """


class RemoteError(Exception):
    """A peer answered a request with an error response (``error`` field)."""


class RequestError(Exception):
    """
    A request to ``host:port`` ended without a response.

    :ivar code: dht-rpc's error code (``ETIMEDOUT``, ``ECANCELLED``).
    :ivar command: the command (``str``).
    """

    code = ""
    _text = ""

    def __init__(self, command: Union[bytes, str], host: str, port: int) -> None:
        self.command = command.decode("utf-8", "replace") if isinstance(command, bytes) else command
        self.host = host
        self.port = port
        super().__init__(self._text.format(command=self.command, host=host, port=port))


class RequestTimeout(RequestError):
    """A request got no response after all its tries (dht-rpc ``ETIMEDOUT``)."""

    code = "ETIMEDOUT"
    _text = "Request timed out: {command} to {host}:{port} (3 tries)"  # rpc.TRIES


class RequestCancelled(RequestError):
    """The request was cancelled, or the node stopped (dht-rpc ``ECANCELLED``)."""

    code = "ECANCELLED"
    _text = "Request cancelled: {command} to {host}:{port}"


class QueryError(Exception):
    """A walk failed as a whole (dht-rpc: "No nodes responded")."""
