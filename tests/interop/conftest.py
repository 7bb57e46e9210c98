"""Fixtures shared by the interop tests."""

import pytest
import pytest_twisted

from txhyperswarm.udp import UDPSocket
from txhyperswarm.utp.socket import UTPSocket


def event(name):
    """A predicate for ``JSONLinesProcess.wait_for``: the line's ``event`` is ``name``."""
    return lambda o: o.get("event") == name


def _utp_socket(reactor, **udp_options):
    udp = UDPSocket(reactor, host="127.0.0.1", **udp_options)
    sock = UTPSocket(reactor, udp)
    udp.listen()
    yield sock
    pytest_twisted.blockon(sock.close())
    pytest_twisted.blockon(udp.close())


@pytest.fixture
def utp_socket(reactor):
    """A listening-capable UTPSocket on 127.0.0.1 with our large UDP buffers."""
    yield from _utp_socket(reactor)


@pytest.fixture
def default_socket(reactor):
    """The same with the kernel's default UDP buffers (as hyperswarm 2 runs)."""
    yield from _utp_socket(reactor, buffer_size=0)
