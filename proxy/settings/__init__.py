"""``ProxyConfig``: every setting of one proxy, with the parser of each flag's value; and
``command_line``, the one-line-error argument parser both console scripts use.

May import the packages below it: up to ``proxy.websocket``. The layers are checked by import-linter
(``pyproject.toml``).
"""
