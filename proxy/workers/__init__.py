"""Several worker processes behind one address: the supervisor, the worker, the shared
listening socket, the restart policy and the metrics the workers share.

May import every package but ``proxy.cli``. The layers are checked by import-linter
(``pyproject.toml``).
"""
