"""``ProxyConfig``: every setting of one proxy, with the parser of each flag's value.

May import the packages below it: up to ``proxy.websocket``. The layers are checked by import-linter
(``pyproject.toml``).
"""
