"""Snapshotter adapters: snapshots of the managed root and rollback to them.

``btrfs.BtrfsSnapshotter`` takes read-only btrfs snapshots and rolls a root
back live, file by file (``sendstream`` names what changed, ``restore`` puts
it back, ``fileops`` does the symlink-safe file work).

Rule: this package imports only ``patchd.core``, the standard library and
btrfsutil; the daemon is the only place that names it.
"""
