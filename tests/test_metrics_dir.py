"""Which metrics directories a starting supervisor removes (``proxy.workers.metrics_dir``), on plain
ones.

A directory's owner is "another process" here: a child interpreter that takes the lock (or makes a
whole ``MetricsDir``) and holds it until its stdin closes, or until the test SIGKILLs it. The
supervisors themselves, started as the console script, are in ``test_workers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from proxy.workers.metrics_dir import LOCK_NAME, PREFIX, MetricsDir, remove_abandoned
from tests.support import WAIT, watch_logs

HOLD_A_LOCK = """\
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
"""

HOLD_A_METRICS_DIR = """\
import sys
from pathlib import Path
from proxy.workers.metrics_dir import MetricsDir
held = MetricsDir.create(Path(sys.argv[1]))
print(held.path, flush=True)
sys.stdin.read()
"""


@contextlib.asynccontextmanager
async def child_python(code: str, *argv: str) -> AsyncIterator[tuple[int, str]]:
    """A python child running ``code`` until its stdin closes: its pid and first stdout line."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        async with asyncio.timeout(WAIT):
            first = (await child.stdout.readline()).decode().strip()
        assert first, "the child ended before saying it holds the lock"
        yield child.pid, first
    finally:
        child.stdin.close()
        try:
            async with asyncio.timeout(WAIT):
                await child.wait()
        except TimeoutError:
            child.kill()  # by PID (asyncio's Process.kill)
            async with asyncio.timeout(WAIT):
                await child.wait()


def entries(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def abandoned_dir(parent: Path, name: str = f"{PREFIX}gone") -> Path:
    """A metrics directory with a lock file that nobody holds, and a metrics file in it."""
    path = parent / name
    path.mkdir()
    (path / LOCK_NAME).touch()
    (path / "counter_123.db").write_bytes(b"\0" * 16)
    return path


# --- removed -----------------------------------------------------------------------------------


async def test_a_directory_whose_supervisor_was_sigkilled_is_removed_and_logged(
    tmp_path: Path,
) -> None:
    async with child_python(HOLD_A_METRICS_DIR, str(tmp_path)) as (pid, path):
        os.kill(pid, signal.SIGKILL)
    left = Path(path)
    assert entries(tmp_path) == [left]

    with watch_logs() as logs:
        removed = remove_abandoned(tmp_path)

    assert removed == [left]
    assert entries(tmp_path) == []
    assert [entry["path"] for entry in logs.events("metrics_dir_removed")] == [str(left)]
    assert logs.events("metrics_dir_removed")[0]["log_level"] == "info"


def test_a_directory_whose_lock_file_nobody_holds_is_removed(tmp_path: Path) -> None:
    gone = abandoned_dir(tmp_path)

    assert remove_abandoned(tmp_path) == [gone]
    assert list(tmp_path.iterdir()) == []


# --- left alone --------------------------------------------------------------------------------


async def test_a_directory_whose_lock_another_process_holds_is_left_alone(tmp_path: Path) -> None:
    live = abandoned_dir(tmp_path, f"{PREFIX}live")
    async with child_python(HOLD_A_LOCK, str(live / LOCK_NAME)) as (_, said):
        assert said == "locked"
        with watch_logs() as logs:
            removed = remove_abandoned(tmp_path)

    assert removed == []
    assert [path.name for path in entries(live)] == ["counter_123.db", LOCK_NAME]
    assert logs.entries == []


def test_the_directory_this_process_holds_is_left_alone(tmp_path: Path) -> None:
    with MetricsDir.create(tmp_path) as held:
        assert remove_abandoned(tmp_path) == []
        assert held.path.is_dir()


def _without_lock_file(parent: Path) -> Path:
    # An older hangup's, or one caught between mkdtemp and locking: nothing says it is dead.
    path = parent / f"{PREFIX}nolock"
    path.mkdir()
    (path / "counter_123.db").touch()
    return path


def _other_prefix(parent: Path) -> Path:
    return abandoned_dir(parent, "someone-elses")


def _plain_file(parent: Path) -> Path:
    path = parent / f"{PREFIX}file"
    path.touch()
    return path


def _symlink_to_abandoned(parent: Path) -> Path:
    target = abandoned_dir(parent, "target")
    path = parent / f"{PREFIX}link"
    path.symlink_to(target)
    return target


def _lock_file_is_a_symlink(parent: Path) -> Path:
    path = parent / f"{PREFIX}locklink"
    path.mkdir()
    (parent / "elsewhere").touch()
    (path / LOCK_NAME).symlink_to(parent / "elsewhere")
    return path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_without_lock_file, id="no-lock-file"),
        pytest.param(_other_prefix, id="other-prefix"),
        pytest.param(_plain_file, id="a-file-not-a-directory"),
        pytest.param(_symlink_to_abandoned, id="symlink-to-a-directory"),
        pytest.param(_lock_file_is_a_symlink, id="lock-file-is-a-symlink"),
    ],
)
def test_what_is_not_a_provably_abandoned_metrics_directory_is_left_alone(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    kept = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))

    assert remove_abandoned(tmp_path) == []
    assert kept.exists()
    assert sorted(tmp_path.rglob("*")) == before


# --- never fatal -------------------------------------------------------------------------------


def test_a_directory_that_cannot_be_removed_is_a_warning_and_the_scan_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = abandoned_dir(tmp_path, f"{PREFIX}a-stuck")
    gone = abandoned_dir(tmp_path, f"{PREFIX}b-gone")
    real_rmtree = shutil.rmtree

    def rmtree(path: Path) -> None:
        # A read-only directory would not stop rmtree when tests run as root: fail it directly.
        if path == stuck:
            raise PermissionError(13, "Permission denied", str(path))
        real_rmtree(path)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with watch_logs() as logs:
        removed = remove_abandoned(tmp_path)

    assert removed == [gone]
    assert stuck.is_dir()
    [warning] = logs.events("metrics_dir_not_removed")
    assert (warning["log_level"], warning["path"]) == ("warning", str(stuck))
    assert "Permission denied" in warning["error"]


def test_no_usable_temporary_directory_is_not_an_error_for_the_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def gettempdir() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found")

    # As on a read-only root file system: the supervisor's own mkdtemp then says so in one line.
    monkeypatch.setattr(tempfile, "gettempdir", gettempdir)

    assert remove_abandoned() == []


# --- the supervisor's own directory ------------------------------------------------------------


def test_a_new_directory_shows_only_its_locked_lock_file_and_is_removed_when_closed(
    tmp_path: Path,
) -> None:
    with MetricsDir.create(tmp_path) as held:
        assert held.path.parent == tmp_path
        assert held.path.name.startswith(PREFIX)
        assert [path.name for path in held.path.iterdir()] == [LOCK_NAME]
        probe = os.open(held.path / LOCK_NAME, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)

    assert list(tmp_path.iterdir()) == []
