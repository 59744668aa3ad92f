"""Where a client's byte stream stands: inside a request's header block, or not.

The header deadline (``proxy.edge.frontend``) runs from the first byte of a request's head to its
end. aiohttp's parser does not say when a head has *begun*, only when one is complete, so a
partial head pipelined behind a running request (``GET /a …\\r\\n\\r\\nGET /b HTTP/1.1\\r\\nX:``)
was invisible: the connection looked busy, the deadline was disarmed, and the half head could
sit there until the keep-alive timeout (issue 12). ``HeadWatch`` follows the same bytes with a
second llhttp (httptools, already a dependency) that only marks where messages begin and where
their heads end; it skips bodies without copying them. It costs well under a microsecond per
request.
"""

from __future__ import annotations

import httptools


class HeadWatch:
    """Fed every byte the client sends; ``in_head`` is True between a head's first byte and its end.

    ``heads`` counts the heads completed so far. ``follow`` returns False once the bytes can no
    longer be followed (an upgrade, after which they are not HTTP, or bytes llhttp refuses, after
    which aiohttp refuses them too and closes); the watcher is then of no further use.
    """

    __slots__ = ("_parser", "heads", "in_head")

    def __init__(self) -> None:
        self.in_head = False
        self.heads = 0
        self._parser = httptools.HttpRequestParser(self)

    def follow(self, data: bytes) -> bool:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # HttpParserUpgrade is not an HttpParserError: llhttp stops at an upgrade or CONNECT.
            self.in_head = False
            return False
        return True

    # --- llhttp's callbacks (httptools calls only those that exist) ----------------------------

    def on_message_begin(self) -> None:
        self.in_head = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.heads += 1
