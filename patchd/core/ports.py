"""Ports: the roles adapters play for the runner.

``typing.Protocol`` needs Python 3.8, so ports are abstract base classes; an
adapter subclasses its port, which also documents which port it implements.
Each method states the guarantee the runner relies on.
"""

import abc
from typing import Callable, ContextManager, Dict, Iterable, List, Optional, Tuple

from patchd.core.model import Plan, Report, Request, SnapshotRef, Transaction

# Progress callback: (fraction 0.0-1.0, short human message).
Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """A Progress that ignores reports."""


class PackageBackend(abc.ABC):
    """A native package manager (apt, dnf) working on one managed root.

    Errors are raised as ``patchd.core.errors.PatchdError`` subclasses; any
    other exception is a bug.
    """

    family = ""   # a Family value
    # Lock files (relative to the root) the backend holds while a transaction
    # runs. A rollback must not replace them: the lock held on the old inode
    # would silently stop excluding other tools.
    lock_files: Tuple[str, ...] = ()

    @abc.abstractmethod
    def refresh(self, progress: Progress = no_progress) -> None:
        """Fetch repository metadata; refuse unsigned repositories not marked trusted."""

    @abc.abstractmethod
    def installed(self) -> List[Dict[str, str]]:
        """Installed packages as dicts with name, arch, version."""

    @abc.abstractmethod
    def updates(self) -> Plan:
        """The plan an upgrade of everything would run (holds honoured)."""

    @abc.abstractmethod
    def plan(self, request: Request) -> Plan:
        """Resolve ``request`` to the exact changes; no side effects."""

    @abc.abstractmethod
    def download(self, plan: Plan, progress: Progress = no_progress) -> None:
        """Fetch every archive of ``plan`` and verify checksum and origin trust."""

    @abc.abstractmethod
    def apply(self, plan: Plan, progress: Progress = no_progress) -> None:
        """Execute exactly ``plan`` (pinned versions); any script error raises."""

    @abc.abstractmethod
    def check(self, plan: Plan) -> None:
        """Audit the package database and confirm the plan's versions are in place."""

    @abc.abstractmethod
    def locked(self, timeout: Optional[float] = None) -> ContextManager[None]:
        """Hold the package database lock, waiting up to ``timeout`` seconds for
        another tool to release it (``LockTimeout`` else). Re-entrant."""


class Snapshotter(abc.ABC):
    """Takes snapshots of the managed root and restores it from them."""

    @abc.abstractmethod
    def take(self, ref: SnapshotRef) -> SnapshotRef:
        """Create ``ref`` (idempotent: an existing snapshot of that name is replaced)."""

    @abc.abstractmethod
    def restore(self, ref: SnapshotRef, progress: Progress = no_progress) -> None:
        """Make the live root equal to ``ref``; idempotent, so it can be resumed."""

    @abc.abstractmethod
    def list(self) -> List[SnapshotRef]:
        """patchd's snapshots, oldest first."""

    @abc.abstractmethod
    def delete(self, ref: SnapshotRef) -> None:
        """Delete ``ref``; deleting a missing snapshot is not an error."""

    @abc.abstractmethod
    def prune(self, keep: int, protect: Iterable[str] = ()) -> List[SnapshotRef]:
        """Keep the newest ``keep`` transactions' snapshots; return the deleted ones."""


class Journal(abc.ABC):
    """Durable record of transactions, written before each side effect."""

    @abc.abstractmethod
    def record(self, tx: Transaction, intent: str, report: Optional[Report] = None) -> None:
        """Durably store ``tx`` and the intent; the report goes to the outbox atomically."""

    @abc.abstractmethod
    def unfinished(self) -> List[Transaction]:
        """Transactions whose last record is not terminal, oldest first."""

    @abc.abstractmethod
    def get(self, tx_id: str) -> Optional[Transaction]:
        """One transaction's last recorded state."""
