# No __init__.py in twisted/plugins/: this directory is a portion of Twisted's
# plugin namespace. Keep this module import-light.
from twisted.application.service import ServiceMaker

hyperswarm = ServiceMaker(
    "hyperswarm",
    "txhyperswarm.tap",
    "Run a hyperswarm node: a DHT bootstrap node, or a swarm joining topics.",
    "hyperswarm",
)
