# Endpoint string parsers for uTP: "utp:port=N:interface=H" (server) and
# "utp:host=H:port=N" (client). No __init__.py in twisted/plugins/; keep this
# module import-light (the endpoint classes are imported on use).
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class UTPServerParser:
    """``utp:PORT`` or ``utp:port=PORT[:interface=HOST]``."""

    prefix = "utp"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from txhyperswarm.utp.endpoints import UTPServerEndpoint

        port = kwargs.pop("port", args[0] if args else 0)
        interface = kwargs.pop("interface", args[1] if len(args) > 1 else "0.0.0.0")
        if kwargs:
            raise ValueError(f"unknown utp server options: {', '.join(sorted(kwargs))}")
        return UTPServerEndpoint(reactor, int(port), interface)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class UTPClientParser:
    """``utp:HOST:PORT`` or ``utp:host=HOST:port=PORT[:bindAddress=H[:P]][:timeout=S]``."""

    prefix = "utp"

    def parseStreamClient(self, reactor, *args, **kwargs):
        from txhyperswarm.utp.endpoints import UTPClientEndpoint

        host = kwargs.pop("host", args[0] if args else None)
        port = kwargs.pop("port", args[1] if len(args) > 1 else None)
        if host is None or port is None:
            raise ValueError("utp client endpoint needs host and port")
        bind = kwargs.pop("bindAddress", None)
        timeout = kwargs.pop("timeout", None)
        if kwargs:
            raise ValueError(f"unknown utp client options: {', '.join(sorted(kwargs))}")
        bind_address = ("0.0.0.0", 0)
        if bind:
            h, _, p = bind.partition(":")
            bind_address = (h, int(p or 0))
        return UTPClientEndpoint(
            reactor, host, int(port), bind_address, float(timeout) if timeout is not None else None
        )


utpServerParser = UTPServerParser()
utpClientParser = UTPClientParser()
