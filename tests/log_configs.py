"""``logging.config.dictConfig`` dicts that give the cancelling protocol's logger its own format.

A test that finds a line in exactly this format knows the record went through the server's (or
the app's) logging configuration, not around it.
"""

from __future__ import annotations

import copy
from typing import Any

from demo_backend.canceller import LOGGER_NAME

CANCEL_FORMAT = "HANGUP-CANCEL %(levelname)s request_id=%(request_id)s %(method)s %(path)s"


def cancel_line(request_id: str, method: str = "GET", path: str = "/slow") -> str:
    return f"HANGUP-CANCEL INFO request_id={request_id} {method} {path}"


def with_cancel_logger(base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (uvicorn's or gunicorn's default config) plus a handler for ``hangup.cancel``."""
    config = copy.deepcopy(base)
    config.setdefault("formatters", {})["hangup_cancel"] = {"format": CANCEL_FORMAT}
    config.setdefault("handlers", {})["hangup_cancel"] = {
        "class": "logging.StreamHandler",
        "formatter": "hangup_cancel",
        "stream": "ext://sys.stderr",
    }
    config.setdefault("loggers", {})[LOGGER_NAME] = {
        "handlers": ["hangup_cancel"],
        "level": "INFO",
        "propagate": False,
    }
    return config
