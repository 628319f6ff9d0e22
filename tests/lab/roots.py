"""Managed Debian roots: cached base tarball, template subvolume, clones.

* ``base_tarball()``     -- the mmdebstrap ``--variant=apt`` bookworm tarball,
                            built once into /var/tmp/patchd-lab and reused.
* ``prepare_template()`` -- extract it into ``<mnt>/@template`` and make it a
                            quiet, repository-free managed root (read-only).
* ``clone_root()``       -- writable btrfs snapshot of the template (ms).
* ``set_sources()``      -- the root's only apt source list.
* ``write_apt_config()`` -- an APT_CONFIG file that confines apt to a root.

Rules:
* The tarball is built atomically (temp name, then rename) under a file
  lock, so parallel test runs never see or build half a tarball.
* The template is made read-only so no test can change what later clones
  start from; clones are writable snapshots.
* Host apt configuration must never leak into a root: see
  ``write_apt_config`` for why ``APT_CONFIG=/dev/null`` is not enough.
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
import subprocess
from typing import Iterable

from tests.lab.btrfs import make_subvolume

CACHE_DIR = pathlib.Path(os.environ.get("PATCHD_LAB_CACHE", "/var/tmp/patchd-lab"))
TARBALL_NAME = "base-apt.tar"
SUITE = "bookworm"


def base_tarball(cache_dir=None) -> pathlib.Path:
    """Path of the cached base tarball, building it (about 20 s) if missing."""
    cache = pathlib.Path(cache_dir) if cache_dir is not None else CACHE_DIR
    target = cache / TARBALL_NAME
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(str(cache / (TARBALL_NAME + ".lock")), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if target.is_file():  # another builder finished while we waited
            return target
        # mmdebstrap picks the output format from the extension: keep .tar.
        tmp = cache / ("%s.%d.tmp.tar" % (TARBALL_NAME[:-4], os.getpid()))
        try:
            subprocess.run(["mmdebstrap", "--quiet", "--variant=apt", SUITE, str(tmp)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            os.replace(str(tmp), str(target))
        finally:
            if tmp.exists():
                tmp.unlink()
    return target


def prepare_template(mountpoint, tarball=None) -> pathlib.Path:
    """Create ``<mountpoint>/@template`` as a read-only managed Debian root."""
    import btrfsutil

    template = pathlib.Path(mountpoint) / "@template"
    if os.path.lexists(str(template)):
        raise FileExistsError(str(template))
    tarball = pathlib.Path(tarball) if tarball is not None else base_tarball()
    make_subvolume(template)
    # --numeric-owner: the host's passwd must not remap the root's owners
    # (e.g. _apt).  -p keeps modes; --xattrs keeps file capabilities.
    subprocess.run(["tar", "-x", "--numeric-owner", "-p", "--xattrs",
                    "--xattrs-include=*", "-f", str(tarball), "-C", str(template)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # Maintainer scripts must never start services inside a managed root.
    policy = template / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# patchd lab: never start services in this root\nexit 101\n")
    policy.chmod(0o755)

    # No repositories by default: each test says exactly what apt may see.
    apt = template / "etc/apt"
    (apt / "sources.list").write_text("")
    parts = apt / "sources.list.d"
    if parts.exists():
        shutil.rmtree(str(parts))
    parts.mkdir(mode=0o755)

    # Drop the downloaded Debian indexes (and caches built from them) so
    # apt in a clone only knows the lab repositories.
    lists = template / "var/lib/apt/lists"
    partial = lists / "partial"
    entries = list(lists.iterdir()) + (list(partial.iterdir()) if partial.is_dir() else [])
    for entry in entries:
        # Keep "lock" and the "partial" dir itself (owned by _apt, 0700).
        if entry.name == "lock" or entry == partial:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(str(entry))
        else:
            entry.unlink()
    for cache in (template / "var/cache/apt").glob("*.bin"):
        cache.unlink()

    log = template / "var/log/lab-postinst.log"
    if log.exists():
        log.unlink()

    btrfsutil.set_subvolume_read_only(str(template), True)
    return template


def clone_root(template, dest) -> pathlib.Path:
    """Writable snapshot of ``template`` at ``dest`` (parents created)."""
    import btrfsutil

    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    btrfsutil.create_snapshot(str(template), str(dest), read_only=False)
    return dest


def set_sources(root, lines: Iterable[str]) -> pathlib.Path:
    """Write ``etc/apt/sources.list.d/lab.list`` in ``root``."""
    lines = list(lines)
    if isinstance(lines, str) or any("\n" in line for line in lines):
        raise ValueError("pass a sequence of single-line sources")
    path = pathlib.Path(root) / "etc/apt/sources.list.d/lab.list"
    path.write_text("".join(line + "\n" for line in lines))
    path.chmod(0o644)
    return path


def write_apt_config(root, path) -> pathlib.Path:
    """Write an APT_CONFIG file that confines apt-get/python-apt to ``root``.

    ``APT_CONFIG=/dev/null`` is *not* enough on Debian 12: apt only reads
    APT_CONFIG if it is a regular file ("W: Unable to read /dev/null"), and
    it reads the host's /etc/apt/apt.conf.d before any ``-o Dir=`` option is
    applied, so host hooks (PackageKit's DPkg::Post-Invoke, docker-clean)
    leak in.  Setting ``Dir`` in the APT_CONFIG file itself makes apt read
    ``<root>/etc/apt/apt.conf.d`` instead.  dpkg runs chrooted into the root.
    """
    root = str(pathlib.Path(root).resolve()).rstrip("/") + "/"
    if '"' in root or any(ch.isspace() for ch in root):
        raise ValueError("unsupported characters in root path: %r" % root)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('Dir "%s";\nDPkg::Chroot-Directory "%s";\n' % (root, root))
    return path
