"""Flat apt repositories and throw-away signing keys for the lab.

``GpgKey`` generates an Ed25519 signing key in a private GNUPGHOME (the
host keyring is never touched) and exports it as a binary keyring usable as
apt ``signed-by=``.  ``AptRepo`` is a flat repository ("deb URI ./"):
Packages and Release from apt-ftparchive, InRelease from ``gpg --clearsign``.

Rules:
* Source lines use the ``copy:`` URI scheme, never ``file:``.  With apt's
  ``DPkg::Chroot-Directory`` dpkg runs chrooted into the managed root, and a
  ``file:`` source makes apt hand dpkg the host path of the .deb, which does
  not exist inside the chroot ("cannot access archive").  ``copy:`` copies
  each .deb into <root>/var/cache/apt/archives first, which is inside.
* apt cannot parse whitespace in a source URI, so such paths are refused.
* ``GpgKey.close()`` (or leaving its ``with`` block) stops the gpg-agent it
  started, so no agent outlives the test session.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Iterable, List, Optional

_UID = "Lab Repo <lab@example.invalid>"


class GpgKey:
    """An Ed25519 signing key living in its own GNUPGHOME."""

    def __init__(self, home=None, uid: str = _UID) -> None:
        # Short default path: gpg-agent's socket path must fit in sun_path
        # (108 bytes) when /run/user/<uid> does not exist.
        self._own_home = home is None
        self.home = pathlib.Path(home or tempfile.mkdtemp(prefix="lab-gpg-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)  # gpg warns about unsafe permissions otherwise
        self.uid = uid
        self._gpg("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "1d")
        self.fingerprint = self._fingerprint()

    def _gpg(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        env = dict(os.environ, GNUPGHOME=str(self.home))
        return subprocess.run(
            ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback"] + list(args),
            check=True, env=env, capture_output=True, **kwargs
        )

    def _fingerprint(self) -> str:
        out = self._gpg("--with-colons", "--list-secret-keys").stdout.decode()
        for line in out.splitlines():
            if line.startswith("fpr:"):
                return line.split(":")[9]
        raise RuntimeError("gpg created no secret key in %s" % self.home)

    def export(self, path) -> pathlib.Path:
        """Write the public key as a binary keyring (apt ``signed-by=``)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Binary, not armored: apt accepts .asc only by file extension,
        # while a binary keyring works under any name.
        self._gpg("--yes", "--output", str(path), "--export", self.fingerprint)
        path.chmod(0o644)  # apt reads it as the _apt sandbox user
        return path

    def clearsign(self, src, dest) -> None:
        self._gpg("--yes", "--local-user", self.fingerprint, "--digest-algo", "SHA512",
                  "--output", str(dest), "--clearsign", str(src))

    def close(self) -> None:
        env = dict(os.environ, GNUPGHOME=str(self.home))
        subprocess.run(["gpgconf", "--kill", "all"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self._own_home:
            shutil.rmtree(str(self.home), ignore_errors=True)

    def __enter__(self) -> GpgKey:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AptRepo:
    """A flat apt repository in ``path`` (created if missing)."""

    def __init__(self, path) -> None:
        self.path = pathlib.Path(path).resolve()
        if any(ch.isspace() for ch in str(self.path)):
            raise ValueError("apt source URIs cannot contain whitespace: %s" % self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def add(self, deb_paths: Iterable) -> List[pathlib.Path]:
        """Copy .debs into the repository; returns the copied paths."""
        copied = []
        for deb in deb_paths:
            deb = pathlib.Path(deb)
            if deb.suffix != ".deb":
                raise ValueError("not a .deb: %s" % deb)
            dest = self.path / deb.name
            shutil.copyfile(str(deb), str(dest))
            dest.chmod(0o644)
            copied.append(dest)
        return copied

    def publish(self, key: Optional[GpgKey] = None) -> None:
        """(Re)write Packages and Release, plus InRelease when ``key`` is given."""
        for stale in ("Packages", "Release", "InRelease", "Release.gpg"):
            # Remove first: apt-ftparchive release would hash an old Release.
            # (Path.unlink(missing_ok=True) is Python 3.8+.)
            try:
                (self.path / stale).unlink()
            except FileNotFoundError:
                pass
        self._write("Packages", ["apt-ftparchive", "packages", "."])
        self._write("Release", ["apt-ftparchive", "release", "."])
        if key is not None:
            key.clearsign(self.path / "Release", self.path / "InRelease")
            (self.path / "InRelease").chmod(0o644)

    def _write(self, name: str, argv: List[str]) -> None:
        # Capture, then write: redirecting into the scanned directory would
        # let apt-ftparchive see its own half-written output.
        out = subprocess.run(argv, cwd=str(self.path), check=True,
                             capture_output=True).stdout
        target = self.path / name
        target.write_bytes(out)
        target.chmod(0o644)

    def source_line(self, keyring=None, trusted: bool = False) -> str:
        """One-line apt source for this repository.

        ``keyring`` pins the signing key (``signed-by=``); ``trusted`` skips
        verification entirely.  Neither gives a plain line, which apt only
        accepts when the repository is signed by a key it already trusts.
        """
        if keyring is not None and trusted:
            # trusted=yes would silently make signed-by meaningless.
            raise ValueError("use either keyring or trusted, not both")
        options = ""
        if keyring is not None:
            keyring = pathlib.Path(keyring).resolve()
            if any(ch.isspace() for ch in str(keyring)):
                raise ValueError("apt options cannot contain whitespace: %s" % keyring)
            options = "[signed-by=%s] " % keyring
        elif trusted:
            options = "[trusted=yes] "
        return "deb %scopy:%s ./" % (options, self.path)
