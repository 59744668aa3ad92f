"""Where the one backend is: ``http://HOST:PORT`` or a unix socket, parsed from ``--upstream``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Upstream:
    """The one backend: ``http://HOST:PORT``, or a unix socket path (``unix:/run/app.sock``).

    Only plain HTTP: a sidecar talks over loopback or a socket shared in the pod (``emptyDir``).
    """

    host: str
    port: int
    unix_path: str | None = None
    """When set, every connection goes to this unix socket; host and port only name it."""

    @property
    def origin(self) -> str:
        """``http://host:port`` with no trailing slash; request targets are appended verbatim.

        For a unix socket the URL's host is never resolved: the client's own ``Host`` header is
        what the backend sees, as for TCP.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def authority(self) -> str:
        """``host[:port]`` for a ``Host`` header, when a client (HTTP/1.0) sent none.

        RFC 9112 §3.2: an HTTP/1.1 request must carry ``Host``; the port is left out when it is
        the scheme's default, as browsers and nginx's ``$proxy_host`` do.
        """
        authority = self.origin.removeprefix("http://")
        return authority.removesuffix(":80") if self.port == 80 else authority

    def describe(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path is not None else self.origin


UNIX_PREFIX = "unix:"


def parse_upstream(text: str) -> Upstream:
    if text.strip().startswith(UNIX_PREFIX):
        path = text.strip().removeprefix(UNIX_PREFIX)
        if not path.startswith("/"):
            raise ValueError(f"a unix socket upstream needs an absolute path, got {text!r}")
        return Upstream("localhost", 80, unix_path=path)
    parts = urlsplit(text.strip())
    if parts.scheme != "http":
        raise ValueError(f"upstream must be an http:// URL, got {text!r}")
    if not parts.hostname:
        raise ValueError(f"upstream URL has no host: {text!r}")
    # User info would be dropped silently below, so the operator's credentials would never be sent.
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f"upstream URL must be only http://HOST:PORT (request paths are forwarded as they "
            f"came), got {text!r}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"upstream URL has an invalid port: {text!r}") from None
    if port == 0:
        # Nothing can be reached on port 0: every request would end in a 502.
        raise ValueError(f"upstream URL has an invalid port: {text!r}")
    return Upstream(parts.hostname, port if port is not None else 80)
