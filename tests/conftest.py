"""Shared pytest fixtures for patchd: the integration lab.

Fixtures (each skips the test when its tools are missing; the btrfs ones
also need root and python3-btrfsutil):

* ``lab_dir``        session  -- world-readable scratch dir (images, repos).
* ``lab_btrfs``      session  -- a mounted ``LoopBtrfs`` (4 GB sparse image).
* ``template_root``  session  -- Path of the read-only ``@template`` root.
* ``managed_root``   function -- ``ManagedRoot``: ``.root`` (fresh writable
                                clone at <mnt>/roots/<id>), ``.snapshot_dir``
                                (<mnt>/snapshots/<id>), ``.state_dir`` (outside
                                root and btrfs), ``.mountpoint``; all removed
                                afterwards.
* ``catalog_debs``   session  -- {(name, version): .deb Path} of the catalogue.
* ``gpg_key``        session  -- a ``GpgKey`` (Ed25519, private GNUPGHOME).

Rules:
* An autouse session guard fails the run if any mount or loop device below
  ``lab_dir`` or pytest's basetemp survives teardown: a leak would break
  the next run on the same machine.
* Run with /usr/bin/python3 (Debian's python3-btrfsutil and python3-apt).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Iterator

import pytest

from tests.lab import btrfs as lab_btrfs_mod
from tests.lab.aptrepo import GpgKey
from tests.lab.catalog import build_catalog
from tests.lab.roots import clone_root, prepare_template


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: needs root, loop devices, btrfs, dpkg and apt-utils")


def _unavailable(reason: str) -> None:
    """Skip where the lab cannot run (an unprivileged unit run), but fail
    under ``make test`` (PATCHD_REQUIRE_LAB=1): there a missing lab is a
    broken set-up, and skipped integration tests would pass for nothing."""
    if os.environ.get("PATCHD_REQUIRE_LAB") == "1":
        pytest.fail("lab unavailable: " + reason)
    pytest.skip(reason)


def _require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        _unavailable("lab tools missing: " + ", ".join(missing))


def _require_lab() -> None:
    if os.geteuid() != 0:
        _unavailable("lab needs root (loop devices, mount, chroot)")
    _require_tools("mkfs.btrfs", "mount", "losetup", "tar")
    try:
        import btrfsutil  # noqa: F401
    except ImportError:
        _unavailable("python3-btrfsutil missing: run with /usr/bin/python3")


@pytest.fixture(scope="session")
def lab_dir():
    """World-readable scratch directory for images, repositories and keys.

    Not pytest's basetemp: that is 0700, and apt drops privileges to the
    _apt user to download (copy:) and to verify signatures (gpgv), so repos,
    keyrings and roots must be readable by _apt, as they are in production.
    """
    path = pathlib.Path(tempfile.mkdtemp(prefix="patchd-lab-"))
    path.chmod(0o755)
    yield path
    # Never rmtree across a leaked mount: it would delete through it.  The
    # guard below reports the leak instead.
    if not lab_btrfs_mod.mounts_below(path):
        shutil.rmtree(str(path), ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _lab_leak_guard(tmp_path_factory, lab_dir):
    """At session end: no mount and no loop device below the lab directories.

    The lab directories are ``lab_dir`` and pytest's basetemp (tests may
    make their own LoopBtrfs in ``tmp_path``).
    """
    yield
    prefixes = [str(p.resolve()).rstrip("/") + "/"
                for p in (tmp_path_factory.getbasetemp(), lab_dir)]
    mounts = [m for m in lab_btrfs_mod.mount_points()
              if any(m.startswith(prefix) for prefix in prefixes)]
    loops = [dev for prefix in prefixes for dev in _loops_below(prefix)]
    assert not (mounts or loops), "lab leaked mounts %s and loop devices %s" % (
        mounts, sorted(set(loops)))


def _loops_below(prefix: str):
    # sysfs, not the image files: a leaked loop may back an image that is
    # already deleted (shown as "<path> (deleted)").
    found = []
    for backing in pathlib.Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().startswith(prefix):
                found.append("/dev/" + backing.parts[3])
        except OSError:
            continue
    return found


# The host's own package state: tests manage lab roots only (the project's
# second non-negotiable). Any change here during the run fails it.
HOST_PACKAGE_STATE = ("/var/lib/dpkg/status", "/var/lib/dpkg/updates", "/var/lib/rpm",
                      "/var/lib/dnf", "/var/cache/dnf", "/root/.rpmdb",
                      "/var/log/hawkey.log", "/var/log/dnf.log", "/var/log/dnf.rpm.log")


def _host_state():
    state = {}
    for top in HOST_PACKAGE_STATE:
        paths = [top]
        if os.path.isdir(top):
            paths += [os.path.join(d, f) for d, _dirs, files in os.walk(top) for f in files]
        for path in paths:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            state[path] = (st.st_size, st.st_mtime_ns) if not os.path.isdir(path) else "dir"
    return state


@pytest.fixture(scope="session", autouse=True)
def _host_package_state_guard():
    before = _host_state()
    yield
    after = _host_state()
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, "tests changed the host's package state: %s" % changed


@pytest.fixture(scope="session")
def lab_btrfs(lab_dir, _lab_leak_guard):
    # Depending on the guard explicitly is what orders teardown: pytest does
    # not reliably tear autouse session fixtures down last.
    _require_lab()
    with lab_btrfs_mod.LoopBtrfs(lab_dir, size="4G") as fs:
        yield fs


@pytest.fixture(scope="session")
def template_root(lab_btrfs) -> pathlib.Path:
    return prepare_template(lab_btrfs.mountpoint)


@dataclasses.dataclass
class ManagedRoot:
    """One test's root: clone, snapshot area and out-of-root state dir."""

    root: pathlib.Path
    snapshot_dir: pathlib.Path
    state_dir: pathlib.Path
    mountpoint: pathlib.Path


@pytest.fixture
def managed_root(lab_dir, lab_btrfs, template_root) -> Iterator[ManagedRoot]:
    unique = uuid.uuid4().hex[:12]
    mnt = pathlib.Path(lab_btrfs.mountpoint)
    root = clone_root(template_root, mnt / "roots" / unique)
    snapshots = mnt / "snapshots" / unique
    snapshots.mkdir(parents=True)
    # Outside the root and outside the btrfs, readable by _apt (keyrings).
    state = lab_dir / "state" / unique
    state.mkdir(parents=True, mode=0o755)
    try:
        yield ManagedRoot(root=root, snapshot_dir=snapshots, state_dir=state, mountpoint=mnt)
    finally:
        # remove_tree unmounts anything a test left mounted (e.g. /proc)
        # and deletes subvolumes, including read-only snapshots.
        lab_btrfs_mod.remove_tree(root)
        lab_btrfs_mod.remove_tree(snapshots)
        lab_btrfs_mod.remove_tree(state)


@pytest.fixture(scope="session")
def catalog_debs(lab_dir):
    _require_tools("dpkg-deb")
    return build_catalog(lab_dir / "catalog")


@pytest.fixture(scope="session")
def gpg_key():
    _require_tools("gpg", "gpgconf")
    with GpgKey() as key:
        yield key
