"""rpm-md repositories for the lab, optionally signed with the lab's GpgKey.

``RpmRepo(path)`` collects .rpm files; ``publish(key)`` signs each package
with ``rpmsign`` (when a key is given), writes ``repodata/`` with
``createrepo_c`` and exports the public key, ASCII-armoured, as
``<path>/RPM-GPG-KEY-lab``; ``repo_file()`` gives the yum .repo text.

Rules:
* rpm repositories are signed per package, not per index: dnf's
  ``gpgcheck=1`` checks each package's header signature against keys it
  imports from ``gpgkey=``.  ``repo_gpgcheck`` (signed repomd.xml) stays
  off, as on most real openEuler/Fedora mirrors.
* Only the copies inside the repository are signed, so the same built
  catalogue can also fill an unsigned repository.
* ``rpmsign`` is told ``__gpg /usr/bin/gpg``: Debian's rpm defaults to
  /usr/bin/gpg2, which does not exist ("Could not exec gpg").  The key is
  named by fingerprint, not uid: a keyring may hold several "Lab Repo" keys.
* ``metadata_expire=0`` so a republished repository is re-read by the next
  dnf run (stale metadata otherwise gives "No match for argument").
* Paths with whitespace are refused: ``baseurl`` is a URL and not quoted.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import Iterable, List, Optional

from tests.lab.aptrepo import GpgKey

KEY_NAME = "RPM-GPG-KEY-lab"
# createrepo_c's sqlite databases are only read by yum 3; dnf uses the XML.
# Skipping them saves a third (13 packages: 23 ms against 35 ms).
_CREATEREPO = ("createrepo_c", "--quiet", "--no-database")


def _no_whitespace(path: pathlib.Path) -> pathlib.Path:
    if any(ch.isspace() for ch in str(path)):
        raise ValueError("dnf URLs cannot contain whitespace: %s" % path)
    return path


def export_armored(key: GpgKey, path) -> pathlib.Path:
    """Write ``key``'s public key, ASCII-armoured (what ``gpgkey=`` takes)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gpg", "--batch", "--quiet", "--yes", "--armor",
                    "--output", str(path), "--export", key.fingerprint],
                   check=True, capture_output=True,
                   env=dict(os.environ, GNUPGHOME=str(key.home)))
    path.chmod(0o644)
    return path


def sign_rpms(key: GpgKey, rpm_paths: Iterable) -> None:
    """Add ``key``'s signature to each rpm, in place (one rpmsign run)."""
    paths = [str(p) for p in rpm_paths]
    if not paths:
        return
    argv = ["rpmsign", "--addsign",
            "--define", "__gpg /usr/bin/gpg",
            "--define", "_gpg_name %s" % key.fingerprint,
            "--define", "_gpg_path %s" % key.home] + paths
    # stdin closed: a missing key must fail, not wait for a passphrase.
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class RpmRepo:
    """An rpm-md repository in ``path`` (created if missing)."""

    def __init__(self, path) -> None:
        self.path = _no_whitespace(pathlib.Path(path).resolve())
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def key_path(self) -> pathlib.Path:
        return self.path / KEY_NAME

    def add(self, rpm_paths: Iterable) -> List[pathlib.Path]:
        """Copy .rpm files into the repository; returns the copied paths."""
        copied = []
        for rpm in rpm_paths:
            rpm = pathlib.Path(rpm)
            if rpm.suffix != ".rpm":
                raise ValueError("not an .rpm: %s" % rpm)
            dest = self.path / rpm.name
            shutil.copyfile(str(rpm), str(dest))
            dest.chmod(0o644)
            copied.append(dest)
        return copied

    def publish(self, key: Optional[GpgKey] = None) -> None:
        """Sign the packages (if ``key``), then (re)write ``repodata/``."""
        if key is not None:
            sign_rpms(key, sorted(self.path.glob("*.rpm")))
            export_armored(key, self.key_path)
        # Stale repodata would keep listing packages removed since.
        shutil.rmtree(str(self.path / "repodata"), ignore_errors=True)
        subprocess.run(list(_CREATEREPO) + [str(self.path)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def repo_file(self, repo_id: str = "lab", gpgcheck: bool = True,
                  key_path=None) -> str:
        """yum/dnf .repo text for this repository.

        With ``gpgcheck``, ``key_path`` (default: this repository's exported
        key) is the only key dnf may import for it.
        """
        if not repo_id or any(ch.isspace() or ch in "[]/" for ch in repo_id):
            raise ValueError("bad repository id: %r" % repo_id)
        lines = ["[%s]" % repo_id, "name=patchd lab repository %s" % repo_id,
                 "baseurl=file://%s" % self.path, "enabled=1",
                 "gpgcheck=%d" % int(gpgcheck), "repo_gpgcheck=0",
                 "metadata_expire=0"]
        if gpgcheck:
            key = _no_whitespace(pathlib.Path(key_path or self.key_path).resolve())
            lines.append("gpgkey=file://%s" % key)
        return "\n".join(lines) + "\n"
