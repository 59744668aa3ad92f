"""``logging.config.dictConfig`` dicts that give the cancelling protocol's logger its own format,
and the plain ``uvicorn`` command line that serves the demo app with one.

A test that finds a line in exactly this format knows the record went through the server's (or
the app's) logging configuration, not around it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import uvicorn.config

from demo_backend.canceller import LOGGER_NAME
from tests.support import script_path

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


def plain_uvicorn_argv(protocol: str, log_config_dir: Path | None = None) -> list[str]:
    """``uvicorn --http demo_backend.protocol:<protocol>`` serving the demo app on a free port.

    With ``log_config_dir``, also ``--log-config``: uvicorn's config plus ``with_cancel_logger``'s.
    """
    argv = [script_path("uvicorn"), "--http", f"demo_backend.protocol:{protocol}"]
    if log_config_dir is not None:
        log_config = log_config_dir / "logging.json"
        log_config.write_text(json.dumps(with_cancel_logger(uvicorn.config.LOGGING_CONFIG)))
        argv += ["--log-config", str(log_config)]
    return [*argv, "--factory", "demo_backend.app:create_app", "--port", "0"]
