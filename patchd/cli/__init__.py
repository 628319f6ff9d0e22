"""``patchctl``, the admin CLI: a D-Bus client of the daemon only.

Lands with the D-Bus service; until then ``patchd`` (patchd.daemon.main)
offers the same operations locally to root.
"""
