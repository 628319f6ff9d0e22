"""The disk fills during apply, and the rollback loses nothing, on both families.

``demo-fill``'s postinst (rpm: %post) writes zeros to /var/tmp/demo-fill
until the disk is full and so fails with ENOSPC. Its declared size is tiny,
so patchd's up-front free-space check passes and the disk fills *during*
apply, which is what fleets see when a maintainer script or an unpack runs
out of space. The endpoint lives alone on a small btrfs
(``Lab.small_endpoint``), so filling it takes a fraction of a second.

Nothing lost: the demo packages and every file of the root are as before,
the native audit is clean, and the filesystem has its space back: the
failed-state snapshot, which would hold the blocks that filled the disk, is
not kept (``patchd/snapshot/btrfs.py``, step 6). Nothing leaked: a normal
transaction succeeds on the same endpoint right afterwards.

On rpm, libdnf writes its history through a memory map at the end of the
transaction; on a full disk that faults with SIGBUS. The dnf backend runs
the transaction in a child process for that reason, and recovery holds
rpm's lock alone when dnf's pid file cannot be written: this test is what
found both.
"""

import os

import pytest

from tests.lab.endpoint import changed_paths
from tests.lab.fingerprint import tree_fingerprint

pytestmark = pytest.mark.integration

MiB = 1 << 20
# The deb baseline root takes 167 MiB of data on a fresh btrfs, the rpm one
# 3 MiB. 512 MiB leaves the deb endpoint 270 MiB free (filled in ~0.6 s),
# well above patchd's 64 MiB margin, with separate data and metadata chunks
# (not "mixed"), as on the fleet's root filesystems.
SIZE = "512M"

@pytest.fixture
def small_endpoint(lab):
    with lab.small_endpoint(SIZE) as endpoint:
        yield endpoint


def free_bytes(path) -> int:
    st = os.statvfs(str(path))
    return st.f_bavail * st.f_frsize


def test_disk_filling_during_apply_rolls_back_with_nothing_lost(small_endpoint):
    endpoint = small_endpoint
    # apt rewrites its binary caches (var/cache/apt/*.bin, 3.4 MiB) on its
    # first run in a root at a new path, before the snapshot is taken: run
    # it once first, so that only the transaction's own space is measured.
    code, plan, _ = endpoint.patchd_json("plan", "install", "demo-fill")
    assert code == 0, plan
    before = tree_fingerprint(endpoint.root)
    free_before = free_bytes(endpoint.root)
    assert free_before > 128 * MiB   # the up-front check (needs 64 MiB) passes

    code, tx, stderr = endpoint.patchd_json("install", "demo-fill")
    assert code == 2, (code, tx, stderr[-3000:])
    assert tx["state"] == "rolled_back"
    # deb: dd fails with ENOSPC, so the postinst fails (script-failed); dpkg
    # then also fails to write its status database ("failed to write status
    # database stanza ... No space left on device", exit 2), but the first
    # error, the script's, is the one reported.
    assert tx["error"]["code"] == "script-failed"
    words = {"deb": "demo-fill package post-installation script",
             "rpm": "POSTIN scriptlet"}[endpoint.family.name]
    assert words in tx["error"]["message"]
    # The disk really filled: the writer says so (dpkg passes scripts'
    # output to the transaction log), and the rollback found it full.
    log = (endpoint.state_dir / "logs" / (tx["id"] + ".log")).read_text()
    assert "No space left on device" in log + stderr
    assert "not keeping the failed state" in stderr

    assert endpoint.demo_versions() == endpoint.expected()
    assert endpoint.audit() == ""
    assert changed_paths(before, tree_fingerprint(endpoint.root)) == []
    assert endpoint.differs_from_snapshot(tx) == []
    # The failed state held the blocks that filled the disk: not kept.
    assert endpoint.snapshots() == [tx["snapshot"]["name"]]
    # The space is back as soon as patchd returns (measured: to the KiB).
    assert abs(free_bytes(endpoint.root) - free_before) < 4 * MiB, (
        free_before, free_bytes(endpoint.root))

    code, tx, _ = endpoint.patchd_json("install", "demo-app=1.1")
    assert code == 0, tx
    assert tx["state"] == "done"
    assert endpoint.demo_versions() == endpoint.expected(demo_app="1.1")
    assert endpoint.audit() == ""
