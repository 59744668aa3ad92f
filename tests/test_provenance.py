"""hangup refuses a ``proxy`` package that is not its own (``proxy.observability.provenance``).

The table tests build real ``.dist-info`` directories; the slow test installs hangup and then
proxy.py (whose wheel overwrites ``proxy/__init__.py``) into a fresh virtualenv and runs the real
``hangup-proxy`` there, as one process, as a supervisor, and as a supervisor whose package is
taken over while it runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

import proxy
from demo_backend.child_process import spawn_with_log_lines
from proxy.observability.provenance import (
    check_package,
    foreign_package_line,
    is_hangups,
    other_owners,
)
from proxy.workers.restart_policy import MAX_FAILED_STARTS
from tests.support import LOOPBACK, WAIT, ScriptProcess

ROOT = Path(__file__).resolve().parent.parent
PROXY_PY = "proxy.py==2.4.10"
"""The clashing distribution: its wheel installs ``proxy/__init__.py`` and ``proxy/__main__.py``."""

INSTALL_TIMEOUT = 150.0  # seconds for one pip command (a cold cache downloads hangup's deps)


def dist_info(site: Path, name: str, version: str, files: list[str]) -> metadata.Distribution:
    """A real installed-distribution record in ``site``, as pip writes one."""
    directory = site / f"{name}-{version}.dist-info"
    directory.mkdir(parents=True)
    (directory / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    (directory / "RECORD").write_text("".join(f"{file},,\n" for file in files))
    return metadata.PathDistribution(directory)


def test_hangups_own_proxy_package_passes_the_check() -> None:
    assert is_hangups(proxy)
    check_package()  # returns, rather than exiting


@pytest.mark.parametrize(
    ("others", "named"),
    [
        pytest.param(
            [("proxy.py", "2.4.10", ["proxy/__init__.py", "proxy/__main__.py"])],
            "proxy.py 2.4.10",
            id="proxy.py",
        ),
        pytest.param(
            [
                ("proxy.py", "2.4.10", ["proxy/__init__.py"]),
                ("unrelated", "1.0", ["unrelated/__init__.py", "proxy_tools/__init__.py"]),
            ],
            "proxy.py 2.4.10",
            id="only-the-owner-of-proxy-init",
        ),
        pytest.param(
            [("b-proxy", "1", ["proxy/__init__.py"]), ("a-proxy", "2", ["proxy/__init__.py"])],
            "a-proxy 2 and b-proxy 1",
            id="two-owners",
        ),
        pytest.param([], "another distribution", id="files-put-there-by-hand"),
    ],
)
def test_a_package_without_hangups_marker_is_one_line_naming_who_installed_its_init(
    tmp_path: Path, others: list[tuple[str, str, list[str]]], named: str
) -> None:
    site = tmp_path / "site-packages"
    distributions = [dist_info(site, "hangup", "0.1.0", ["proxy/__init__.py", "proxy/cli.py"])]
    distributions += [dist_info(site, *other) for other in others]
    package = ModuleType("proxy")
    package.__file__ = str(site / "proxy" / "__init__.py")

    assert not is_hangups(package)
    assert foreign_package_line(package, distributions) == (
        f"hangup-proxy: the 'proxy' package at {site / 'proxy'} is not hangup's: {named} "
        f"installed files into it; use a separate virtualenv"
    )


def test_hangup_itself_is_never_named_as_another_owner(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    assert other_owners([dist_info(site, "Hangup", "0.1.0", ["proxy/__init__.py"])]) == []


# --- the clash for real: hangup, then proxy.py, in one fresh virtualenv -------------------------


def pip(python: Path, *arguments: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *arguments],
        check=True,
        timeout=INSTALL_TIMEOUT,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


def clean_environment() -> dict[str, str]:
    """This process's environment without hangup's variables or anything that picks modules."""
    dropped = ("HANGUP_", "PYTHONPATH", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR")
    return {name: value for name, value in os.environ.items() if not name.startswith(dropped)}


def proxy_argv(script: Path, workers: int) -> list[str]:
    upstream, listen = f"http://{LOOPBACK}:1", f"{LOOPBACK}:0"
    return [str(script), "--upstream", upstream, "--listen", listen, "--workers", str(workers)]


def run_to_exit(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


@pytest.fixture
def hangup_venv(tmp_path: Path) -> Path:
    """A fresh virtualenv holding hangup from this checkout and its dependencies; its path.

    Built as a wheel, as ``test_packaging`` does, without build isolation (this venv has
    setuptools), and installed non-editable: pip then writes hangup's ``proxy/__init__.py`` into
    site-packages, where proxy.py's wheel can overwrite it.
    """
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)],
        check=True,
        timeout=INSTALL_TIMEOUT,
        capture_output=True,
    )
    wheels = tmp_path / "wheel"
    pip(
        Path(sys.executable),
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(wheels),
        str(ROOT),
    )
    [wheel] = wheels.glob("hangup-*.whl")
    pip(venv / "bin/python", "install", str(wheel))
    return venv


@pytest.mark.slow
@pytest.mark.timeout(6 * 60)
async def test_once_proxy_py_overwrites_the_package_the_proxy_and_each_new_worker_exit_2_naming_it(
    hangup_venv: Path,
) -> None:
    python, script = hangup_venv / "bin/python", hangup_venv / "bin/hangup-proxy"

    # A supervisor whose workers all listen while the package is still hangup's alone.
    running = ScriptProcess(await spawn_with_log_lines(proxy_argv(script, 2), clean_environment()))
    try:
        ready = await running.wait_for_event("proxy_listening", workers=2)
        # proxy.py installed last wins proxy/__init__.py and proxy/__main__.py (it has no
        # dependencies of its own to install).
        await asyncio.to_thread(pip, python, "install", "--no-deps", PROXY_PY)
        os.kill(int(ready["pids"][0]), signal.SIGKILL)
        code = await running.wait_exit(timeout=3 * WAIT)
    finally:
        await running.stop()

    # Each restarted worker refused the package with the line; the supervisor reported their
    # exits as exits and gave up with its one line.
    python_dir = f"python{sys.version_info.major}.{sys.version_info.minor}"
    package_dir = hangup_venv / "lib" / python_dir / "site-packages" / "proxy"
    refusal = (
        f"hangup-proxy: the 'proxy' package at {package_dir} is not hangup's: proxy.py 2.4.10 "
        f"installed files into it; use a separate virtualenv"
    )
    assert code == 1
    assert refusal in running.raw_lines, running.raw_lines
    assert not running.events("worker_start_timeout")
    killed, *refused = running.events("worker_exited")
    assert killed["signal"] == "SIGKILL"
    assert [line["exit_status"] for line in refused] == [2] * MAX_FAILED_STARTS
    assert running.raw_lines[-1].startswith("hangup-proxy: error: worker ")
    assert running.raw_lines[-1].endswith("exited with 2 before it was listening")
    assert not any("Traceback" in line for line in running.raw_lines)

    # A new start, of one process or of a supervisor, is that one line and exit status 2.
    for workers in (1, 2):
        finished = run_to_exit(proxy_argv(script, workers))
        assert (finished.returncode, finished.stdout) == (2, ""), finished
        assert finished.stderr == refusal + "\n"
