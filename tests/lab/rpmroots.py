"""Managed rpm roots (openEuler-like installroots) for the lab.

* ``rpm_home()``             -- a HOME whose .rpmmacros puts the rpm database
                                at /var/lib/rpm (see below); ``rpm_env()``.
* ``prepare_rpm_template()`` -- ``<mnt>/@rpm-template``: dnf.conf, os-release,
                                an rpmdb with lab-base installed; read-only.
* ``set_repos()``            -- the root's only .repo files.
* ``dnf_argv()``/``run_dnf()`` -- the dnf CLI confined to a root.
* ``installed_version()``    -- "<version>-<release>" from the root's rpmdb.
Clones are made with ``roots.clone_root`` (any subvolume works).

Rules:
* Every rpm, dnf or libsolv process (and python3-rpm/dnf user) touching a lab
  root runs with ``HOME=rpm_home()``.  Debian's rpm sets
  ``%_dbpath %(bash -c 'echo ~/.rpmdb')``, so without it the database of
  ``--root R`` silently lands in ``R/root/.rpmdb`` (libsolv then warns
  "using dummy database" and sees nothing installed).  ~/.rpmmacros is the
  only lever all three honour: ``rpm --dbpath`` is CLI-only, and
  ``rpm.addMacro`` before ``dnf.Base()`` came too late.  On openEuler the
  default is already /var/lib/rpm, so production code needs nothing.
* python3-dnf users build a ``dnf.conf.Conf`` with installroot, cachedir,
  persistdir and logdir under the root *before* ``dnf.Base(conf)``: a bare
  ``dnf.Base()`` reads (and creates) the host's rpmdb to guess releasever,
  and dnf.Base, unlike the CLI, does not prefix persistdir/logdir, so
  history.sqlite and hawkey.log would go to the host (test_rpm_api.py).
* The template is read-only so no test can change what later clones start
  from; it has no repositories, each test writes exactly the ones it uses.
* dnf never reads the host's configuration: ``dnf_argv`` passes the root's
  dnf.conf, reposdir and the release version (the template has no
  release package that would provide ``system-release(releasever)``).
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
from typing import Dict, List

from tests.lab.btrfs import make_subvolume

RELEASEVER = "22.03"
DBPATH = "/var/lib/rpm"

# /etc/os-release as shipped by openEuler-release 22.03 LTS.
OS_RELEASE = """NAME="openEuler"
VERSION="22.03 LTS"
ID="openEuler"
VERSION_ID="22.03"
PRETTY_NAME="openEuler 22.03 LTS"
ANSI_COLOR="0;31"

"""
# openEuler's stock dnf.conf.
DNF_CONF = """[main]
gpgcheck=1
installonly_limit=3
clean_requirements_on_remove=True
best=True
skip_if_unavailable=False
"""
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


def rpm_home(base_dir) -> pathlib.Path:
    """``<base_dir>/rpm-home`` with ``.rpmmacros`` (idempotent)."""
    home = pathlib.Path(base_dir) / "rpm-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text("%%_dbpath %s\n" % DBPATH)
    return home


def rpm_env(home) -> Dict[str, str]:
    """Environment for rpm/dnf on a lab root: HOME, and C messages so
    tests can match rpm's and dnf's English output."""
    return dict(os.environ, HOME=str(home), LC_ALL="C.UTF-8", LANG="C.UTF-8")


def _rpm(root, home, *args: str) -> None:
    subprocess.run(["rpm", "--root", str(root)] + list(args), check=True,
                   env=rpm_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def prepare_rpm_template(mountpoint, lab_base_rpm, home) -> pathlib.Path:
    """Create ``<mountpoint>/@rpm-template`` as a read-only rpm root."""
    import btrfsutil

    template = pathlib.Path(mountpoint) / "@rpm-template"
    if os.path.lexists(str(template)):
        raise FileExistsError(str(template))
    make_subvolume(template)
    template.chmod(0o755)  # a root's / must be 0755 whatever the umask
    for directory in ("etc/yum.repos.d", "etc/dnf", "var/lib/rpm"):
        (template / directory).mkdir(parents=True, mode=0o755, exist_ok=True)
    (template / "etc/dnf/dnf.conf").write_text(DNF_CONF)
    (template / "etc/os-release").write_text(OS_RELEASE)
    _rpm(template, home, "--initdb")
    # lab-base has no requirements and no scriptlets, so plain rpm -i
    # (without --nodeps) installs it into the empty root.
    _rpm(template, home, "-i", str(lab_base_rpm))
    if (template / "root/.rpmdb").exists():
        raise RuntimeError("rpm ignored %s/.rpmmacros: database in root/.rpmdb" % home)
    btrfsutil.set_subvolume_read_only(str(template), True)
    return template


def set_repos(root, texts: Dict[str, str]) -> List[pathlib.Path]:
    """Make ``texts`` ({repo id: .repo text}) the root's only .repo files."""
    repo_dir = pathlib.Path(root) / "etc/yum.repos.d"
    for stale in repo_dir.glob("*.repo"):
        stale.unlink()
    written = []
    for repo_id, text in sorted(texts.items()):
        if not _REPO_ID_RE.match(repo_id):
            raise ValueError("bad repository id: %r" % repo_id)
        path = repo_dir / (repo_id + ".repo")
        path.write_text(text)
        path.chmod(0o644)
        written.append(path)
    return written


def dnf_argv(root, *args: str) -> List[str]:
    """dnf CLI argv confined to ``root``; run it with ``rpm_env(home)``.

    Repositories come only from the root's yum.repos.d (a command-line
    reposdir is used verbatim).  cachedir is deliberately *not* set: the
    dnf 4.14 CLI prefixes cachedir, logdir and persistdir with the
    installroot itself, but applies a ``--setopt=cachedir=`` inconsistently:
    ``=R/var/cache/dnf`` leaves ``R/R/var/cache/dnf/expired_repos.json``
    behind, ``=/var/cache/dnf`` puts the metadata into the *host's* cache.
    """
    root = pathlib.Path(root).resolve()
    return ["dnf", "-y", "--installroot=%s" % root, "--releasever=%s" % RELEASEVER,
            "--config=%s" % (root / "etc/dnf/dnf.conf"),
            "--setopt=reposdir=%s" % (root / "etc/yum.repos.d")] + list(args)


def run_dnf(root, home, *args: str) -> subprocess.CompletedProcess:
    """Run ``dnf_argv(root, *args)``; stdout and stderr merged, as text."""
    return subprocess.run(dnf_argv(root, *args), env=rpm_env(home),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def installed_version(root, home, name: str) -> str:
    """"<version>-<release>" of ``name`` in the root's rpmdb, "" if absent."""
    result = subprocess.run(["rpm", "--root", str(root), "-q", "--qf",
                             "%{VERSION}-%{RELEASE}\\n", name],
                            env=rpm_env(home), stdout=subprocess.PIPE, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""
