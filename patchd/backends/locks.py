"""Waiting for another package tool's lock, and naming the tool that holds it.

Rules:
- A lock is waited for up to a timeout, polling; it is never broken.
- The holder is found in ``/proc/locks`` (fcntl and flock locks alike) so the
  error can say "held by process 1234 (packagekitd)": admins then know
  whether PackageKit, lastore or a stuck rpm is in the way.
"""

import contextlib
import fcntl
import os
import time
from typing import Callable, Iterator, List, Optional

import structlog

from patchd.core import errors

log = structlog.get_logger(__name__)

POLL_S = 0.2


def holders(path: str) -> List[str]:
    """``"<pid> (<command>)"`` of each process holding a lock on ``path``."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 1234 00:2d:5678 0 EOF" ("->" marks waiters).
        # The device there is the filesystem's, which on btrfs differs from
        # the subvolume's st_dev; so match the inode and then confirm that
        # the process has the file open (inodes repeat across subvolumes).
        if len(fields) >= 6 and fields[1] != "->" and \
                fields[5].rsplit(":", 1)[-1] == str(inode) and _has_open(fields[4], path):
            found.append(describe_process(int(fields[4])))
    return found


def _has_open(pid: str, path: str) -> bool:
    real = os.path.realpath(path)
    try:
        fds = os.listdir("/proc/{}/fd".format(pid))
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/{}/fd/{}".format(pid, fd)) == real:
                return True
        except OSError:
            continue
    return False


def describe_process(pid: int) -> str:
    try:
        with open("/proc/{}/comm".format(pid)) as f:
            return "{} ({})".format(pid, f.read().strip())
    except OSError:
        return str(pid)


def wait_for(try_once: Callable[[], bool], timeout: float, what: str,
             holder: Callable[[], str]) -> None:
    """Call ``try_once`` until it returns True or ``timeout`` passes.

    ``holder`` says who holds the lock, as a phrase ("held by 12 (rpm)").
    """
    deadline = time.monotonic() + timeout
    waited = False
    while not try_once():
        if time.monotonic() >= deadline:
            raise errors.LockTimeout("{} stayed locked for {:.0f} s: {}".format(
                what, timeout, holder() or "held by another process"))
        if not waited:
            log.info("waiting for lock", lock=what, holder=holder())
            waited = True
        time.sleep(POLL_S)


class ReentrantHold:
    """Nested holds of one package-database lock, taken once.

    ``generation`` changes at every fresh acquisition, so a backend can tell
    whether the lock was held without a break since it last looked (then
    nothing else can have changed the database).
    """

    def __init__(self, acquire: Callable[[float], None], release: Callable[[], None],
                 timeout: float):
        self._acquire = acquire
        self._release = release
        self.timeout = timeout
        self.depth = 0
        self.generation = 0

    @contextlib.contextmanager
    def __call__(self, timeout: Optional[float] = None) -> Iterator[None]:
        if self.depth == 0:
            self._acquire(timeout if timeout is not None else self.timeout)
            self.generation += 1
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self._release()


class FcntlLock:
    """An exclusive ``lockf`` lock on a file, as rpm takes on its .rpm.lock."""

    def __init__(self, path: str):
        self.path = path
        self._fd: Optional[int] = None

    def try_acquire(self) -> bool:
        if self._fd is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def acquire(self, timeout: float, what: str) -> None:
        def holder() -> str:
            found = holders(self.path)
            return "held by " + ", ".join(found) if found else ""
        wait_for(self.try_acquire, timeout, what, holder)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing drops the lock
            self._fd = None
