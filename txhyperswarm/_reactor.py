"""The one place library code resolves ``reactor=None`` to the global reactor."""


def default_reactor(reactor=None):
    """Return ``reactor``, or the global Twisted reactor when it is ``None``."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor
