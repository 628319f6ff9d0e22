"""Rollback on a full disk: the failed-state snapshot must not keep it full.

The failed transaction's data is in the ``<tx>-failed`` snapshot; when that
data is what filled the disk, keeping the snapshot leaves the restored root
without space. ``BtrfsSnapshotter`` keeps it only when at least
``min_free_fraction`` of the filesystem is free after the restore.

The disk is filled with ``posix_fallocate``: preallocated extents count as
used exactly like written ones, and a 1 GiB filesystem fills in
milliseconds instead of seconds.
"""

import errno
import os

import pytest

from patchd.core import names
from patchd.core.model import SnapshotRef
from patchd.snapshot.btrfs import BtrfsSnapshotter

MiB = 1 << 20


def pre_ref():
    return SnapshotRef(names.snapshot_name("tx1", names.SNAPSHOT_PRE))


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path):
    """Allocate ``path`` until the filesystem is full (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        offset, chunk = 0, 64 * MiB
        while chunk >= 4096:
            try:
                os.posix_fallocate(fd, offset, chunk)
                offset += chunk
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)


def full_disk_rollback(btrfs_root, **options):
    """A root, its pre snapshot, a failed transaction that filled the disk
    (a changed file and a fill file), then the rollback."""
    root, snapdir = btrfs_root
    os.makedirs(os.path.join(root, "etc"))
    with open(os.path.join(root, "etc/config"), "w") as f:
        f.write("before\n")
    snap = BtrfsSnapshotter(root, snapdir, **options)
    ref = snap.take(pre_ref())
    free_before = free_bytes(root)
    with open(os.path.join(root, "etc/config"), "w") as f:
        f.write("after\n")
    fill(os.path.join(root, "fill"))
    assert free_bytes(root) < 8 * MiB, "the disk did not fill"
    snap.restore(ref)
    assert sorted(os.listdir(root)) == ["etc"]
    with open(os.path.join(root, "etc/config")) as f:
        assert f.read() == "before\n"
    failed = names.snapshot_name("tx1", names.SNAPSHOT_FAILED)
    return snap, failed, free_before


@pytest.mark.integration
def test_rollback_of_a_full_disk_drops_the_failed_state_and_frees_the_space(btrfs_root):
    snap, failed, free_before = full_disk_rollback(btrfs_root)
    assert [r.name for r in snap.list()] == [pre_ref().name]
    # Back as soon as restore returns: the cleaner has already freed it.
    assert free_bytes(snap.root) > free_before - 4 * MiB


@pytest.mark.integration
def test_a_failed_state_kept_on_a_full_disk_keeps_it_full(btrfs_root):
    """Why the rule exists: with min_free_fraction=0 the snapshot is always
    kept, the restore succeeds, and the space stays taken."""
    snap, failed, free_before = full_disk_rollback(btrfs_root, min_free_fraction=0.0)
    assert failed in [r.name for r in snap.list()]
    assert os.path.getsize(os.path.join(snap.snapshot_dir, failed, "fill")) > 512 * MiB
    assert free_bytes(snap.root) < 8 * MiB


@pytest.mark.integration
def test_failed_state_is_kept_while_the_disk_has_room(btrfs_root):
    root, snapdir = btrfs_root
    snap = BtrfsSnapshotter(root, snapdir)
    ref = snap.take(pre_ref())
    with open(os.path.join(root, "new"), "wb") as f:
        f.write(os.urandom(MiB))
    snap.restore(ref)
    assert os.listdir(root) == []
    failed = names.snapshot_name("tx1", names.SNAPSHOT_FAILED)
    assert {r.name for r in snap.list()} == {pre_ref().name, failed}
    assert os.path.getsize(os.path.join(snapdir, failed, "new")) == MiB


def test_min_free_fraction_must_be_a_fraction():
    with pytest.raises(ValueError, match="min_free_fraction"):
        BtrfsSnapshotter("/nonexistent", "/nonexistent", min_free_fraction=1.5)
