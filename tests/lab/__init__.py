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

Rules: everything needs root, btrfs, loop devices, dpkg and apt-utils
(Debian 12).  Run with /usr/bin/python3 so python3-btrfsutil is importable.
Code stays Python 3.7 compatible because the fleet runs 3.7.
"""
