"""
Per-datagram mDNS work: txhyperswarm.mdns vs Node's @hyperswarm/discovery 2.0.1
(multicast-dns / dns-packet), side by side in one run, in-process, no sockets.

Operations (each on the captured Node datagrams from tests/test_mdns.py):

* ``answer``: decode a response (SRV + TXT + A) and report the peer to the
  one lookup topic on its name (Node: ``dns-packet.decode`` +
  ``Discovery.prototype._onmdnsresponse``);
* ``query``: decode a query, build and encode the answer (SRV + TXT + A) for
  the one announcing topic (Node: ``decode`` + ``_onmdnsquery`` +
  ``dns-packet.encode``); the datagram is not sent;
* ``encode_query``: encode the SRV query of a topic.

Best of 5 runs of N iterations each, microseconds per datagram. Needs
``npm ci --prefix tests/node`` first.

    python bench/mdns.py [--iterations N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_mdns import NODE_ANSWER, NODE_QUERY, TOPIC  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from txhyperswarm.mdns import wire  # noqa: E402
from txhyperswarm.mdns import MulticastDiscovery  # noqa: E402


class _NullPort:
    """Stands in for the multicast socket: counts what would be sent."""

    def __init__(self):
        self.sent = 0

    def write(self, data, addr):
        self.sent += len(data)


def best_us(fn, n):
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def ours(n):
    clock = Clock()
    looker = MulticastDiscovery(clock)
    looker._listening_port = _NullPort()
    peers = []
    looker.join(TOPIC, on_peer=peers.append)
    answerer = MulticastDiscovery(clock)
    answerer._listening_port = port = _NullPort()
    answerer.join(TOPIC, announce_port=37591, lookup=False)
    clock.advance(0)
    source = ("127.0.0.1", 5353)
    name = wire.domain_name(TOPIC)
    result = {
        "answer_us": best_us(lambda: looker._datagram(NODE_ANSWER, source), n),
        "query_us": best_us(lambda: answerer._datagram(NODE_QUERY, source), n),
        "encode_query_us": best_us(lambda: wire.encode_query([name]), n),
    }
    assert peers and port.sent
    return result


def theirs(n):
    env = dict(os.environ, NODE_PATH=str(REPO / "tests" / "node" / "node_modules"))
    out = subprocess.run(
        ["node", str(REPO / "bench" / "node" / "mdns_handle.js"), str(n), NODE_ANSWER.hex(), NODE_QUERY.hex()],
        env=env,
        cwd=str(REPO / "tests" / "node"),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    py = ours(args.iterations)
    js = theirs(args.iterations)
    print(f"mDNS per-datagram work, best of 5 x {args.iterations} (us per datagram; lower is better)")
    print(f"{'operation':<14} {'txhyperswarm':>13} {'node':>9} {'py/node':>9}")
    for key, label in (("answer_us", "answer"), ("query_us", "query"), ("encode_query_us", "encode_query")):
        print(f"{label:<14} {py[key]:>13.2f} {js[key]:>9.2f} {py[key] / js[key]:>8.2f}x")


if __name__ == "__main__":
    main()
