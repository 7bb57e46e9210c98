"""
Roundtrip tokens (dht.md 1.6).

A responder gives every requester ``BLAKE2b-256(secret || ascii(ip))`` and
accepts an UPDATE only when it echoes the token of the sender's IP under the
current or the previous secret. Secrets rotate every 5 minutes, so a token
is valid for 5 to 10 minutes. The port is not part of the token.

Plain logic: :class:`TokenStore` keeps no timer; the RPC layer calls
:meth:`TokenStore.rotate` from its own clock-driven loop.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Dict

__all__ = ["TokenStore", "roundtrip_token", "ROTATE_INTERVAL"]

#: Seconds between secret rotations (dht-rpc: 300000 ms).
ROTATE_INTERVAL = 300.0

_CACHE_LIMIT = 4096


def roundtrip_token(secret: bytes, host: str) -> bytes:
    """``BLAKE2b-256(secret || host)``, unkeyed, as dht-rpc's ``_token``."""
    return hashlib.blake2b(secret + host.encode("ascii", "replace"), digest_size=32).digest()


class TokenStore:
    """
    Two secrets, ``[current, previous]``, and the tokens they give.

    :param random_bytes: source of secrets (``os.urandom``; tests pass a
        deterministic one).
    """

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._random = random_bytes
        self.secrets = [random_bytes(32), random_bytes(32)]
        # host -> token under the current secret; the responder computes one
        # per response, and most responses go to a handful of hosts.
        self._current: Dict[str, bytes] = {}

    def rotate(self) -> None:
        """previous := current; current := fresh random."""
        self.secrets[1] = self.secrets[0]
        self.secrets[0] = self._random(32)
        self._current = {}

    def token(self, host: str) -> bytes:
        """The token for ``host`` under the current secret."""
        tok = self._current.get(host)
        if tok is None:
            tok = roundtrip_token(self.secrets[0], host)
            if len(self._current) >= _CACHE_LIMIT:
                self._current.clear()
            self._current[host] = tok
        return tok

    def valid(self, token: bytes, host: str) -> bool:
        """Whether ``token`` is ``host``'s token under either secret."""
        if len(token) != 32:
            return False
        if token == self.token(host):
            return True
        return token == roundtrip_token(self.secrets[1], host)
