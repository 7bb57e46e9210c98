"""
The routing table: k-buckets as the ``k-bucket`` package builds them, plus
dht-rpc's liveness rules (dht.md 1.10).

Plain logic, no sockets and no timers: :class:`RoutingTable` is told about
nodes seen and ticks, and asks its owner to ping nodes through the
callables it was given.

* :class:`KBucket` is a port of k-bucket 5.x (index.js): a binary tree of
  buckets of ``k = 20`` contacts, split only on the side holding our own id;
  a full unsplittable bucket asks to ping its 3 oldest contacts.
* :class:`RoutingTable` adds dht-rpc's ``_addNode`` / ``_removeNode`` /
  ``_onnodeping`` / ``_pingSome`` on top, with a last-seen order (Node's
  time-ordered-set) kept in an insertion-ordered dict.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from twisted.logger import Logger

from txhyperswarm.dht.messages import encode_node

__all__ = [
    "Contact",
    "KBucket",
    "RoutingTable",
    "K",
    "PING_RATE",
    "PING_BURST",
    "UNVERIFIED_TTL",
]

#: Contacts per bucket and nodes per lookup.
K = 20
#: Oldest contacts a full bucket asks to ping.
NODES_TO_PING = 3
_BITS = 256
#: Liveness pings (eviction and sweep) the table may start per second, on
#: average (a token bucket; see :class:`RoutingTable`).
PING_RATE = 20.0
#: ... and at most this many at once after a quiet spell.
PING_BURST = 100
#: Ticks (5 s each) after which a node that was never seen answering us
#: (learned only from its own requests) and was not heard from since is
#: forgotten, without a ping.
UNVERIFIED_TTL = 60


class Contact:
    """
    A DHT node as we know it: routing-table contact, query-table entry or a
    bootstrap address (then ``id`` is ``None``).

    Mutable on purpose (dht-rpc mutates its node objects: token, tick,
    last ``to``); cheap with ``__slots__``.
    """

    __slots__ = (
        "id",
        "int_id",
        "host",
        "port",
        "token",
        "to",
        "tick",
        "referrer",
        "fast_holepunch",
        "queried",
        "distance",
        "seen",
        "verified",
        "_compact",
    )

    def __init__(self, node_id: Optional[bytes], host: str, port: int) -> None:
        self.id = node_id
        self.int_id = int.from_bytes(node_id, "big") if node_id is not None else None
        self.host = host
        self.port = port
        self.token: Optional[bytes] = None
        self.to: Optional[bytes] = None
        self.tick = 0
        self.referrer: Optional[Tuple[str, int]] = None
        self.fast_holepunch = False
        self.queried = False
        self.distance = 0
        self.seen = 0
        #: Whether it ever answered us (a response came from it).
        self.verified = True
        self._compact: Optional[bytes] = None

    def compact(self) -> bytes:
        """The 38-byte compact node (id, then IPv4 and port)."""
        c = self._compact
        if c is None:
            c = self._compact = encode_node(self.id, self.host, self.port)
        return c

    def move(self, host: str, port: int) -> None:
        """The node now answers from ``host:port`` (its compact form follows)."""
        self.host = host
        self.port = port
        self._compact = None

    @property
    def address(self) -> Tuple[str, int]:
        return self.host, self.port

    def __repr__(self) -> str:
        nid = self.id.hex()[:12] if self.id is not None else None
        return f"<Contact {nid} {self.host}:{self.port}>"


def _seen(contact: Contact) -> int:
    return contact.seen


class _Node:
    __slots__ = ("contacts", "dont_split", "left", "right")

    def __init__(self) -> None:
        self.contacts: Optional[List[Contact]] = []
        self.dont_split = False
        self.left: Optional[_Node] = None
        self.right: Optional[_Node] = None


class KBucket:
    """
    k-bucket's tree. Contacts are :class:`Contact` objects with a 32-byte id.

    :param on_ping: ``on_ping(oldest_contacts, new_contact)`` when a full
        bucket that may not split is offered a new contact (the contact is
        NOT added).
    """

    def __init__(
        self,
        local_id: bytes,
        k: int = K,
        nodes_to_ping: int = NODES_TO_PING,
        on_ping: Optional[Callable[[List[Contact], Contact], None]] = None,
    ) -> None:
        self.local_id = local_id
        self._local_int = int.from_bytes(local_id, "big")
        self.k = k
        self.nodes_to_ping = nodes_to_ping
        self.on_ping = on_ping
        self.root = _Node()
        self._clock = 0

    @staticmethod
    def _right(int_id: int, bit: int) -> bool:
        return (int_id >> (_BITS - 1 - bit)) & 1 == 1

    def _leaf(self, int_id: int) -> Tuple[_Node, int]:
        node = self.root
        bit = 0
        while node.contacts is None:
            node = node.right if (int_id >> (_BITS - 1 - bit)) & 1 else node.left
            bit += 1
        return node, bit

    @staticmethod
    def _index(contacts: List[Contact], node_id: bytes) -> int:
        for i, c in enumerate(contacts):
            if c.id == node_id:
                return i
        return -1

    def add(self, contact: Contact) -> bool:
        """
        Add or refresh (move to the newest end of its bucket).

        :returns: whether the contact is in the table now.
        """
        while True:
            node, bit = self._leaf(contact.int_id)
            contacts = node.contacts
            i = self._index(contacts, contact.id)
            if i >= 0:
                # k-bucket's arbiter keeps the candidate and moves it to the
                # newest end; "newest" is kept as a counter (see touch()).
                contacts[i] = contact
                self.touch(contact)
                return True
            if len(contacts) < self.k:
                contacts.append(contact)
                self.touch(contact)
                return True
            if node.dont_split:
                if self.on_ping is not None:
                    oldest = sorted(contacts, key=_seen)[: self.nodes_to_ping]
                    self.on_ping(oldest, contact)
                return False
            self._split(node, bit)

    def leaf(self, int_id: int) -> object:
        """The bucket that holds (or would hold) ``int_id``: an opaque,
        hashable key, the same object for as long as the bucket exists."""
        return self._leaf(int_id)[0]

    def touch(self, contact: Contact) -> None:
        """
        Mark a contact already in the table as the newest of its bucket.

        k-bucket reorders its bucket array on every refresh; the order only
        matters for which contacts a full bucket pings, so a counter does
        the same work in O(1) on the per-request path.
        """
        self._clock += 1
        contact.seen = self._clock

    def _split(self, node: _Node, bit: int) -> None:
        node.left = _Node()
        node.right = _Node()
        for c in node.contacts:
            (node.right if self._right(c.int_id, bit) else node.left).contacts.append(c)
        node.contacts = None
        if self._right(self._local_int, bit):
            node.left.dont_split = True
        else:
            node.right.dont_split = True

    def get(self, node_id: bytes) -> Optional[Contact]:
        node, _ = self._leaf(int.from_bytes(node_id, "big"))
        for c in node.contacts:
            if c.id == node_id:
                return c
        return None

    def remove(self, node_id: bytes) -> Optional[Contact]:
        node, _ = self._leaf(int.from_bytes(node_id, "big"))
        i = self._index(node.contacts, node_id)
        if i >= 0:
            return node.contacts.pop(i)
        return None

    def closest(self, target: bytes, n: int = K) -> List[Contact]:
        """Up to ``n`` contacts sorted by XOR distance to ``target``."""
        t = int.from_bytes(target, "big")
        contacts: List[Contact] = []
        stack = [self.root]
        bit = 0
        while stack and len(contacts) < n:
            node = stack.pop()
            if node.contacts is None:
                if (t >> (_BITS - 1 - bit)) & 1:
                    near, far = node.right, node.left
                else:
                    near, far = node.left, node.right
                bit += 1
                stack.append(far)
                stack.append(near)
            else:
                contacts.extend(node.contacts)
        if len(contacts) > 1:
            contacts.sort(key=lambda c: c.int_id ^ t)
        return contacts[:n]

    def count(self) -> int:
        return sum(1 for _ in self)

    def __iter__(self) -> Iterator[Contact]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.contacts is None:
                stack.append(node.right)
                stack.append(node.left)
            else:
                yield from node.contacts


class RoutingTable:
    """
    dht-rpc's node bookkeeping over a :class:`KBucket`, with bounds on the
    liveness pings it starts (the re-ping storm of issue 12):

    * a full bucket offered a newcomer pings its oldest contacts (dht-rpc
      ``_onnodeping``), but at most one such eviction runs per bucket:
      newcomers offered while it runs are dropped (counted in
      ``refused["newcomer"]``); a newcomer let in by an eviction never
      starts another one;
    * every liveness ping (eviction and the 40 s sweep) takes a token from a
      bucket of ``ping_burst`` tokens refilled at ``ping_rate`` per second;
      without a token the ping is not sent (``refused["ping_budget"]``);
    * nodes learned only from their own requests (``verified=False``) are
      never pinged by the sweep, and are forgotten once not heard from for
      ``unverified_ttl`` ticks: a burst of requests from fresh ids leaves
      no work and no memory behind.

    :param local_id: our node id.
    :param ping: ``ping(peer, callback)`` sends a ``_ping`` right away
        (bypassing the request queue, as ``queryImmediately``);
        ``callback(ok)`` is called once with ``True``/``False``, or ``None``
        when the ping was cancelled (no verdict).
    :param check: ``check(peer, callback)`` pings through the normal queue,
        for the periodic sweep; same callback.
    :param is_bootstrapped: whether the first bootstrap has ended (before
        it, a full bucket drops newcomers without pinging).
    :param seconds: the clock of the ping budget (the reactor's
        ``seconds``).
    :param ping_rate: liveness pings per second, on average
        (:data:`PING_RATE`); ``0`` or ``None``: no budget.
    :param ping_burst: tokens of the ping budget (:data:`PING_BURST`).
    :param unverified_ttl: ticks after which a quiet unverified node is
        forgotten (:data:`UNVERIFIED_TTL`).
    """

    log = Logger()

    def __init__(
        self,
        local_id: bytes,
        ping: Callable[[Contact, Callable[[Optional[bool]], None]], None],
        check: Optional[Callable[[Contact, Callable[[Optional[bool]], None]], None]] = None,
        is_bootstrapped: Callable[[], bool] = lambda: True,
        *,
        seconds: Callable[[], float] = time.monotonic,
        ping_rate: Optional[float] = PING_RATE,
        ping_burst: int = PING_BURST,
        unverified_ttl: int = UNVERIFIED_TTL,
    ) -> None:
        self.id = local_id
        self.bucket = KBucket(local_id, on_ping=self._on_bucket_ping)
        #: Last-seen order, oldest first (Node's time-ordered-set).
        self.nodes: Dict[bytes, Contact] = {}
        self.tick = 0
        self._ping = ping
        self._check = check or ping
        self._is_bootstrapped = is_bootstrapped
        self._seconds = seconds
        self.ping_rate = ping_rate
        self.ping_burst = ping_burst
        self.unverified_ttl = unverified_ttl
        self._tokens = float(ping_burst)
        self._tokens_at = seconds()
        #: Evictions running, by bucket: the newcomer waiting for room.
        self._evicting: Dict[object, Contact] = {}
        #: What the bounds refused, by reason: ``newcomer`` (a full bucket
        #: was already evicting), ``ping_budget`` (no token),
        #: ``unverified`` (a quiet unverified node forgotten).
        self.refused: Counter = Counter()
        #: Liveness pings started (eviction and sweep).
        self.pings_sent = 0

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def evictions_pending(self) -> int:
        """Buckets with an eviction ping in flight (at most one each)."""
        return len(self._evicting)

    def get(self, node_id: bytes) -> Optional[Contact]:
        return self.bucket.get(node_id)

    def closest(self, target: bytes, n: int = K) -> List[Contact]:
        return self.bucket.closest(target, n)

    def closest_compact(self, target: bytes, n: int = K) -> bytes:
        """The ``closerNodes`` field for ``target``: up to ``n`` compact nodes."""
        return b"".join([p.compact() for p in self.bucket.closest(target, n)])

    def add_node(
        self,
        node_id: bytes,
        host: str,
        port: int,
        token: Optional[bytes] = None,
        to: Optional[bytes] = None,
        verified: bool = True,
    ) -> None:
        """
        A message bearing a valid id came from ``host:port`` (``_addNode``).
        ``verified``: it was a response (the node answers us), not a request.
        """
        if node_id == self.id:
            return
        nodes = self.nodes
        node = nodes.get(node_id)
        if node is None:
            node = Contact(node_id, host, port)
            node.token = token or None
            node.to = to or None
            node.tick = self.tick
            node.verified = verified
            if not self.bucket.add(node):
                return  # full bucket: the old contacts are being pinged
            nodes[node_id] = node
            return
        if node.port != port or node.host != host:
            node.move(host, port)
        if token:
            node.token = token
        if to:
            node.to = to
        if verified:
            node.verified = True
        node.tick = self.tick
        del nodes[node_id]
        nodes[node_id] = node
        self.bucket.touch(node)

    def remove_node(self, node: Contact) -> None:
        """Forget ``node`` (it failed to answer, or answered with another id)."""
        if node.id is None or self.nodes.get(node.id) is not node:
            return
        del self.nodes[node.id]
        self.bucket.remove(node.id)

    def remove_id(self, node_id: bytes) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            self.remove_node(node)

    def oldest(self) -> Iterator[Contact]:
        return iter(list(self.nodes.values()))

    def latest(self) -> Iterator[Contact]:
        return reversed(list(self.nodes.values()))

    # -- liveness ---------------------------------------------------------

    def _take_ping_token(self) -> bool:
        """One token of the ping budget, if there is one."""
        self.pings_sent += 1
        rate = self.ping_rate
        if not rate:
            return True
        now = self._seconds()
        tokens = min(float(self.ping_burst), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            self.pings_sent -= 1
            self.refused["ping_budget"] += 1
            return False
        self._tokens = tokens - 1.0
        return True

    def _on_bucket_ping(self, old_contacts: List[Contact], new_contact: Contact) -> None:
        # dht-rpc _onnodeping: while bootstrapping we pinged everyone anyway.
        if not self._is_bootstrapped():
            return
        leaf = self.bucket.leaf(new_contact.int_id)
        if leaf in self._evicting:
            self.refused["newcomer"] += 1
            return
        reping = []
        for old in old_contacts:
            if self.tick == old.tick and self.nodes.get(old.id) is old:
                self.bucket.touch(old)  # seen this tick: keep it, newest
                continue
            reping.append(old)
        if reping:
            self._reping(leaf, reping, new_contact)

    def _reping(self, leaf: object, old_contacts: List[Contact], new_contact: Contact) -> None:
        """Ping the old contacts one by one; the first that fails makes room."""
        pending = list(old_contacts)
        self._evicting[leaf] = new_contact

        def done() -> None:
            if self._evicting.get(leaf) is new_contact:
                del self._evicting[leaf]

        def next_ping() -> None:
            if not pending or not self._take_ping_token():
                done()
                return
            node = pending.pop(0)

            def after(ok: Optional[bool]) -> None:
                if ok:
                    next_ping()
                    return
                done()
                if ok is None:  # cancelled: no verdict
                    return
                self.remove_node(node)
                if new_contact.id in self.nodes or len(leaf.contacts or ()) >= self.bucket.k:
                    return  # no room after all: never a second eviction
                self.add_node(
                    new_contact.id,
                    new_contact.host,
                    new_contact.port,
                    new_contact.token,
                    new_contact.to,
                    new_contact.verified,
                )

            self._ping(node, after)

        next_ping()

    def on_tick(self, inflight_queries: int) -> str:
        """
        The DHT's 5-second tick (``_ontick``).

        :returns: ``"bootstrap"`` when the owner should (re-)bootstrap,
            else ``""``.
        """
        self.tick += 1
        self.forget_quiet_unverified()
        action = ""
        if (self.tick & 7) == 0:
            action = self.ping_some(inflight_queries)
        if (self.tick & 63) == 0 and len(self.nodes) < 20:
            action = "bootstrap"
        return action

    def forget_quiet_unverified(self) -> int:
        """
        Forget the unverified nodes not heard from for ``unverified_ttl``
        ticks (no ping: they never answered one). :returns: how many.
        """
        horizon = self.tick - self.unverified_ttl
        gone = []
        for node in self.nodes.values():  # oldest seen first
            if node.tick > horizon:
                break
            if not node.verified:
                gone.append(node)
        for node in gone:
            self.remove_node(node)
        self.refused["unverified"] += len(gone)
        return len(gone)

    def ping_some(self, inflight_queries: int) -> str:
        """
        Ping up to 5 (3 when busy) of the least recently seen verified nodes
        not seen this tick; failures are removed. With an empty table:
        ``"bootstrap"``.
        """
        if not self.nodes:
            return "bootstrap"
        cnt = 3 if inflight_queries > 2 else 5
        for node in self.oldest():
            if cnt <= 0:
                break
            if not node.verified:
                continue
            cnt -= 1
            if node.tick == self.tick:
                continue
            if not self._take_ping_token():
                break
            self._check(node, lambda ok, node=node: ok is False and self.remove_node(node))
        return ""
