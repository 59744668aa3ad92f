"""gunicorn worker classes that serve with the cancelling protocol.

uvicorn's gunicorn worker lives in the ``uvicorn-worker`` distribution now; ``uvicorn.workers``
still ships in uvicorn 0.54 but warns that it is deprecated (Kludex/uvicorn-worker). Its
``CONFIG_KWARGS`` is merged into the worker's ``uvicorn.Config``, so naming our protocol class
as ``http`` there is the whole change::

    gunicorn -k demo_backend.gunicorn_worker:CancellingUvicornWorker yourapp:app

Needs ``pip install 'hangup[gunicorn]'``. The policy comes from ``HANGUP_CANCEL_METHODS`` in the
environment, as under plain uvicorn; importing this module reads it, so the gunicorn master
checks it once, before any worker starts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornH11Worker, UvicornWorker

from demo_backend.protocol import CancellingH11Protocol, CancellingHttpToolsProtocol


# uvicorn_worker has no type information: its classes are Any to mypy.
class CancellingUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn's worker on its default loop, with the cancelling httptools protocol."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "http": CancellingHttpToolsProtocol,
    }


class CancellingUvicornH11Worker(UvicornH11Worker):  # type: ignore[misc]
    """The pure-Python variant (asyncio loop, h11), with the cancelling h11 protocol."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornH11Worker.CONFIG_KWARGS,
        "http": CancellingH11Protocol,
    }
