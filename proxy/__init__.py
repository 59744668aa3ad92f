"""hangup's reverse proxy, ``hangup-proxy`` (the README's picture, left box to middle box).

``DISTRIBUTION`` marks this package as hangup's own. Another distribution that installs a
top-level ``proxy`` package (proxy.py does) overwrites this file, and with it the marker, which is
how ``proxy.observability.provenance`` tells that the package imported is no longer hangup's.
"""

DISTRIBUTION = "hangup"
