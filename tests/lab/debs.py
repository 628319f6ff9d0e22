"""Build real Debian packages from a small declarative spec.

``DebSpec`` describes one binary package; ``build_deb`` turns it into a .deb
with ``dpkg-deb --root-owner-group -Zgzip --build`` (about 20 ms each).

Rules:
* Names, versions, architectures and relationship fields are validated up
  front (``ValueError``) so a typo fails in the test, not deep inside dpkg.
* Maintainer scripts are shell *bodies*; the builder adds ``#!/bin/sh`` and
  ``set -e``.
* Every postinst first appends ``"<name> <version> configured"`` to
  /var/log/lab-postinst.log inside the target root when called with
  ``configure``, so tests can see exactly which versions were configured,
  even when the body then fails.
* Shipped files are 0644, or 0755 under /usr/bin; everything is owned by
  root (``--root-owner-group``), and mtimes are fixed so rebuilding gives
  byte-identical .debs (stable checksums in Packages files).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from typing import Optional, Tuple

# Debian policy 5.6.1: lowercase, digits, + - . ; at least two characters.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# Debian policy 5.6.12: [epoch:]upstream[-revision]; upstream starts with a
# digit.  Deliberately a little lenient (hyphens anywhere after the first
# digit): the goal is catching typos, not re-implementing dpkg's parser.
_VERSION_RE = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*$")
_ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# One relationship atom: "name", "name:any" or "name (op version)".
_REL_ATOM_RE = re.compile(
    r"^([a-z0-9][a-z0-9+.-]+)(?::[a-z0-9-]+)?"
    r"(?:\s*\((<<|<=|=|>=|>>)\s*([^\s()]+)\))?$"
)

POSTINST_LOG = "/var/log/lab-postinst.log"
# Fixed mtime (2024-01-01) for reproducible builds; dpkg-deb also reads
# SOURCE_DATE_EPOCH for the ar member timestamps.
_EPOCH = 1704067200


def _check_version(version: str, what: str) -> None:
    if not _VERSION_RE.match(version) or version.endswith("-"):
        raise ValueError("invalid Debian version for %s: %r" % (what, version))


def _check_relations(field: str, entries: Tuple[str, ...], alternatives: bool) -> None:
    if isinstance(entries, str):
        # A bare string would be iterated character by character.
        raise ValueError("%s must be a tuple of strings, not a string" % field)
    for entry in entries:
        atoms = entry.split("|") if alternatives else [entry]
        for atom in atoms:
            match = _REL_ATOM_RE.match(atom.strip())
            if not match:
                raise ValueError("invalid %s entry: %r" % (field, entry))
            if match.group(3):
                _check_version(match.group(3), field)


@dataclasses.dataclass(frozen=True)
class DebSpec:
    """One binary package.  ``files`` holds (absolute path, text) pairs."""

    name: str
    version: str
    arch: str = "all"
    depends: Tuple[str, ...] = ()
    conflicts: Tuple[str, ...] = ()
    provides: Tuple[str, ...] = ()
    files: Tuple[Tuple[str, str], ...] = ()
    postinst: Optional[str] = None
    preinst: Optional[str] = None
    prerm: Optional[str] = None
    postrm: Optional[str] = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError("invalid Debian package name: %r" % (self.name,))
        if not isinstance(self.version, str):
            raise ValueError("version must be a string: %r" % (self.version,))
        _check_version(self.version, self.name)
        if not _ARCH_RE.match(self.arch):
            raise ValueError("invalid architecture: %r" % (self.arch,))
        _check_relations("depends", self.depends, alternatives=True)
        _check_relations("conflicts", self.conflicts, alternatives=False)
        _check_relations("provides", self.provides, alternatives=False)
        if "\n" in self.description:
            raise ValueError("description must be a single line")
        seen = set()
        for item in self.files:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError("files entries must be (path, content) pairs")
            path = item[0]
            parts = path.split("/")
            if not path.startswith("/") or ".." in parts or path.endswith("/"):
                raise ValueError("file path must be absolute and normalised: %r" % path)
            if parts[1] == "DEBIAN":
                raise ValueError("files may not write the DEBIAN control area")
            if path in seen:
                raise ValueError("duplicate file path: %r" % path)
            seen.add(path)

    @property
    def filename(self) -> str:
        """Archive-style file name; the epoch is dropped as Debian does."""
        version = self.version.split(":", 1)[-1]
        return "%s_%s_%s.deb" % (self.name, version, self.arch)

    def control(self) -> str:
        lines = [
            "Package: " + self.name,
            "Version: " + self.version,
            "Architecture: " + self.arch,
            "Maintainer: Lab <lab@example.invalid>",
            "Section: misc",
            "Priority: optional",
            # KiB, rounded up per file as dpkg-gencontrol does; lets apt
            # report (and patchd check) the disk space a transaction needs.
            "Installed-Size: %d" % max(1, sum(
                (len(text.encode()) + 1023) // 1024 for _, text in self.files)),
        ]
        for field, values in (("Depends", self.depends),
                              ("Conflicts", self.conflicts),
                              ("Provides", self.provides)):
            if values:
                lines.append("%s: %s" % (field, ", ".join(values)))
        lines.append("Description: " + (self.description or "lab package " + self.name))
        return "\n".join(lines) + "\n"

    def scripts(self) -> dict:
        """Map maintainer script name to its full text (with shebang)."""
        # The log path honours DPKG_ROOT: empty when dpkg chroots (approach
        # A and B), set to the root with --force-script-chrootless (C).
        log_line = (
            'if [ "$1" = configure ]; then\n'
            '    echo "%s %s configured" >> "${DPKG_ROOT:-}%s"\n'
            "fi\n" % (self.name, self.version, POSTINST_LOG)
        )
        bodies = {
            "preinst": self.preinst,
            "postinst": log_line + (self.postinst or ""),
            "prerm": self.prerm,
            "postrm": self.postrm,
        }
        return {
            name: "#!/bin/sh\nset -e\n" + body.rstrip("\n") + "\n"
            for name, body in bodies.items()
            if body is not None
        }


def _file_mode(path: str) -> int:
    return 0o755 if path.startswith("/usr/bin/") else 0o644


def build_deb(spec: DebSpec, outdir) -> pathlib.Path:
    """Build ``spec`` into ``outdir`` and return the .deb path."""
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / spec.filename
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=str(outdir)))
    try:
        # Build dirs must not inherit a restrictive umask or mkdtemp's 0700:
        # dpkg-deb records the modes as they are on disk.
        staging.chmod(0o755)
        debian = staging / "DEBIAN"
        debian.mkdir(mode=0o755)
        (debian / "control").write_text(spec.control())
        for name, text in spec.scripts().items():
            script = debian / name
            script.write_text(text)
            script.chmod(0o755)
        for path, content in spec.files:
            dest = staging / path.lstrip("/")
            _makedirs(staging, dest.parent)
            dest.write_text(content)
            dest.chmod(_file_mode(path))
        for dirpath, dirnames, filenames in os.walk(str(staging)):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (_EPOCH, _EPOCH))
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(_EPOCH))
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build",
             str(staging), str(target)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )
    finally:
        shutil.rmtree(str(staging), ignore_errors=True)
    return target


def _makedirs(top: pathlib.Path, path: pathlib.Path) -> None:
    # mkdir(parents=True) applies the umask to parents; set 0755 explicitly
    # so the package never ships oddly-permissioned directories.
    missing = []
    while not path.exists() and path != top:
        missing.append(path)
        path = path.parent
    for item in reversed(missing):
        item.mkdir()
        item.chmod(0o755)


def fail_postinst(spec: DebSpec, code: int = 1) -> DebSpec:
    """Copy of ``spec`` whose postinst exits ``code`` after logging."""
    return _with_body(spec, "postinst", "exit %d" % code)


def fail_preinst(spec: DebSpec, code: int = 1) -> DebSpec:
    """Copy of ``spec`` whose preinst exits ``code`` (unpack is refused)."""
    return _with_body(spec, "preinst", "exit %d" % code)


def _with_body(spec: DebSpec, script: str, extra: str) -> DebSpec:
    body = getattr(spec, script) or ""
    return dataclasses.replace(spec, **{script: body + "\n" + extra + "\n"})
