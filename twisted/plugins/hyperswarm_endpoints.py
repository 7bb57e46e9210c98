# Endpoint string parsers for uTP: "utp:port=N:interface=H" (server) and
# "utp:host=H:port=N" (client). No __init__.py in twisted/plugins/; keep this
# module import-light (the endpoint classes are imported on use).
# twisted.internet.endpoints.serverFromString/clientFromString split the
# string (escapes included) into args and kwargs; HOST:PORT goes to the
# project's one parser (txhyperswarm._parsing).
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


def _options(kind, names, args, kwargs):
    """Positional ``args`` in the order of ``names``, then ``kwargs``; unknown ones refused."""
    if len(args) > len(names):
        raise ValueError(f"too many positional utp {kind} options: {':'.join(args)}")
    opts = dict(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise ValueError(f"unknown utp {kind} option: {k}")
        if k in opts:
            raise ValueError(f"utp {kind} option {k} given twice")
        opts[k] = v
    return opts


@implementer(IPlugin, IStreamServerEndpointStringParser)
class UTPServerParser:
    """``utp:PORT[:INTERFACE]`` or ``utp:port=PORT[:interface=HOST]``."""

    prefix = "utp"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from txhyperswarm.utp.endpoints import UTPServerEndpoint

        opts = _options("server", ("port", "interface"), args, kwargs)
        return UTPServerEndpoint(reactor, int(opts.get("port", 0)), opts.get("interface", "0.0.0.0"))


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class UTPClientParser:
    """``utp:HOST:PORT`` or ``utp:host=HOST:port=PORT[:timeout=S][:bindAddress=H[\\:P]]``."""

    prefix = "utp"

    def parseStreamClient(self, reactor, *args, **kwargs):
        from txhyperswarm._parsing import parse_host_port
        from txhyperswarm.utp.endpoints import UTPClientEndpoint

        opts = _options("client", ("host", "port", "timeout", "bindAddress"), args, kwargs)
        if "host" not in opts or "port" not in opts:
            raise ValueError("utp client endpoint needs host and port")
        bind = opts.get("bindAddress")
        if bind is None:
            bind_address = ("0.0.0.0", 0)
        elif ":" in bind:  # written as bindAddress=H\:P
            bind_address = parse_host_port(bind)
        else:  # as Twisted's tcp: endpoints, a host alone binds port 0
            bind_address = (bind, 0)
        timeout = opts.get("timeout")
        return UTPClientEndpoint(
            reactor, opts["host"], int(opts["port"]), bind_address, float(timeout) if timeout else None
        )


utpServerParser = UTPServerParser()
utpClientParser = UTPClientParser()
