"""WebSocket tunnels: the upgrade handshake, frame tracking, and the splice between sockets.

May import the packages below it: up to ``proxy.observability``. The layers are checked by
import-linter (``pyproject.toml``).
"""
