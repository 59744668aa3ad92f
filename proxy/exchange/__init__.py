"""One exchange's state machine: its phases, its endings, and the hook that cuts the upstream
when the client leaves.

May import ``proxy.wire``, ``proxy.policy``, ``proxy.logs``, ``proxy.edge`` and ``proxy.upstream``.
The layers are checked by import-linter (``pyproject.toml``).
"""
