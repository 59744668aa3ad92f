"""The demo backend's WebSocket echo, ``/ws/echo``, counted in ``/stats``.

Why the handler watches for disconnects itself: the cancelling protocol (``demo_backend.protocol``)
never sees a WebSocket. uvicorn hands an upgrade request to its WebSocket protocol class (``--ws``;
websockets-sansio by default), which takes over the transport (``handle_websocket_upgrade`` calls
``transport.set_protocol``) and runs the app without our per-connection wrapper; and
``ConnectionCanceller`` passes non-``http`` scopes straight through anyway. What uvicorn does on
``connection_lost`` is queue a ``websocket.disconnect`` (code 1005 once the handshake is done,
or the code of the Close frame that came first). So this handler keeps reading ``receive()`` at
all times, runs slow work in tasks of its own, and cancels that work when the disconnect arrives:
the WebSocket form of Starlette's ``StreamingResponse`` racing ``listen_for_disconnect``.

Messages: text and binary are echoed; ``sleep S`` answers ``slept S`` after S seconds (work to be
cancelled); ``close CODE`` makes the server close with CODE. The first subprotocol the client
offers is accepted.

Counters: ``ws_opened`` when accepted; when the session ends, ``ws_cancelled`` if the peer went
away (1001), the connection was lost (1005, 1006) or the handler was cancelled, else
``ws_closed``. In-flight work is cancelled either way.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import structlog
from fastapi import FastAPI, WebSocket

from demo_backend.request_id import request_id_from_headers
from demo_backend.stats import Stats

ECHO_PATH = "/ws/echo"

# RFC 6455 §7.4.1 1001 "going away"; §7.1.5 1005 "no status" (uvicorn's code for a lost
# connection); 1006 "abnormal closure".
GONE_CODES = frozenset({1001, 1005, 1006})


def _logger() -> Any:
    # Looked up per call: see demo_backend.canceller._logger.
    return structlog.get_logger()


def add_websocket_echo(app: FastAPI, stats: Stats) -> None:
    """Register ``/ws/echo`` on ``app``, counting its sessions in ``stats``."""

    async def echo(websocket: WebSocket) -> None:
        await EchoSession(websocket, stats).run()

    app.add_api_websocket_route(ECHO_PATH, echo)


class EchoSession:
    """One WebSocket connection to ``/ws/echo``, from accept to its end."""

    def __init__(self, websocket: WebSocket, stats: Stats) -> None:
        self.websocket = websocket
        self.stats = stats
        self.log = _logger().bind(
            request_id=request_id_from_headers(websocket.scope["headers"]), path=ECHO_PATH
        )
        self._work: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        offered = self.websocket.scope.get("subprotocols") or []
        subprotocol = offered[0] if offered else None
        await self.websocket.accept(subprotocol=subprotocol)
        self.stats.increment("ws_opened")
        self.log.info("websocket_opened", subprotocol=subprotocol)
        try:
            code = await self._serve()
        except asyncio.CancelledError:
            self._ended(None)
            raise
        finally:
            in_flight = len(self._work)
            for task in self._work:
                task.cancel()
            if self._work:
                await asyncio.wait(self._work)
            if in_flight:
                self.log.info("websocket_work_cancelled", tasks=in_flight)
        self._ended(code)

    def _ended(self, code: int | None) -> None:
        if code is None or code in GONE_CODES:
            self.stats.increment("ws_cancelled")
            self.log.info("websocket_cancelled", code=code)
        else:
            self.stats.increment("ws_closed")
            self.log.info("websocket_closed", code=code)

    async def _serve(self) -> int:
        """Answer messages until the session ends; its close code."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code", 1005))
            text = message.get("text")
            if text is None:
                await self.websocket.send_bytes(message.get("bytes") or b"")
                continue
            command, _, argument = text.partition(" ")
            if command == "close" and argument.isdigit():
                await self.websocket.close(int(argument))
                return int(argument)
            if command == "sleep" and _is_duration(argument):
                self._start_work(float(argument))
                continue
            await self.websocket.send_text(text)

    def _start_work(self, seconds: float) -> None:
        task = asyncio.create_task(self._sleep_then_answer(seconds))
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _sleep_then_answer(self, seconds: float) -> None:
        self.log.info("websocket_work_started", seconds=seconds)
        await asyncio.sleep(seconds)
        await self.websocket.send_text(f"slept {seconds:g}")


def _is_duration(text: str) -> bool:
    try:
        seconds = float(text)
    except ValueError:
        return False
    return math.isfinite(seconds) and 0 <= seconds <= 3600
