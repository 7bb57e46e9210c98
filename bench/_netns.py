"""
Benchmarks that open mDNS sockets run inside a private network namespace:
started outside one, the script re-runs itself under ``unshare -rn`` with
``lo`` up (multicast on, 224.0.0.0/4 routed to it).
"""

from __future__ import annotations

import os
import socket
import sys


def in_private_netns() -> bool:
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


def reexec_in_netns() -> None:
    script = "ip link set lo up multicast on && ip route add 224.0.0.0/4 dev lo && exec \"$0\" \"$@\""
    os.execvp("unshare", ["unshare", "-rn", "sh", "-c", script, sys.executable, *sys.argv])


def enter_private_netns(flag: str) -> None:
    """Re-run this script in a private namespace unless in one; ``flag`` (an environment variable) stops a loop."""
    if in_private_netns():
        return
    if os.environ.get(flag):
        sys.exit("cannot make a private network namespace (unshare -rn)")
    os.environ[flag] = "1"
    reexec_in_netns()
