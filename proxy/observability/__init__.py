"""What an operator scrapes and probes: Prometheus metrics, the admin listener, build info.

May import the packages below it: up to ``proxy.exchange``. The layers are checked by import-linter
(``pyproject.toml``).
"""
