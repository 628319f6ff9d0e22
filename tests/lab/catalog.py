"""The standard catalogue of demo packages shared by tests, demo and bench.

| package            | versions | what it exercises                               |
|--------------------|----------|-------------------------------------------------|
| demo-lib           | 1.0 1.1  | a library pulled in as a dependency             |
| demo-app           | 1.0      | plain install, no dependencies                  |
|                    | 1.1      | upgrade that pulls in demo-lib (>= 1.0)         |
|                    | 1.2      | failing postinst (exit 1 after the log line)    |
| demo-tool          | 1.0 2.0  | /usr/bin script and an /etc config file         |
|                    | 3.0      | failing preinst (exit 1): unpack is refused     |
| demo-broken        | 1.0      | unsatisfiable Depends: does-not-exist (>= 9)    |
| demo-conflict-a/-b | 1.0      | Conflicts with each other                       |
| demo-slow          | 1.0 1.1  | postinst sleeps N s if /etc/demo-slow.sleep = N |
| demo-fill          | 1.0      | postinst writes zeros to /var/tmp/demo-fill     |
|                    |          | until the disk is full, then fails (ENOSPC)     |

Rules:
* Every package ships /usr/share/doc/<name>/VERSION containing its version,
  so the file state of a root is checkable without dpkg.
* Every postinst logs "<name> <version> configured" (added by ``debs``;
  ``rpms`` runs the same script as %post, so both families log alike).
* One catalogue for both families: ``build_catalog`` makes .debs,
  ``build_rpm_catalog`` makes .rpms from the very same specs.
* demo-tool's /etc/demo-tool.conf is an ordinary file, not a dpkg conffile:
  a conffile changed locally would make dpkg prompt mid-transaction.
* Specs are data: change them only together with the tests relying on them.
"""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
from typing import Dict, Iterable, Optional, Tuple

from tests.lab.debs import POSTINST_LOG, DebSpec, build_deb, fail_preinst
from tests.lab.rpms import build_rpm


def _version_file(name: str, version: str) -> Tuple[str, str]:
    return ("/usr/share/doc/%s/VERSION" % name, version + "\n")


def _lib(version: str) -> DebSpec:
    return DebSpec(
        "demo-lib", version,
        files=(("/usr/lib/demo/libdemo.txt", "libdemo %s\n" % version),
               _version_file("demo-lib", version)),
        description="lab demo library",
    )


def _app(version: str, depends: Tuple[str, ...] = (), postinst: Optional[str] = None) -> DebSpec:
    return DebSpec(
        "demo-app", version, depends=depends, postinst=postinst,
        files=(("/usr/bin/demo-app", "#!/bin/sh\necho demo-app %s\n" % version),
               _version_file("demo-app", version)),
        description="lab demo application",
    )


def _tool(version: str, level: int) -> DebSpec:
    return DebSpec(
        "demo-tool", version,
        files=(("/usr/bin/demo-tool", "#!/bin/sh\necho demo-tool %s\n" % version),
               ("/etc/demo-tool.conf", "# demo-tool %s\nlevel=%d\n" % (version, level)),
               _version_file("demo-tool", version)),
        description="lab demo tool with a configuration file",
    )


def _slow(version: str) -> DebSpec:
    # DPKG_ROOT prefix for the same reason as the log line in debs.py.  The
    # extra "finished" line tells a kill test whether the sleep completed.
    body = (
        'if [ "$1" = configure ] && [ -f "${DPKG_ROOT:-}/etc/demo-slow.sleep" ]; then\n'
        '    sleep "$(cat "${DPKG_ROOT:-}/etc/demo-slow.sleep")"\n'
        '    echo "demo-slow %s finished" >> "${DPKG_ROOT:-}%s"\n'
        "fi\n" % (version, POSTINST_LOG)
    )
    return DebSpec("demo-slow", version, postinst=body,
                   files=(_version_file("demo-slow", version),),
                   description="lab package with a slow postinst")


def _fill(version: str) -> DebSpec:
    # Declared tiny, so patchd's free-space check passes and the disk fills
    # *during* apply.  The zeros come from a sparse 4 GiB file, not
    # /dev/zero: the rpm lab root has no /dev.  dd, not cat: GNU cat copies
    # with copy_file_range, which on btrfs reflinks the holes and writes
    # nothing.  dd fails with ENOSPC, and so (set -e) does the postinst.
    body = (
        'if [ "$1" = configure ]; then\n'
        '    mkdir -p "${DPKG_ROOT:-}/var/tmp"\n'
        '    truncate -s 4G "${DPKG_ROOT:-}/var/tmp/demo-fill.zeros"\n'
        '    dd if="${DPKG_ROOT:-}/var/tmp/demo-fill.zeros" '
        'of="${DPKG_ROOT:-}/var/tmp/demo-fill" bs=1M\n'
        "fi\n"
    )
    return DebSpec("demo-fill", version, postinst=body,
                   files=(_version_file("demo-fill", version),),
                   description="lab package whose postinst fills the disk")


def _simple(name: str, version: str, **fields) -> DebSpec:
    return DebSpec(name, version, files=(_version_file(name, version),),
                   description="lab package " + name, **fields)


_RPM_WORKERS = max(2, os.cpu_count() or 1)
_LIB_DEP = ("demo-lib (>= 1.0)",)

CATALOG = (
    _lib("1.0"),
    _lib("1.1"),
    _app("1.0"),
    _app("1.1", depends=_LIB_DEP),
    _app("1.2", depends=_LIB_DEP, postinst="exit 1"),
    _tool("1.0", 1),
    _tool("2.0", 2),
    fail_preinst(_tool("3.0", 3)),
    _simple("demo-broken", "1.0", depends=("does-not-exist (>= 9)",)),
    _simple("demo-conflict-a", "1.0", conflicts=("demo-conflict-b",)),
    _simple("demo-conflict-b", "1.0", conflicts=("demo-conflict-a",)),
    _slow("1.0"),
    _slow("1.1"),
    _fill("1.0"),
)  # type: Tuple[DebSpec, ...]

PACKAGE_NAMES = tuple(sorted({spec.name for spec in CATALOG}))


def catalog_spec(name: str, version: str) -> DebSpec:
    """The catalogue entry for ``name`` ``version`` (KeyError if absent)."""
    for spec in CATALOG:
        if spec.name == name and spec.version == version:
            return spec
    raise KeyError((name, version))


def _selected(names: Optional[Iterable[str]]) -> Tuple[DebSpec, ...]:
    wanted = set(PACKAGE_NAMES if names is None else names)
    unknown = wanted.difference(PACKAGE_NAMES)
    if unknown:
        raise ValueError("not in the catalogue: %s" % ", ".join(sorted(unknown)))
    return tuple(spec for spec in CATALOG if spec.name in wanted)


def build_catalog(outdir, names: Optional[Iterable[str]] = None
                  ) -> Dict[Tuple[str, str], pathlib.Path]:
    """Build the catalogue (or only the packages ``names``) into ``outdir``.

    Returns {(name, version): path of the .deb}.
    """
    return {(spec.name, spec.version): build_deb(spec, outdir)
            for spec in _selected(names)}


def build_rpm_catalog(outdir, names: Optional[Iterable[str]] = None
                      ) -> Dict[Tuple[str, str], pathlib.Path]:
    """Like ``build_catalog``, as .rpm files; {(name, version): path}.

    The builds run in parallel threads (each is its own rpmbuild process):
    on 2 CPUs about 0.5 s instead of 0.6 s for the 13 packages.
    """
    specs = _selected(names)
    with concurrent.futures.ThreadPoolExecutor(max_workers=_RPM_WORKERS) as pool:
        paths = list(pool.map(lambda spec: build_rpm(spec, outdir), specs))
    return {(spec.name, spec.version): path for spec, path in zip(specs, paths)}
