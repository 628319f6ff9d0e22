"""Package-manager adapters behind ``patchd.core.ports.PackageBackend``.

One module per family: ``apt`` (python-apt, dpkg); ``dnf`` comes next.
"""
