"""Is the ``proxy`` package this process imported hangup's own?

hangup's import name is ``proxy``, and so is proxy.py's (the PyPI distribution ``proxy.py``,
whose wheel installs a top-level ``proxy`` package). Installed into one environment, the later
one overwrites the earlier one's ``proxy/__init__.py`` and ``proxy/__main__.py`` and adds its
modules beside the other's: a package with two owners that is neither program. ``hangup-proxy``
and each of its workers refuse to run in one (``check_package``, the first thing ``main`` does),
with one line that names the other owner, instead of running half of another program.

How it tells: hangup's ``proxy/__init__.py`` holds ``DISTRIBUTION = "hangup"``. That is the one
file another distribution must overwrite to own the package at all, so the marker goes exactly
when the package stops being hangup's, whatever installer put the other one there, and checking it
costs an attribute look-up. The other ways fail a case:

- the hashes hangup's ``RECORD`` lists: an editable install records none of the package's files,
  not every installer writes hashes, and hashing files at every worker start costs time;
- ``importlib.metadata.packages_distributions()``: it names every distribution that ever wrote
  into ``proxy/``, so it would also refuse an environment where hangup was installed last and its
  files won, and it reads every distribution's metadata at every start;
- a module only hangup ships (``proxy/workers/supervisor.py``): it survives the overwrite, so it
says that
  hangup's modules are there, not that the package imported is hangup's.

Only once the marker is missing is the metadata read, to name the culprit: the distributions other
than hangup whose ``RECORD`` lists ``proxy/__init__.py``. The installed distribution's version
(``hangup_version``) is read here too, once per process.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from types import ModuleType

OWNER = "hangup"
INIT = "proxy/__init__.py"


@functools.cache
def hangup_version() -> str:
    """The installed ``OWNER`` distribution's version (``--version``, ``hangup_build_info``).

    Cached: the metadata is read once per process, not once per caller.
    """
    try:
        return metadata.version(OWNER)
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def is_hangups(package: ModuleType) -> bool:
    """True when ``package`` was imported from hangup's own ``proxy/__init__.py``."""
    return getattr(package, "DISTRIBUTION", None) == OWNER


def other_owners(distributions: Iterable[metadata.Distribution]) -> list[str]:
    """``name version`` of each distribution but hangup whose files include ``INIT``."""
    owners: set[str] = set()
    for distribution in distributions:
        name = distribution.metadata["Name"]
        if not name or name.lower() == OWNER:
            continue
        if any(str(file) == INIT for file in distribution.files or ()):
            owners.add(f"{name} {distribution.version}")
    return sorted(owners)


def foreign_package_line(
    package: ModuleType, distributions: Iterable[metadata.Distribution]
) -> str:
    """The one line for a ``proxy`` package that is not hangup's."""
    where = Path(package.__file__).parent if package.__file__ else "?"
    who = " and ".join(other_owners(distributions)) or "another distribution"
    return (
        f"hangup-proxy: the 'proxy' package at {where} is not hangup's: {who} installed files "
        f"into it; use a separate virtualenv"
    )


def check_package() -> None:
    """Exit 2 with one line on stderr unless ``proxy`` is hangup's (see the module docstring)."""
    package = sys.modules["proxy"]
    if is_hangups(package):
        return
    sys.stderr.write(foreign_package_line(package, metadata.distributions()) + "\n")
    raise SystemExit(2)
