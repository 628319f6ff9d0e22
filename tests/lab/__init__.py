"""Test lab for patchd: real packages, repositories, roots and btrfs.

The lab builds everything a package transaction needs from real tools,
never mocks:

* ``debs``        -- build .deb files from a small ``DebSpec`` (dpkg-deb).
* ``catalog``     -- the standard demo packages used by tests, demo and bench.
* ``aptrepo``     -- flat apt repositories, optionally signed (apt-ftparchive, gpg).
* ``btrfs``       -- a loop-mounted btrfs filesystem that never leaks mounts.
* ``roots``       -- a cached mmdebstrap tarball, a prepared template
                     subvolume and writable snapshot clones of it.
* ``fingerprint`` -- whole-tree fingerprints to prove what changed (or not).
* ``rpms``        -- the same ``DebSpec`` built as .rpm (rpmbuild), and
                     ``lab-base`` (busybox as /bin/sh for empty roots).
* ``rpmrepo``     -- rpm-md repositories, optionally signed (rpmsign, createrepo_c).
* ``rpmroots``    -- openEuler-like rpm template subvolume, HOME with the
                     ``%_dbpath`` fix, and the dnf CLI confined to a root.

Rules: everything needs root, btrfs, loop devices, dpkg and apt-utils
(Debian 12); the rpm family also rpm, rpmbuild, rpmsign, createrepo_c, dnf
and busybox-static.  Run with /usr/bin/python3 so python3-btrfsutil is importable.
Code stays Python 3.7 compatible because the fleet runs 3.7.
"""
