"""Wiring: choose and build the adapters for one managed root.

Rules:
- The backend is chosen by probing the root (dpkg status present: apt).
- patchd's own state never rolls back: when the state directory lies inside
  the root, it is excluded from snapshot restores.
"""

import os
from dataclasses import dataclass
from typing import Optional

from patchd.core import errors, names
from patchd.daemon.failpoints import Failpoints
from patchd.daemon.runner import ProgressListener, StateListener, TransactionRunner


@dataclass(frozen=True)
class Config:
    root: str = names.DEFAULT_ROOT
    state_dir: str = names.DEFAULT_STATE_DIR
    snapshot_dir: str = names.DEFAULT_SNAPSHOT_DIR
    snapshot_keep: int = names.DEFAULT_SNAPSHOT_KEEP
    lock_timeout: float = names.DEFAULT_LOCK_TIMEOUT_S

    @property
    def journal_path(self) -> str:
        return os.path.join(self.state_dir, names.JOURNAL_FILENAME)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.state_dir, "logs")


def build_backend(config: Config):
    root = os.path.realpath(config.root)
    if os.path.exists(os.path.join(root, "var/lib/dpkg/status")):
        from patchd.backends.apt import AptBackend
        return AptBackend(root, config.state_dir, config.lock_timeout)
    raise errors.InvalidRequest(
        "{} has no dpkg database; only apt/dpkg roots are supported so far".format(root))


def build_journal(config: Config):
    from patchd.store.journal import SqliteJournal
    return SqliteJournal(config.journal_path)


def build_snapshotter(config: Config):
    from patchd.snapshot.btrfs import BtrfsSnapshotter
    root = os.path.realpath(config.root)
    state = os.path.realpath(config.state_dir)
    exclude = []
    if state.startswith(root.rstrip("/") + "/"):
        exclude.append(os.path.relpath(state, root))
    return BtrfsSnapshotter(root, config.snapshot_dir, exclude=exclude)


def build_runner(config: Config, journal=None, on_state: Optional[StateListener] = None,
                 on_progress: Optional[ProgressListener] = None) -> TransactionRunner:
    return TransactionRunner(
        backend=build_backend(config),
        snapshotter=build_snapshotter(config),
        journal=journal if journal is not None else build_journal(config),
        log_dir=config.log_dir,
        snapshot_keep=config.snapshot_keep,
        on_state=on_state,
        on_progress=on_progress,
        failpoints=Failpoints(),
    )
