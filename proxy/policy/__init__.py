"""What a hang-up does to a request: the method list, the route rules, and the decision
header that carries the choice to the backend.

Imports nothing else from ``proxy``. The layers are checked by import-linter (``pyproject.toml``).
"""
