"""
``--state-dir``: what a node keeps across restarts (its id and a
routing-table snapshot), and the service that loads and saves it.
"""

from __future__ import annotations

import json
import os

from twisted.application import service
from twisted.logger import Logger

__all__ = ["NodeState", "KeepState", "SNAPSHOT_INTERVAL"]

log = Logger(namespace="txhyperswarm.dht.state")


class NodeState:
    """
    ``--state-dir``: the node id (``node-id``, 64 hex characters) and a
    routing-table snapshot (``routing-table.json``, ``[[id hex, host,
    port], ...]``). Unreadable files are logged and ignored (a new id, an
    empty table), never fatal.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def node_id(self) -> bytes:
        """The saved id, or a new one (saved at once)."""
        try:
            with open(self._file("node-id")) as f:
                node_id = bytes.fromhex(f.read().strip())
            if len(node_id) == 32:
                return node_id
            log.warn("ignoring {file}: not a 32-byte id", file=self._file("node-id"))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warn("ignoring {file}: {err}", file=self._file("node-id"), err=e)
        node_id = os.urandom(32)
        self._write("node-id", node_id.hex() + "\n")
        return node_id

    def nodes(self):
        """The saved routing table as ``(id, host, port)``; ``[]`` if none or unreadable."""
        try:
            with open(self._file("routing-table.json")) as f:
                return [(bytes.fromhex(i), str(h), int(p)) for i, h, p in json.load(f)]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as e:
            log.warn("ignoring {file}: {err}", file=self._file("routing-table.json"), err=e)
            return []

    def save_nodes(self, nodes) -> None:
        self._write("routing-table.json", json.dumps([[i.hex(), h, p] for i, h, p in nodes]) + "\n")

    def _write(self, name: str, text: str) -> None:
        tmp = self._file(name + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self._file(name))
        except OSError as e:
            log.warn("cannot write {file}: {err}", file=self._file(name), err=e)


#: Seconds between routing-table snapshots while running (one more at stop).
SNAPSHOT_INTERVAL = 300.0


class KeepState(service.Service):
    """
    Load the routing-table snapshot at start; save it every
    :data:`SNAPSHOT_INTERVAL` seconds (so a crash or SIGKILL keeps a recent
    one) and at stop.
    """

    def __init__(self, node, state: NodeState, clock) -> None:
        from twisted.internet.task import LoopingCall

        self._node = node
        self._state = state
        self._save = LoopingCall(self._snapshot)
        self._save.clock = clock

    def _snapshot(self) -> None:
        self._state.save_nodes(self._node.nodes())

    def startService(self) -> None:
        super().startService()
        self._node.add_nodes(self._state.nodes())
        self._save.start(SNAPSHOT_INTERVAL, now=False).addErrback(
            lambda f: log.failure("routing-table snapshots stopped", f)
        )

    def stopService(self):
        # MultiService stops children in reverse order: this runs before the
        # node stops, while its table is still full.
        if self._save.running:
            self._save.stop()
        self._snapshot()
        return super().stopService()
