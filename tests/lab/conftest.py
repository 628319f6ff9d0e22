"""Session fixtures of the rpm lab (the deb ones live in tests/conftest.py).

Fixtures (each skips the test when its tools are missing, or fails under
PATCHD_REQUIRE_LAB=1, exactly like the deb fixtures):

* ``rpm_home``           session  -- HOME with .rpmmacros (``%_dbpath
                                     /var/lib/rpm``); every rpm/dnf process on
                                     a lab rpm root must run with it.
* ``catalog_rpms``       session  -- {(name, version): .rpm Path} of the
                                     catalogue (the same specs as the debs).
* ``lab_base_rpm``       session  -- Path of lab-base-1.0-1.noarch.rpm.
* ``rpm_template_root``  session  -- Path of the read-only ``@rpm-template``.
* ``rpm_repos``          session  -- .repo texts for ``set_repos``: "signed"
                                     (the ``gpg_key``), "unsigned" and
                                     "other-key" (signed by another key);
                                     all trust only ``gpg_key`` (gpgcheck=1).
* ``rpm_managed_root``   function -- ``ManagedRoot`` (the deb lab's type) with
                                     a fresh writable clone of the rpm
                                     template; all removed afterwards.

Rules: new rpm fixtures go here, not into tests/conftest.py; they reuse its
availability checks and its ``lab_dir``/``lab_btrfs``/``gpg_key``.
"""
from __future__ import annotations

import os
import pathlib
import uuid
from typing import Iterator

import pytest

from tests.conftest import ManagedRoot, _require_tools, _unavailable
from tests.lab import btrfs as lab_btrfs_mod
from tests.lab.aptrepo import GpgKey
from tests.lab.catalog import build_rpm_catalog
from tests.lab.roots import clone_root
from tests.lab.rpmrepo import RpmRepo
from tests.lab.rpmroots import prepare_rpm_template
from tests.lab.rpmroots import rpm_home as make_rpm_home
from tests.lab.rpms import BUSYBOX, build_lab_base

_RPM_TOOLS = ("rpm", "rpmbuild", "rpmsign", "createrepo_c", "dnf")


def _require_rpm_lab() -> None:
    _require_tools(*_RPM_TOOLS)
    if not os.path.isfile(BUSYBOX):
        _unavailable("%s missing: install busybox-static" % BUSYBOX)


@pytest.fixture(scope="session")
def rpm_home(lab_dir) -> pathlib.Path:
    return make_rpm_home(lab_dir)


@pytest.fixture(scope="session")
def catalog_rpms(lab_dir):
    _require_rpm_lab()
    return build_rpm_catalog(lab_dir / "rpm-catalog")


@pytest.fixture(scope="session")
def lab_base_rpm(lab_dir) -> pathlib.Path:
    _require_rpm_lab()
    return build_lab_base(lab_dir / "rpm-base")


@pytest.fixture(scope="session")
def rpm_template_root(lab_btrfs, lab_base_rpm, rpm_home) -> pathlib.Path:
    return prepare_rpm_template(lab_btrfs.mountpoint, lab_base_rpm, rpm_home)


@pytest.fixture(scope="session")
def rpm_repos(lab_dir, catalog_rpms, gpg_key):
    base = lab_dir / "rpm-repos"
    signed, unsigned, other = (RpmRepo(base / name) for name in ("signed", "unsigned", "other"))
    for repo in (signed, unsigned, other):
        repo.add(catalog_rpms.values())
    signed.publish(gpg_key)
    unsigned.publish()
    with GpgKey() as other_key:
        other.publish(other_key)
    return {
        "signed": signed.repo_file(),
        "unsigned": unsigned.repo_file(key_path=signed.key_path),
        # Signed, but not by the key this .repo file trusts.
        "other-key": other.repo_file(key_path=signed.key_path),
    }


@pytest.fixture
def rpm_managed_root(lab_dir, lab_btrfs, rpm_template_root) -> Iterator[ManagedRoot]:
    unique = uuid.uuid4().hex[:12]
    mnt = pathlib.Path(lab_btrfs.mountpoint)
    root = clone_root(rpm_template_root, mnt / "rpm-roots" / unique)
    snapshots = mnt / "snapshots" / unique
    snapshots.mkdir(parents=True)
    state = lab_dir / "state" / unique  # outside the root and the btrfs
    state.mkdir(parents=True, mode=0o755)
    try:
        yield ManagedRoot(root=root, snapshot_dir=snapshots, state_dir=state, mountpoint=mnt)
    finally:
        for path in (root, snapshots, state):
            lab_btrfs_mod.remove_tree(path)
