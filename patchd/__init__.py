"""patchd: one transactional patch daemon for apt- and dnf-based desktops.

The package is layered (see docs/DESIGN.md): ``core`` is sans-IO and imports
nothing else from patchd; adapters (``backends``, ``solver``, ``snapshot``,
``store``) import only ``core``; ``daemon`` is the composition root; ``cli``,
``notify`` and ``bridge`` talk to the daemon over D-Bus only.
"""

__version__ = "0.1.0"
