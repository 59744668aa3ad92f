"""The backend half's app: FastAPI's hello world, one route answering a small JSON.

``uvicorn benchmarks.hello_app:app``; ``benchmarks.backends`` runs it on plain uvicorn and on
uvicorn with hangup's cancelling protocol, to measure what the protocol costs a request.
"""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()

ANSWER_SIZE = len(b'{"hello":"world"}')
"""The body's length as FastAPI renders it (compact JSON), for the start-up check."""


@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
