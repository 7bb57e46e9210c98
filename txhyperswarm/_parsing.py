"""
Parsing of what users type (interfaces.md), shared by ``hyperswarm`` and
``twist hyperswarm``: topics, ``HOST:PORT`` addresses, ``--bootstrap`` lists.
"""

from __future__ import annotations

import hashlib
import string
from typing import List, Optional, Sequence, Tuple

__all__ = ["bootstrap_list", "topic_from_text", "parse_host_port"]

_HEX = frozenset(string.hexdigits)


def topic_from_text(text: str) -> bytes:
    """
    A topic as a user typed it: 64 hex characters are the raw 32 bytes; any
    other non-empty text is hashed with SHA-256 of its UTF-8 bytes.

    :raises ValueError: the text is empty.
    """
    if not text:
        raise ValueError("empty topic")
    if len(text) == 64 and _HEX.issuperset(text):
        return bytes.fromhex(text)
    return hashlib.sha256(text.encode("utf-8")).digest()


def parse_host_port(text: str) -> Tuple[str, int]:
    """
    ``"HOST:PORT"`` -> ``(host, port)``.

    :raises ValueError: no port, a port outside 1..65535, or an empty host.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}: expected 1..65535")
    return host, int(port_text)


def bootstrap_list(values: Optional[Sequence[str]]) -> Optional[List[Tuple[str, int]]]:
    """
    ``--bootstrap`` values -> ``[(host, port)]``; none given -> ``None`` (the
    public list); ``none`` -> ``[]``.

    :raises ValueError: a value is not ``HOST:PORT``, or ``none`` comes with
        other values.
    """
    if not values:
        return None
    if "none" in values:
        if len(values) > 1:
            raise ValueError("'none' excludes other values")
        return []
    return [parse_host_port(v) for v in values]
