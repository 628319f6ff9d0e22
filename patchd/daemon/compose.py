"""Wiring: choose and build the adapters for one managed root.

Rules:
- The backend is chosen by probing the root for a package database (dpkg
  status: apt; rpm database: dnf), never by the distribution's name.
- patchd's own state never rolls back: when the state directory lies inside
  the root, it is excluded from snapshot restores; so are the package
  manager's lock files, which the runner holds during the rollback.
- On the booted ``/``, users' and services' data is not package state and is
  never rolled back with it (``LIVE_ROOT_EXCLUDE``): losing a user's file or
  the log of the failure itself to a rollback would be worse than the failed
  update. Managed roots (tests, containers) are restored whole.
"""

import os
from dataclasses import dataclass
from typing import List, Optional

from patchd.core import errors, names
from patchd.core.model import Family
from patchd.daemon.failpoints import Failpoints
from patchd.daemon.runner import ProgressListener, StateListener, TransactionRunner

# rpm 4.16+ keeps an sqlite database; older releases (openEuler 20.03,
# Kylin Server V10) a Berkeley DB ``Packages`` file.
RPM_DATABASES = ("var/lib/rpm/rpmdb.sqlite", "var/lib/rpm/Packages", "usr/lib/sysimage/rpm")
LIVE_ROOT_EXCLUDE = ("home", "root", "srv", "tmp", "var/tmp", "var/log", "var/spool",
                     "var/mail", "var/crash", "mnt", "media")


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


def detect_family(root: str) -> Family:
    """The package family of ``root``, from the package database it has."""
    if os.path.exists(os.path.join(root, "var/lib/dpkg/status")):
        return Family.DEB
    if any(os.path.exists(os.path.join(root, db)) for db in RPM_DATABASES):
        return Family.RPM
    raise errors.InvalidRequest(
        "{} has neither a dpkg nor an rpm database; patchd manages apt/dpkg and "
        "dnf/rpm systems".format(root))


def build_backend(config: Config):
    root = os.path.realpath(config.root)
    if detect_family(root) is Family.DEB:
        from patchd.backends.apt import AptBackend
        return AptBackend(root, config.state_dir, config.lock_timeout)
    from patchd.backends.dnf import DnfBackend
    return DnfBackend(root, config.state_dir, config.lock_timeout)


def build_journal(config: Config):
    from patchd.store.journal import SqliteJournal
    return SqliteJournal(config.journal_path)


def restore_exclusions(root: str, state_dir: str, lock_files=()) -> List[str]:
    """Paths (relative to ``root``) a rollback must leave as they are."""
    root = os.path.realpath(root)
    state = os.path.realpath(state_dir)
    exclude = list(LIVE_ROOT_EXCLUDE) if root == "/" else []
    exclude.extend(lock_files)
    if state.startswith(root.rstrip("/") + "/"):
        exclude.append(os.path.relpath(state, root))
    return exclude


def build_snapshotter(config: Config, lock_files=()):
    from patchd.snapshot.btrfs import BtrfsSnapshotter
    return BtrfsSnapshotter(
        os.path.realpath(config.root), config.snapshot_dir,
        exclude=restore_exclusions(config.root, config.state_dir, lock_files))


def build_runner(config: Config, journal=None, on_state: Optional[StateListener] = None,
                 on_progress: Optional[ProgressListener] = None) -> TransactionRunner:
    backend = build_backend(config)
    return TransactionRunner(
        backend=backend,
        snapshotter=build_snapshotter(config, backend.lock_files),
        journal=journal if journal is not None else build_journal(config),
        log_dir=config.log_dir,
        snapshot_keep=config.snapshot_keep,
        on_state=on_state,
        on_progress=on_progress,
        failpoints=Failpoints(),
    )
