# No __init__.py in twisted/plugins/: this directory is a portion of Twisted's
# plugin namespace. Keep this module import-light.
from twisted.application.service import ServiceMaker

hyperswarm = ServiceMaker(
    "hyperswarm",
    "txhyperswarm.tap",
    "A hyperswarm 2 daemon: reach a TCP service by topic (--expose / --listen), or run a DHT bootstrap node.",
    "hyperswarm",
)
