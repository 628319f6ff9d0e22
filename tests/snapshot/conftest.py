"""Fixtures for the snapshot tests: a private btrfs on a loop device.

Each test gets its own sparse 1 GiB image in tmp_path, attached to a loop
device it finds and detaches itself, so nothing is left mounted or attached
even when a test fails. Needs root, btrfs-progs and python3-btrfsutil;
without them the tests are skipped, not failed.
"""

import os
import shutil
import subprocess
import time

import pytest

IMAGE_SIZE = 1 << 30


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: uses real btrfs on a loop device (root only)")


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root for loop devices and mount"
    for tool in ("mkfs.btrfs", "losetup", "mount", "umount", "btrfs"):
        if shutil.which(tool) is None:
            return "needs {}".format(tool)
    try:
        import btrfsutil  # noqa: F401
    except ImportError:
        return "needs python3-btrfsutil (run with /usr/bin/python3)"
    return ""


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("{} failed: {}".format(" ".join(cmd), proc.stderr.strip()))
    return proc.stdout


def _umount(mnt: str) -> None:
    for attempt in range(5):
        if subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL).returncode == 0:
            return
        time.sleep(0.2 * (attempt + 1))
    # Still busy (a leaked process?): detach it lazily so the loop device
    # can go; the test that leaked will have failed on its own.
    subprocess.run(["umount", "-l", mnt])


@pytest.fixture
def btrfs_mount(tmp_path):
    """Path of a freshly made, mounted btrfs filesystem; removed afterwards."""
    why = _missing()
    if why:
        pytest.skip(why)
    image = str(tmp_path / "btrfs.img")
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(IMAGE_SIZE)
    _run("mkfs.btrfs", "-q", "-f", image)
    device = _run("losetup", "--find", "--show", image).strip()
    try:
        _run("mount", device, mnt)
        try:
            yield mnt
        finally:
            _umount(mnt)
    finally:
        subprocess.run(["losetup", "-d", device])


@pytest.fixture
def btrfs_root(btrfs_mount):
    """(root subvolume, snapshot directory) on the private btrfs."""
    import btrfsutil

    root = os.path.join(btrfs_mount, "@root")
    btrfsutil.create_subvolume(root)
    snapdir = os.path.join(btrfs_mount, "@snapshots")
    os.mkdir(snapdir)
    return root, snapdir
