"""The API-call case: ``POST /post1k`` with a 1.5 KiB JSON body, answered with 1 KiB.

hangup's main use is forwarding API calls such as LLM requests: a small JSON body that arrives
in the same read as its head, which hangup forwards with the head in one write. The origin
answers the path with a fixed 1 KiB (``nginx.origin_config``), reading and discarding the body so
that the connection stays open. Every proxy is measured for it, the bare aiohttp proxy included:
it reads the body whole and writes it with the head (its ceiling for this case, issue 16).
"""

from __future__ import annotations

import json

PATH = "post1k"
"""The origin's location for the case, without the leading slash (as ``nginx.BODY_SIZES``)."""
BODY_SIZE = 1536
ANSWER_SIZE = 1024
CONTENT_TYPE = "application/json"


def _json_body(size: int) -> bytes:
    """A chat-completion-shaped request, its prompt padded so the whole is ``size`` bytes."""
    shape = {"model": "bench", "max_tokens": 256, "messages": [{"role": "user", "content": ""}]}
    empty = len(json.dumps(shape).encode())
    shape["messages"] = [{"role": "user", "content": "x" * (size - empty)}]
    return json.dumps(shape).encode()


BODY = _json_body(BODY_SIZE)
