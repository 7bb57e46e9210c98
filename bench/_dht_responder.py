"""
A persistent txhyperswarm DHT node on 127.0.0.1 (no bootstrap: the first node
of a network) for bench/dht_rpc.py and bench/dht_flood.py.

    python bench/_dht_responder.py [PORT] [--rate-limit N] [--stats]

Prints ``{"port": N, "pid": P}`` once bound. With ``--stats``, every line on
stdin is answered with one line of the node's figures (requests received by
command, dropped datagrams by reason, routing-table size, liveness pings
started, what the table refused, ``_ping`` requests sent) and EOF on stdin
stops it.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor, stdio  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from txhyperswarm.dht.node import DHTNode  # noqa: E402
from txhyperswarm.dht.rpc import RATE_LIMIT_PER_IP  # noqa: E402


class Stats(LineReceiver):
    delimiter = b"\n"

    def __init__(self, node: DHTNode) -> None:
        self.node = node

    def lineReceived(self, line: bytes) -> None:
        node = self.node
        table = node.routing_table
        self.sendLine(json.dumps({
            "requests": {c: n for (c, d), n in node.rpc_requests.items() if d == "in"},
            "dropped": dict(node.dropped),
            "table": len(table),
            "pings_sent": node.rpc_requests.get(("_ping", "out"), 0),
            "liveness_pings": table.pings_sent,
            "refused": dict(table.refused),
        }).encode())

    def connectionLost(self, reason=None) -> None:
        if reactor.running:
            reactor.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", nargs="?", type=int, default=0)
    ap.add_argument("--rate-limit", type=int, default=RATE_LIMIT_PER_IP)
    ap.add_argument("--stats", action="store_true")
    args = ap.parse_args()
    node = DHTNode(reactor, bootstrap=[], ephemeral=False, host="127.0.0.1", port=args.port,
                   rate_limit_per_ip=args.rate_limit)
    node.startService()
    sys.stdout.write(json.dumps({"port": node.address()[1], "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    if args.stats:
        stdio.StandardIO(Stats(node))
    reactor.run()


if __name__ == "__main__":
    main()
