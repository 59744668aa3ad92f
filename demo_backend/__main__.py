"""``python -m demo_backend``: the same as ``hangup-demo-backend``."""

from __future__ import annotations

import sys

from demo_backend.cli import main

sys.exit(main())
