"""The request id that ties the proxy's, the backend's and the demo's log lines together."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

REQUEST_ID_HEADER = b"x-request-id"


def request_id_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The ``X-Request-ID`` sent by the client (the proxy forwards it), else a fresh id.

    ``headers`` are ASGI scope headers: names are already lower-cased by the server.
    """
    for name, value in headers:
        if name == REQUEST_ID_HEADER and value:
            return value.decode("latin-1")
    return uuid.uuid4().hex
