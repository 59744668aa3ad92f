"""The supervisor's private directory for the workers' metrics files, and removing abandoned ones.

Theory of operation
-------------------
A supervisor keeps its workers' prometheus-client files in ``$TMPDIR/hangup-metrics-XXXXXXXX``
and removes it when it exits. A supervisor killed with SIGKILL (the OOM killer) cannot, and in
Kubernetes ``/tmp`` is an in-memory ``emptyDir`` that outlives container restarts: every such kill
would leak memory into the pod's limit for the pod's whole life. So each supervisor, before making
its own directory, removes the ones whose supervisor is gone, and never one whose supervisor lives
(two hangups may share a ``/tmp``: two sidecars in a pod, tests run in parallel).

"Gone" is decided by an advisory lock, not a PID: in a container the supervisor is PID 1 every
time, so a PID in a file would name the new supervisor as the old one's owner. A live supervisor
holds an exclusive ``flock`` on ``supervisor.lock`` in its directory for its whole life; the kernel
drops the lock when the process ends, however it ends. A directory whose lock can be taken is
abandoned.

The one race: the lock file exists a moment before it is locked. A scanner that came in between
would take the lock and remove a live supervisor's directory. So the lock file is created under a
temporary name, locked, and only then renamed to ``supervisor.lock`` (a rename within a directory
is atomic): a file with that name has been locked since before it had the name. A directory
without one is therefore either a supervisor in the microseconds between ``mkdtemp`` and that
rename (alive, or killed right there, leaving at most an empty file), or made by an older hangup
that took no lock (alive or not: nothing tells). Those are left alone. Removing them after some
age instead would break a long-running older hangup's /metrics, for the sake of directories that
are either empty or, in Kubernetes, gone with the pod that an upgrade replaces.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from types import TracebackType

import structlog

log = structlog.get_logger("hangup.proxy")

PREFIX = "hangup-metrics-"
"""Every supervisor's directory is ``$TMPDIR/`` this prefix and ``mkdtemp``'s random suffix."""

LOCK_NAME = "supervisor.lock"
"""The lock file in each directory; not ``*.db``, so prometheus-client's collector ignores it."""


class MetricsDir:
    """A supervisor's locked metrics directory; removed, then unlocked, when it is closed."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, parent: Path | None = None) -> MetricsDir:
        """Make and lock a new directory under ``parent`` (``$TMPDIR``); ``OSError`` if it can't."""
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        try:
            # mkstemp's descriptor is not inherited by the workers (PEP 446): the lock must end
            # with the supervisor, not with the last worker still draining after its death.
            lock_fd, staged = tempfile.mkstemp(prefix=".lock-", dir=path)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(staged, path / LOCK_NAME)  # only now may a scanner see it: see above
            except BaseException:
                os.close(lock_fd)
                raise
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, lock_fd)

    def close(self) -> None:
        # Removed while still locked: a scanner that sees the lock free finds nothing left to
        # remove, or removes what this would have.
        try:
            shutil.rmtree(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("metrics_dir_not_removed", path=str(self.path), error=str(exc))
        finally:
            os.close(self._lock_fd)

    def __enter__(self) -> MetricsDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def remove_abandoned(parent: Path | None = None) -> list[Path]:
    """Remove every metrics directory under ``parent`` (``$TMPDIR``) whose supervisor is gone.

    Never raises: a directory that cannot be removed is logged and left, start-up goes on.
    """
    try:
        # gettempdir raises when no candidate is writable (a read-only root file system): then
        # there is nothing to clean, and MetricsDir.create reports the problem in one line.
        parent = Path(tempfile.gettempdir()) if parent is None else parent
        candidates = sorted(parent.glob(f"{PREFIX}*"))
    except OSError:
        return []
    return [path for path in candidates if _remove_if_abandoned(path)]


def _remove_if_abandoned(path: Path) -> bool:
    """Remove ``path`` if it is a directory of ours whose lock can be taken; True if removed."""
    try:
        if not _is_own_directory(path):
            return False
        # O_NOFOLLOW: /tmp is shared, and a lock "file" that is a symlink is not one of ours.
        lock_fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # no lock file (see the module's docstring), or removed meanwhile
    except OSError as exc:
        log.warning("metrics_dir_not_removed", path=str(path), error=str(exc))
        return False
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its supervisor lives
        # Held while removing, so two supervisors starting together do not both remove it.
        shutil.rmtree(path)
    except FileNotFoundError:
        return False  # its supervisor exited and removed it between the open and the lock
    except OSError as exc:
        log.warning("metrics_dir_not_removed", path=str(path), error=str(exc))
        return False
    finally:
        os.close(lock_fd)
    log.info("metrics_dir_removed", path=str(path))
    return True


def _is_own_directory(path: Path) -> bool:
    """A real directory (not a symlink to one) of this user's: any other is not ours to remove."""
    status = path.lstat()
    return stat.S_ISDIR(status.st_mode) and status.st_uid == os.geteuid()
