"""HTTP/1.1 message rules both sides share, with no I/O: header rewriting, the response
hangup writes, addresses.

Imports nothing else from ``proxy``. The layers are checked by import-linter (``pyproject.toml``).
"""
