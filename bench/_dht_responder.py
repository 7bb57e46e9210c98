"""A persistent txhyperswarm DHT node on 127.0.0.1 for bench/dht_rpc.py."""

import json
import os
import sys

from twisted.internet import reactor

from txhyperswarm.dht.node import DHTNode


def main() -> None:
    node = DHTNode(reactor, bootstrap=[], ephemeral=False, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    node.startService()
    sys.stdout.write(json.dumps({"port": node.address()[1], "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
