"""Build real rpm packages from the same ``DebSpec`` the deb lab uses.

``build_rpm(spec, outdir)`` writes a .spec and runs ``rpmbuild -bb`` in a
private ``_topdir`` (about 45 ms per package); ``build_lab_base(outdir)``
builds ``lab-base``, the minimal base that makes an empty installroot able
to run scriptlets (busybox as /bin/sh).

Rules:
* One spec, two families: Version/Epoch/Release come from the Debian
  version (``[epoch:]upstream[-revision]``, revision or "1" as Release),
  relations are translated (``demo-lib (>= 1.0)`` -> ``demo-lib >= 1.0``,
  ``a | b`` -> the rich dependency ``(a or b)``); only ``arch: all``
  (noarch) is supported.
* Scriptlets are the deb builder's own scripts (``DebSpec.scripts()``:
  ``set -e`` and the "<name> <version> configured" line in the postinst),
  preceded by a line that turns rpm's instance count into the Debian action
  word (``%post`` -> ``configure``, ``%pre`` -> install/upgrade,
  ``%preun``/``%postun`` -> remove/upgrade), so bodies written against
  dpkg's arguments run unchanged.  rpm's count stays in ``$LAB_RPM_ARG``.
* ``AutoReqProv: no``: only the spec's relations are declared, plus the
  ``/bin/sh`` requirement rpmbuild always adds for scriptlets; lab-base
  provides it.
* Builds are hermetic and reproducible: HOME is the private build dir (no
  user ~/.rpmmacros), timestamps are SOURCE_DATE_EPOCH, brp scripts and
  build-id links are off, so a rebuild is byte-identical until signed.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import List, Tuple

# Private on purpose: the same fixed mtime and the same relation grammar
# as the deb builder, so both families describe one package identically.
from tests.lab.debs import _EPOCH, _REL_ATOM_RE, DebSpec

BUSYBOX = "/bin/busybox"
# Applets scriptlets (the catalogue's included) call by name; echo, test,
# [, true and false are also ash builtins, but a script may exec them.
BASE_APPLETS = ("sleep", "cat", "echo", "mkdir", "rm", "touch", "true", "false",
                "test", "[", "truncate", "dd")

_OPS = {"<<": "<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">"}
# rpm's instance count ($1) -> the argument dpkg would pass.
_SCRIPTLETS = (
    ("preinst", "pre", 'if [ "$1" -gt 1 ]; then set -- upgrade; else set -- install; fi'),
    ("postinst", "post", "set -- configure"),
    ("prerm", "preun", 'if [ "$1" -eq 0 ]; then set -- remove; else set -- upgrade; fi'),
    ("postrm", "postun", 'if [ "$1" -eq 0 ]; then set -- remove; else set -- upgrade; fi'),
)
_DEFINES = (
    # brp-strip/brp-compress and build-id links would rewrite lab-base's
    # busybox and add files; the lab wants exactly the files it declares.
    ("__os_install_post", "%{nil}"),
    # check-files and check-buildroot cost a third of each build and cannot
    # fire: %files is generated from the very list that fills the tree.
    ("__check_files", "%{nil}"),
    ("__arch_install_post", "%{nil}"),
    ("debug_package", "%{nil}"),
    ("_build_id_links", "none"),
    # lab-base is noarch although busybox is the host's binary: the lab only
    # installs it on the machine that built it.
    ("_binaries_in_noarch_packages_terminate_build", "0"),
    ("_buildhost", "lab.invalid"),
    ("use_source_date_epoch_as_buildtime", "1"),
    ("clamp_mtime_to_source_date_epoch", "1"),
    # zstd level 3: lab-base's 2 MB busybox takes 0.09 s against 0.36 s
    # with the default gzip -9; rpm >= 4.14 reads it.
    ("_binary_payload", "w3.zstdio"),
)


def rpm_evr(version: str) -> Tuple[str, str, str]:
    """(epoch or "", version, release) for a Debian version string."""
    epoch, _, rest = version.partition(":") if ":" in version else ("", "", version)
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, "1"
    if "-" in upstream or ":" in upstream:
        # Valid for dpkg, but rpm reserves both as EVR separators.
        raise ValueError("not representable as an rpm version: %r" % version)
    return epoch, upstream, revision


def rpm_relation(entry: str) -> str:
    """One Debian relation (with ``|`` alternatives) in rpm syntax."""
    atoms = []
    for atom in entry.split("|"):
        match = _REL_ATOM_RE.match(atom.strip())
        if not match:
            raise ValueError("invalid relation: %r" % entry)
        name, op, ver = match.groups()  # ":any"-style qualifiers are dropped
        atoms.append(name if not op else "%s %s %s" % (name, _OPS[op], ver))
    if len(atoms) == 1:
        return atoms[0]
    return "(" + " or ".join(atoms) + ")"  # rich dependency, rpm >= 4.13


def _esc(text: str) -> str:
    # rpm macro-expands every spec section, scriptlet bodies included.
    return text.replace("%", "%%")


def _quote(path: str) -> str:
    if '"' in path or "\n" in path:
        raise ValueError("unsupported character in path: %r" % path)
    return '"%s"' % _esc(path)


def _header(name: str, version: str, summary: str) -> List[str]:
    epoch, ver, rel = rpm_evr(version)
    lines = ["Name: " + name]
    if epoch:
        lines.append("Epoch: " + epoch)
    lines += ["Version: " + ver, "Release: " + rel, "Summary: " + _esc(summary),
              "License: MIT", "BuildArch: noarch", "AutoReqProv: no"]
    return lines


def spec_text(spec: DebSpec) -> str:
    """The rpm .spec for ``spec``; files are copied from %{_sourcedir}/root."""
    if spec.arch != "all":
        raise ValueError("the rpm lab builds arch 'all' (noarch) only: %r" % spec.arch)
    summary = spec.description or "lab package " + spec.name
    lines = _header(spec.name, spec.version, summary)
    for tag, values in (("Requires", spec.depends), ("Conflicts", spec.conflicts),
                        ("Provides", spec.provides)):
        lines += ["%s: %s" % (tag, rpm_relation(value)) for value in values]
    lines += ["", "%description", _esc(summary), "", "%install",
              "cp -a %{_sourcedir}/root/. %{buildroot}/", "",
              "%files", "%defattr(0644,root,root,0755)"]
    for path, _content in spec.files:
        attr = "%attr(0755,root,root) " if path.startswith("/usr/bin/") else ""
        lines.append(attr + _quote(path))
    scripts = spec.scripts()
    for deb_name, rpm_name, prelude in _SCRIPTLETS:
        if deb_name not in scripts:
            continue
        # Drop the "#!/bin/sh" line: rpm runs /bin/sh on the body itself.
        body = scripts[deb_name].split("\n", 1)[1]
        lines += ["", "%" + rpm_name,
                  'LAB_RPM_ARG="$1"; ' + prelude, _esc(body).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _lab_base_spec(applets) -> str:
    lines = _header("lab-base", "1.0", "lab base: busybox as /bin/sh")
    lines += ["Provides: /bin/sh /usr/bin/sh", "", "%description",
              "Minimal base for lab installroots: busybox shell and applets.", "",
              "%install", "cp -a %{_sourcedir}/root/. %{buildroot}/", "",
              "%files", "%defattr(0644,root,root,0755)",
              "%attr(0755,root,root) /usr/bin/busybox",
              "/bin/sh", "/usr/bin/sh", "%dir /var/log",
              "%dir %attr(1777,root,root) /tmp"]
    lines += [_quote("/usr/bin/" + applet) for applet in applets]
    return "\n".join(lines) + "\n"


def _rpmbuild(spec_body: str, stage, outdir) -> pathlib.Path:
    """Run rpmbuild on ``spec_body``; ``stage(root)`` fills the file tree."""
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    top = pathlib.Path(tempfile.mkdtemp(prefix=".rpmbuild-", dir=str(outdir)))
    try:
        root = top / "SOURCES" / "root"
        root.mkdir(parents=True)
        stage(root)
        for dirpath, dirnames, filenames in os.walk(str(root)):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (_EPOCH, _EPOCH),
                         follow_symlinks=False)
        spec_path = top / "lab.spec"
        spec_path.write_text(spec_body)
        argv = ["rpmbuild", "-bb", "--nodeps", "--quiet",
                "--define", "_topdir %s" % top]
        for name, value in _DEFINES:
            argv += ["--define", "%s %s" % (name, value)]
        env = dict(os.environ, HOME=str(top), SOURCE_DATE_EPOCH=str(_EPOCH))
        subprocess.run(argv + [str(spec_path)], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        built = list((top / "RPMS").glob("*/*.rpm"))
        if len(built) != 1:
            raise RuntimeError("rpmbuild made %d rpms, expected one" % len(built))
        target = outdir / built[0].name
        os.replace(str(built[0]), str(target))
    finally:
        shutil.rmtree(str(top), ignore_errors=True)
    return target


def build_rpm(spec: DebSpec, outdir) -> pathlib.Path:
    """Build ``spec`` into ``outdir`` and return the .rpm path."""
    body = spec_text(spec)

    def stage(root: pathlib.Path) -> None:
        for path, content in spec.files:
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(content)
            # The %files attrs decide the packaged modes; this is for cp -a.
            dest.chmod(0o755 if path.startswith("/usr/bin/") else 0o644)

    return _rpmbuild(body, stage, outdir)


def build_lab_base(outdir, busybox=BUSYBOX, applets=BASE_APPLETS) -> pathlib.Path:
    """Build ``lab-base`` 1.0 (busybox from busybox-static as /bin/sh)."""
    if not os.path.isfile(str(busybox)):
        raise FileNotFoundError("%s missing: install busybox-static" % busybox)

    def stage(root: pathlib.Path) -> None:
        usr_bin, bin_dir = root / "usr/bin", root / "bin"
        for directory in (usr_bin, bin_dir, root / "var/log", root / "tmp"):
            directory.mkdir(parents=True)
        shutil.copyfile(str(busybox), str(usr_bin / "busybox"))
        (usr_bin / "busybox").chmod(0o755)
        # Relative links: they resolve the same inside and outside the root,
        # and busybox picks the applet from the link's name.
        os.symlink("../usr/bin/busybox", str(bin_dir / "sh"))
        for applet in ("sh",) + tuple(applets):
            os.symlink("busybox", str(usr_bin / applet))

    return _rpmbuild(_lab_base_spec(applets), stage, outdir)
