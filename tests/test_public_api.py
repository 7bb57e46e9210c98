"""The names interfaces.md promises import from the top-level package."""

import pytest

import txhyperswarm


@pytest.mark.parametrize("name", txhyperswarm.__all__)
def test_every_public_name_imports(name):
    assert getattr(txhyperswarm, name) is not None


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError):
        txhyperswarm.NoSuchThing


def test_the_public_classes_are_the_ones_in_their_modules():
    from txhyperswarm.dht.node import DHTNode
    from txhyperswarm.discovery import Discovery
    from txhyperswarm.mdns import MulticastDiscovery
    from txhyperswarm.peer_record import PeerRecord
    from txhyperswarm.peerinfo import PeerInfo
    from txhyperswarm.queue import QueueOptions
    from txhyperswarm.udp import UDPSocket
    from txhyperswarm.utp.socket import UTPSocket

    assert txhyperswarm.DHTNode is DHTNode
    assert txhyperswarm.Discovery is Discovery
    assert txhyperswarm.MulticastDiscovery is MulticastDiscovery
    assert txhyperswarm.PeerInfo is PeerInfo
    assert txhyperswarm.QueueOptions is QueueOptions
    assert txhyperswarm.UTPSocket is UTPSocket
    from txhyperswarm.network import BindError, DialFailed, DialTimeout, FirewallRefused
    from txhyperswarm.stream import Stream
    from txhyperswarm.swarm import Hyperswarm, SwarmClosed

    assert txhyperswarm.Hyperswarm is Hyperswarm and txhyperswarm.Stream is Stream
    assert txhyperswarm.SwarmClosed is SwarmClosed and txhyperswarm.BindError is BindError
    assert (txhyperswarm.DialFailed, txhyperswarm.DialTimeout, txhyperswarm.FirewallRefused) == (
        DialFailed, DialTimeout, FirewallRefused)
    assert txhyperswarm.PeerRecord is PeerRecord
    assert txhyperswarm.UDPSocket is UDPSocket
