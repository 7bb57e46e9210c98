"""
The soak by hand: ``python3 -m tests.soak --minutes 10``.

Runs :class:`tests.soak.workload.Soak` on the real reactor: one DHT bootstrap
node and ten swarm peers on 127.0.0.1 looping join / leave / connect /
disconnect / tunnel traffic. Prints a line per sample (RSS, open fds, live
connections, delayed calls, work so far), then the figures, the work done,
the errors and the verdict; exits 1 when a check failed.

With multicast DNS (the default; ``--no-mdns`` turns it off) the run must
not touch a real interface: started outside a private network namespace,
the script re-runs itself under ``unshare -rn`` with ``lo`` up and
224.0.0.0/4 routed to it (as ``bench/connect.py``).

The log goes to ``--log FILE`` (default: none kept; errors are counted and
printed either way). ``--tracemalloc`` traces allocations and prints the
top growth between the middle and the end (slower; RSS then includes
tracemalloc's own tables).

    python3 -m tests.soak [--minutes 10] [--seed 1] [--peers 10] [--sample-seconds 10]
                          [--no-mdns] [--tracemalloc] [--log FILE]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def in_private_netns() -> bool:
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


def reexec_in_netns() -> None:
    script = ("ip link set lo up multicast on && ip route replace 224.0.0.0/4 dev lo && exec \"$0\" \"$@\"")
    argv = ["unshare", "-rn", "sh", "-c", script, sys.executable, "-m", "tests.soak", *sys.argv[1:]]
    os.execvp("unshare", argv)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python3 -m tests.soak", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the peers loop")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--peers", type=int, default=10)
    ap.add_argument("--sample-seconds", type=float, default=None,
                    help="seconds between samples (default: a 40th of the run, 3 to 15 s)")
    ap.add_argument("--no-mdns", action="store_true", help="no multicast DNS (no namespace needed)")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--log", help="write the Twisted log there")
    args = ap.parse_args()
    mdns = not args.no_mdns
    if mdns and not in_private_netns():
        if os.environ.get("TXHYPERSWARM_SOAK_NETNS"):
            sys.exit("cannot make a private network namespace (unshare -rn); try --no-mdns")
        os.environ["TXHYPERSWARM_SOAK_NETNS"] = "1"
        reexec_in_netns()

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from tests.soak.workload import Soak

    log_file = open(args.log, "w") if args.log else None
    # begin logging now: else the global publisher buffers every event (up to 64k) until someone does
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)] if log_file else [lambda event: None],
                                     redirectStandardIO=False)
    seconds = args.minutes * 60
    every = args.sample_seconds or min(15.0, max(3.0, seconds / 40))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"soak: {args.peers} peers, {args.minutes:g} min, seed {args.seed}, mDNS {'on' if mdns else 'off'}, "
          f"started {started}", flush=True)
    header = []

    def on_sample(sample: dict) -> None:
        from tests.soak.workload import SoakResult

        r = SoakResult()
        r.samples = [sample]
        lines = r.table().splitlines()
        if not header:
            header.append(True)
            print(lines[0], flush=True)
        print(lines[1], flush=True)

    soak = Soak(reactor, seconds=seconds, seed=args.seed, peers=args.peers, sample_every=every, mdns=mdns,
                use_tracemalloc=args.tracemalloc, on_sample=on_sample)
    outcome: dict = {}

    def go():
        d = soak.run()

        def done(result):
            outcome["result"] = result

        def failed(f):
            outcome["failure"] = f

        d.addCallbacks(done, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if log_file is not None:
        log_file.close()
    if "failure" in outcome:
        print(outcome["failure"].getTraceback())
        sys.exit(2)
    result = outcome["result"]
    print(result.report())
    print(f"command: python3 -m tests.soak --minutes {args.minutes:g} --seed {args.seed}"
          f"{' --no-mdns' if not mdns else ''}; started {started}")
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
