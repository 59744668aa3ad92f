"""wrk and nginx: found on this machine, or installed from Debian's packages when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# nginx is installed in sbin, which the PATH of a non-root shell often lacks.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)

# The Debian package that provides each program.
PACKAGES = {"wrk": "wrk", "nginx": "nginx"}

_APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


class ToolError(Exception):
    """A program the benchmark needs is missing and could not be installed."""


@dataclass(frozen=True)
class Tools:
    wrk: Path
    nginx: Path
    taskset: Path | None
    """util-linux's taskset, to pin each process to a core; None runs unpinned."""


def find(name: str) -> Path | None:
    found = shutil.which(name, path=_SEARCH_PATH)
    return Path(found) if found is not None else None


def missing_programs() -> list[str]:
    return [name for name in PACKAGES if find(name) is None]


def why_cannot_install() -> str | None:
    """None when apt-get can install packages here; otherwise the reason it cannot."""
    if find("apt-get") is None:
        return "apt-get is not on this machine"
    if os.geteuid() != 0:
        return "installing Debian packages needs root"
    return None


def ensure_tools(say: Callable[[str], None]) -> Tools:
    """Find wrk and nginx, installing the missing ones with apt-get (and saying so)."""
    missing = missing_programs()
    if missing:
        reason = why_cannot_install()
        packages = [PACKAGES[name] for name in missing]
        if reason is not None:
            raise ToolError(
                f"{' and '.join(missing)} not found and {reason}: "
                f"install the Debian packages {' '.join(packages)} first"
            )
        _apt_install(packages, say)
    else:
        say("wrk and nginx found; nothing installed")
    wrk, nginx = find("wrk"), find("nginx")
    if wrk is None or nginx is None:
        raise ToolError("apt-get finished but wrk or nginx is still not on the PATH")
    return Tools(wrk=wrk, nginx=nginx, taskset=find("taskset"))


def _apt_install(packages: list[str], say: Callable[[str], None]) -> None:
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    say(f"installing {' '.join(packages)}: {' '.join(install)}")
    if _apt(install) == 0:
        return
    # A machine whose package lists were never fetched knows no candidate for either package.
    say("apt-get install failed; running apt-get update once, then installing again")
    if _apt(["apt-get", "update", "-qq"]) != 0 or _apt(install) != 0:
        raise ToolError(f"apt-get could not install {' '.join(packages)}")


def _apt(argv: list[str]) -> int:
    # apt's chatter goes to stderr so that stdout carries only the report.
    return subprocess.run(  # noqa: S603 - a fixed apt-get command line, no shell
        argv, stdin=subprocess.DEVNULL, stdout=sys.stderr, env=_APT_ENV, check=False
    ).returncode


def version_of(argv: list[str]) -> str:
    """The first line a ``--version``-style command prints (wrk -v exits 1 and nginx -v writes to
    stderr, so both streams are read and the exit status is ignored)."""
    done = subprocess.run(  # noqa: S603 - the benchmark's own tools, no shell
        argv, capture_output=True, text=True, check=False, timeout=10
    )
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"
