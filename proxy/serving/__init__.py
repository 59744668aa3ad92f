"""One proxy process: the forwarder that carries a request from the gate to the upstream and
back, and the server that assembles and runs it.

May import the packages below it: up to ``proxy.settings``. The layers are checked by import-linter
(``pyproject.toml``).
"""
