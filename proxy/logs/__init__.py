"""The canonical log line and the logging set-up: one JSON or console line per event.

Imports nothing else from ``proxy``. The layers are checked by import-linter (``pyproject.toml``).
"""
