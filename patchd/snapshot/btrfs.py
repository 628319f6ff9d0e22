"""Snapshots of a btrfs root, and live rollback from them.

``BtrfsSnapshotter`` implements the ``Snapshotter`` port with read-only
btrfs snapshots (python3-btrfsutil) kept in ``snapshot_dir`` on the same
filesystem as ``root``.

Live rollback without a reboot, which also works for the booted ``/`` (so no
subvolume swap; that is a separate, explicit admin action):

1. keep the broken state as ``<tx>-failed`` for diagnosis (once);
2. take a read-only work snapshot of the live root;
3. ``btrfs send --no-data -p PRE WORK`` names the paths that differ;
4. restore.py makes those paths of the live root equal to PRE;
5. delete the work snapshot, commit.
6. wait until the btrfs cleaner has freed the deleted work snapshots; then
   keep ``<tx>-failed`` only if the filesystem still has ``min_free_fraction``
   of its space free (default ``MIN_FREE_FRACTION``), else delete it (and
   wait for that too), logging why.

Steps 2-5 are repeated until a pass finds nothing left to change (at most
``MAX_PASSES``): the second pass proves the first converged, and also catches
files a running service wrote meanwhile. Every step can be killed and the
whole ``restore`` re-run: the diff is always recomputed from the live root.

Why step 6: the failed snapshot holds every block the failed transaction
wrote. When the disk filled during apply, those are the blocks that filled
it, so keeping it would leave the restored root without space (measured: a
postinst filling a 1 GiB filesystem left 0 bytes free after a successful
rollback). Diagnosis is worth less than a working system, so it goes.
The restore itself needs next to no data space (files are reflinked), so the
snapshot can stay while restoring and is judged by what is free afterwards.
Freed blocks count only once the cleaner has dropped the deleted snapshot
and a commit followed, hence the wait: a rollback returns with its space
back, and the next transaction's free-space check sees it.

Rules:
- ``exclude`` paths (patchd's own journal) and ``snapshot_dir`` are never
  restored, so a rollback can't roll back the record of itself.
- btrfsutil and OS errors become ``SnapshotFailed`` / ``RollbackFailed``
  with the cause chained.
"""

import ctypes
import errno
import fcntl
import logging
import os
import struct
import subprocess
import time
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import btrfsutil

from patchd.core import errors, names
from patchd.core.model import SnapshotRef
from patchd.core.ports import Progress, Snapshotter, no_progress
from patchd.snapshot import restore as restore_mod
from patchd.snapshot import sendstream

__all__ = ["BtrfsSnapshotter", "inode_paths"]

log = logging.getLogger(__name__)

KIND = "btrfs"
WORK_NAME = ".patchd-restore-work"
MAX_PASSES = 3
# After a rollback the failed-state snapshot is kept only if at least this
# fraction of the filesystem is free (step 6 above).
MIN_FREE_FRACTION = 0.10
# How long a rollback waits for the btrfs cleaner to free deleted snapshots.
CLEANER_TIMEOUT_S = 60.0

# BTRFS_IOC_INO_PATHS = _IOWR(0x94, 35, struct btrfs_ioctl_ino_path_args),
# include/uapi/linux/btrfs.h; the args are inum, size, reserved[4], fspath.
BTRFS_IOC_INO_PATHS = 0xC0389423
_INO_PATH_ARGS = struct.Struct("=QQ4QQ")
_DATA_CONTAINER = struct.Struct("=IIII")


def inode_paths(fd: int, ino: int) -> List[str]:
    """All paths of inode ``ino`` in the subvolume of ``fd``, relative to it."""
    size = 64 * 1024
    while True:
        buf = ctypes.create_string_buffer(size)
        args = bytearray(_INO_PATH_ARGS.pack(ino, size, 0, 0, 0, 0, ctypes.addressof(buf)))
        fcntl.ioctl(fd, BTRFS_IOC_INO_PATHS, args, True)
        raw = buf.raw
        _left, _missing, count, missed = _DATA_CONTAINER.unpack_from(raw)
        if missed and size < 16 * 1024 * 1024:
            size *= 4
            continue
        # val[i] are offsets from val[0] to NUL-terminated paths.
        base = _DATA_CONTAINER.size
        offsets = struct.unpack_from("={}Q".format(count), raw, base)
        return [os.fsdecode(raw[base + off:raw.index(b"\0", base + off)]) for off in offsets]


class BtrfsSnapshotter(Snapshotter):
    """Read-only snapshots of ``root`` in ``snapshot_dir``; live rollback."""

    def __init__(self, root: str, snapshot_dir: str, exclude: Sequence[str] = (),
                 min_free_fraction: float = MIN_FREE_FRACTION):
        if not 0.0 <= min_free_fraction <= 1.0:
            raise ValueError("min_free_fraction must be within 0..1, not {}".format(
                min_free_fraction))
        self.min_free_fraction = min_free_fraction
        self.root = os.path.abspath(root)
        self.snapshot_dir = os.path.abspath(snapshot_dir)
        try:
            btrfsutil.subvolume_id(self.root)
        except btrfsutil.BtrfsUtilError as e:
            raise errors.SnapshotFailed(
                "{} is not on a btrfs filesystem ({})".format(self.root, e)) from e
        if not btrfsutil.is_subvolume(self.root):
            raise errors.SnapshotFailed(
                "{} is a directory on btrfs, not a subvolume; only a subvolume "
                "can be snapshotted".format(self.root))
        try:
            os.makedirs(self.snapshot_dir, exist_ok=True)
        except OSError as e:
            raise errors.SnapshotFailed("cannot create snapshot directory {}: {}".format(
                self.snapshot_dir, e)) from e
        skip = [restore_mod.clean_path(p) for p in exclude]
        inside = os.path.relpath(self.snapshot_dir, self.root)
        if not inside.startswith(".."):
            # Snapshots stored inside the root are not part of what is restored.
            skip.append(restore_mod.clean_path(inside))
        self.exclude = tuple(sorted(set(p for p in skip if p)))

    # -- Snapshotter ------------------------------------------------------

    def take(self, ref: SnapshotRef) -> SnapshotRef:
        dest = self._path(ref.name)
        try:
            # No sync before: the snapshot ioctl itself flushes the subvolume's
            # dirty data (btrfs_start_delalloc_snapshot) and creates the
            # snapshot in a transaction commit, so everything written to the
            # root before this call is in it. A full sync first only doubled
            # the flush (measured: 85 ms -> 29 ms median step, bench/). The
            # sync after makes sure the commit is on disk before the journal
            # says the snapshot exists.
            self._drop(dest)       # a stale one from before a crash
            btrfsutil.create_snapshot(self.root, dest, read_only=True)
            btrfsutil.sync(self.root)
        except (btrfsutil.BtrfsUtilError, OSError) as e:
            raise errors.SnapshotFailed("cannot snapshot {} to {}: {}".format(
                self.root, dest, e)) from e
        log.info("snapshot %s taken of %s", dest, self.root)
        return SnapshotRef(ref.name, KIND, dest)

    def restore(self, ref: SnapshotRef, progress: Progress = no_progress) -> None:
        pre = self._path(ref.name)
        if not self._is_snapshot(pre):
            raise errors.RollbackFailed("snapshot {} does not exist; the root was not "
                                        "changed by the rollback".format(pre))
        try:
            progress(0.0, "keeping the failed state")
            failed = self._keep_failed(ref.name)
            dropped = []   # type: List[Optional[int]]
            # Pass i reports within bounds[i]..bounds[i + 1], so fractions only grow.
            bounds = (0.05, 0.80, 0.95, 0.99)
            for i in range(MAX_PASSES):
                changed = self._pass(pre, _scaled(progress, bounds[i], bounds[i + 1]),
                                     dropped)
                if not changed:
                    break
                if i:
                    # The first pass should have left nothing to do: whatever
                    # the next finds was written meanwhile by something live.
                    log.warning("changed again during rollback of %s: %s", self.root,
                                ", ".join(changed[:20]))
            else:
                raise errors.RollbackFailed(
                    "{} still differs from {} after {} passes; these keep changing: {}"
                    .format(self.root, pre, MAX_PASSES, ", ".join(changed[:10])),
                    hint="Stop the service writing there, or exclude its data from "
                    "rollback, then retry the rollback.")
            self._wait_cleaned(dropped)
            if failed is not None:
                self._keep_failed_only_with_room(failed)
            btrfsutil.sync(self.root)
        except (btrfsutil.BtrfsUtilError, OSError, ValueError) as e:
            raise errors.RollbackFailed("rollback of {} to {} failed: {}".format(
                self.root, pre, e)) from e
        progress(1.0, "restored")
        log.info("root %s restored from %s", self.root, pre)

    def list(self) -> List[SnapshotRef]:
        found = []
        try:
            entries = sorted(os.listdir(self.snapshot_dir))
        except FileNotFoundError:
            return []
        for name in entries:
            path = os.path.join(self.snapshot_dir, name)
            if names.parse_snapshot_name(name) is None or not self._is_snapshot(path):
                continue
            info = btrfsutil.subvolume_info(path)
            found.append(((info.otime, info.otransid, name), SnapshotRef(name, KIND, path)))
        return [ref for _key, ref in sorted(found, key=lambda item: item[0])]

    def delete(self, ref: SnapshotRef) -> None:
        path = self._path(ref.name)
        try:
            self._drop(path)
        except (btrfsutil.BtrfsUtilError, OSError) as e:
            raise errors.SnapshotFailed("cannot delete snapshot {}: {}".format(path, e),
                                        hint="Delete it with 'btrfs subvolume delete'.") from e

    def prune(self, keep: int, protect: Iterable[str] = ()) -> List[SnapshotRef]:
        if keep < 0:
            raise ValueError("keep must be >= 0, not {}".format(keep))
        groups = {}  # type: Dict[str, List[SnapshotRef]]
        order = []   # tx ids, oldest first by their first snapshot ("pre"): a
        # late "failed" snapshot must not make an old transaction look new.
        for ref in self.list():
            tx = names.parse_snapshot_name(ref.name)[0]
            if tx not in groups:
                order.append(tx)
            groups.setdefault(tx, []).append(ref)
        kept = set(order[len(order) - keep:] if keep else ()) | set(protect)
        deleted = []
        for tx in order:
            if tx not in kept:
                for ref in groups[tx]:
                    self.delete(ref)
                    deleted.append(ref)
        return deleted

    # -- helpers ----------------------------------------------------------

    def _path(self, name: str) -> str:
        if not name or "/" in name or name in (".", "..", WORK_NAME):
            raise ValueError("bad snapshot name {!r}".format(name))
        return os.path.join(self.snapshot_dir, name)

    @staticmethod
    def _is_snapshot(path: str) -> bool:
        try:
            return btrfsutil.is_subvolume(path)
        except btrfsutil.BtrfsUtilError as e:
            if e.errno == errno.ENOENT:
                return False
            raise

    def _drop(self, path: str) -> Optional[int]:
        """Delete the subvolume at ``path``; its id, or None if there was none."""
        try:
            subvolume = btrfsutil.subvolume_id(path)
            btrfsutil.delete_subvolume(path)
        except btrfsutil.BtrfsUtilError as e:
            if e.errno != errno.ENOENT:
                raise
            return None
        return subvolume

    def _keep_failed(self, pre_name: str) -> Optional[str]:
        """Snapshot the broken state once; its path, or None if not named."""
        parsed = names.parse_snapshot_name(pre_name)
        if parsed is None:
            return None
        failed = names.snapshot_name(parsed[0], names.SNAPSHOT_FAILED)
        if failed == pre_name:
            return None
        path = os.path.join(self.snapshot_dir, failed)
        # Only once: a re-run after a crash must keep the original broken
        # state, not a half-restored one. (A crash after step 6 deleted it
        # but before the journal's final record makes the re-run keep the
        # restored state under this name; it shares all its blocks.)
        if not self._is_snapshot(path):
            btrfsutil.create_snapshot(self.root, path, read_only=True)
        return path

    def _keep_failed_only_with_room(self, failed: str) -> None:
        """Delete the failed-state snapshot if too little of the filesystem is free."""
        if not self._is_snapshot(failed):
            return
        st = os.statvfs(self.root)
        free = float(st.f_bavail) / st.f_blocks if st.f_blocks else 0.0
        if free >= self.min_free_fraction:
            return
        log.warning("not keeping the failed state %s: only %.1f%% (%d MiB) of %s is free, "
                    "less than %.1f%%, and the snapshot holds the blocks the failed "
                    "transaction wrote", failed, free * 100,
                    (st.f_bavail * st.f_frsize) >> 20, self.root,
                    self.min_free_fraction * 100)
        self._wait_cleaned([self._drop(failed)])

    def _wait_cleaned(self, subvolumes: Iterable[Optional[int]]) -> None:
        """Wait until the cleaner has freed these deleted subvolumes, then
        commit, so their blocks count as free (bounded by CLEANER_TIMEOUT_S)."""
        waiting = set(s for s in subvolumes if s is not None)
        if not waiting:
            return
        btrfsutil.sync(self.root)   # the commit wakes the cleaner
        deadline = time.monotonic() + CLEANER_TIMEOUT_S
        while waiting.intersection(btrfsutil.deleted_subvolumes(self.root)):
            if time.monotonic() > deadline:
                log.warning("the btrfs cleaner has not freed deleted snapshots %s of %s "
                            "after %.0f s; their space comes back later",
                            sorted(waiting), self.root, CLEANER_TIMEOUT_S)
                return
            time.sleep(0.01)
        btrfsutil.sync(self.root)   # freed extents are free once committed

    def _pass(self, pre: str, progress: Progress,
              dropped: List[Optional[int]]) -> Tuple[str, ...]:
        """One diff-and-restore pass; returns the entries that had to change.
        The ids of the work snapshots it deleted are added to ``dropped``."""
        work = os.path.join(self.snapshot_dir, WORK_NAME)
        dropped.append(self._drop(work))
        btrfsutil.create_snapshot(self.root, work, read_only=True)
        try:
            paths = sendstream.changed_paths(self._send(pre, work))
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

            def other_names(ino: int) -> List[str]:
                try:
                    return inode_paths(root_fd, ino)
                except OSError as e:
                    # Only an optimisation: the next pass finds any name missed.
                    log.warning("cannot list the names of inode %d: %s", ino, e)
                    return []
            try:
                result = restore_mod.restore_paths(
                    pre, self.root, paths, self.exclude, progress, inode_paths=other_names)
            finally:
                os.close(root_fd)
        finally:
            dropped.append(self._drop(work))
        log.info("restore pass over %s: %d paths named, %d entries changed",
                 self.root, result.paths, len(result.changed))
        return result.changed

    @staticmethod
    def _send(parent: str, snapshot: str) -> bytes:
        proc = subprocess.run(
            ["btrfs", "send", "--no-data", "-q", "-p", parent, snapshot],
            capture_output=True, check=False)
        if proc.returncode != 0:
            raise OSError(errno.EIO, "btrfs send failed (exit {}): {}".format(
                proc.returncode, proc.stderr.decode(errors="replace").strip()))
        return proc.stdout


def _scaled(progress: Progress, low: float, high: float) -> Callable[[float, str], None]:
    def report(fraction: float, message: str) -> None:
        progress(low + (high - low) * fraction, message)
    return report
