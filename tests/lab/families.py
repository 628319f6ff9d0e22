"""What differs between the deb and rpm labs, behind one small interface.

The scenario suite, the demo and the benchmark are written once against a
``LabFamily``; ``DEB`` and ``RPM`` build templates, catalogues and signed
repositories, and read package state with each family's own native tools
(dpkg-query and ``dpkg --audit``; ``rpm -q`` and ``rpm -Va``), never
through patchd.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Dict, Iterable, Optional, Tuple

from patchd.backends.apt import AptBackend
from patchd.backends.dnf import DnfBackend
from tests.lab.aptrepo import AptRepo, GpgKey
from tests.lab.catalog import build_catalog, build_rpm_catalog
from tests.lab.debs import DebSpec, build_deb
from tests.lab.roots import prepare_template, set_sources, write_apt_config
from tests.lab.rpmrepo import RpmRepo, export_armored
from tests.lab.rpmroots import dnf_argv, prepare_rpm_template, rpm_env, rpm_home, set_repos
from tests.lab.rpms import build_lab_base, build_rpm

Versions = Dict[str, Tuple[str, str]]


class LabFamily:
    name = ""
    # Paths a rollback leaves alone by design (the backend's lock files).
    restore_exempt = ()   # type: Tuple[str, ...]
    lock_file = ""      # the native tool's database lock, relative to the root
    base_package = ""   # a package every template root has

    def __init__(self) -> None:
        self.home = None   # type: Optional[pathlib.Path]

    def setup(self, base_dir: pathlib.Path) -> None:
        """Per-lab state (e.g. rpm's HOME) before anything else runs."""

    def env(self) -> Dict[str, str]:
        """Environment for patchd and the native tools on this family's roots."""
        return dict(os.environ)

    def version(self, upstream: str) -> str:
        """How patchd and the native tools spell a catalogue version."""
        return upstream

    def prepare_template(self, mountpoint: pathlib.Path, base_dir: pathlib.Path):
        raise NotImplementedError

    def build_catalog(self, outdir: pathlib.Path) -> Dict:
        raise NotImplementedError

    def build(self, spec: DebSpec, outdir: pathlib.Path) -> pathlib.Path:
        """One package of this family from a declarative spec."""
        raise NotImplementedError

    def native_install(self, root: pathlib.Path, specs: Iterable[str]):
        """(argv, env) of the native tool installing ``name=version`` specs."""
        raise NotImplementedError

    def publish(self, base_dir: pathlib.Path, packages: Dict, key: Optional[GpgKey],
                name: str):
        raise NotImplementedError

    def use_repos(self, root: pathlib.Path, repos: Iterable, keyring=None,
                  trusted: bool = False) -> None:
        """Make ``repos`` the root's only repositories, trusting ``keyring``
        (default: the repository's own key) or, with ``trusted``, no check."""
        raise NotImplementedError

    def export_key(self, key: GpgKey, path: pathlib.Path) -> pathlib.Path:
        """The public key in the form this family's repositories name."""
        raise NotImplementedError

    def versions(self, root: pathlib.Path) -> Versions:
        """{package: (version, state)}; state "ii" means fully installed."""
        raise NotImplementedError

    def audit(self, root: pathlib.Path) -> str:
        """The native consistency check's complaints; empty when clean."""
        raise NotImplementedError

    def hold(self, root: pathlib.Path, package: str) -> None:
        raise NotImplementedError


def _run(argv, env=None, input_text=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, input=input_text, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


class DebFamily(LabFamily):
    name = "deb"
    restore_exempt = AptBackend.lock_files
    lock_file = "var/lib/dpkg/lock-frontend"   # apt's frontend lock (fcntl)
    base_package = "dpkg"

    def prepare_template(self, mountpoint, base_dir):
        return prepare_template(mountpoint)

    def build_catalog(self, outdir):
        return build_catalog(outdir)

    def build(self, spec, outdir):
        return build_deb(spec, outdir)

    def native_install(self, root, specs):
        conf = write_apt_config(root, pathlib.Path(root).parent / (root.name + "-apt.conf"))
        env = dict(os.environ, APT_CONFIG=str(conf), DEBIAN_FRONTEND="noninteractive")
        return ["apt-get", "-y", "-q", "install"] + list(specs), env

    def publish(self, base_dir, packages, key, name):
        repo = AptRepo(base_dir / name)
        repo.add(packages.values())
        repo.publish(key=key)
        return repo

    def export_key(self, key, path):
        return key.export(path)

    def use_repos(self, root, repos, keyring=None, trusted=False):
        set_sources(root, [repo.source_line(keyring=None if trusted else keyring,
                                            trusted=trusted) for repo in repos])

    def versions(self, root):
        out = _run(["dpkg-query", "--admindir={}/var/lib/dpkg".format(root), "-W",
                    "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"]).stdout
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                found[parts[0]] = (parts[1], parts[2])
        return found

    def audit(self, root):
        return _run(["dpkg", "--root={}".format(root), "--audit"]).stdout.strip()

    def hold(self, root, package):
        result = _run(["dpkg", "--root={}".format(root), "--set-selections"],
                      input_text="{} hold\n".format(package))
        assert result.returncode == 0, result.stdout


class RpmFamily(LabFamily):
    name = "rpm"
    restore_exempt = DnfBackend.lock_files
    lock_file = "var/lib/rpm/.rpm.lock"   # rpm's transaction lock (fcntl)
    base_package = "lab-base"

    def setup(self, base_dir):
        self.home = rpm_home(base_dir)

    def env(self):
        return rpm_env(self.home)

    def version(self, upstream):
        return upstream + "-1"   # the rpm builder's release

    def prepare_template(self, mountpoint, base_dir):
        lab_base = build_lab_base(base_dir / "lab-base")
        return prepare_rpm_template(mountpoint, lab_base, self.home)

    def build_catalog(self, outdir):
        return build_rpm_catalog(outdir)

    def build(self, spec, outdir):
        return build_rpm(spec, outdir)

    def native_install(self, root, specs):
        return dnf_argv(root, "install", *(s.replace("=", "-") for s in specs)), self.env()

    def publish(self, base_dir, packages, key, name):
        repo = RpmRepo(base_dir / name)
        repo.add(packages.values())
        repo.publish(key=key)
        repo.repo_id = name
        return repo

    def export_key(self, key, path):
        return export_armored(key, path)

    def use_repos(self, root, repos, keyring=None, trusted=False):
        set_repos(root, {repo.repo_id: repo.repo_file(
            repo.repo_id, gpgcheck=not trusted, key_path=keyring) for repo in repos})

    def versions(self, root):
        out = _run(["rpm", "--root", str(root), "-qa", "--qf",
                    "%{NAME} %{VERSION}-%{RELEASE}\\n"], env=self.env()).stdout
        return {name: (version, "ii") for name, version in
                (line.split() for line in out.splitlines() if line.strip())}

    def audit(self, root):
        # rpm has no half-installed state: its check is verifying every
        # installed file against the database (config files aside).
        out = _run(["rpm", "--root", str(root), "-Va"], env=self.env()).stdout
        return "\n".join(line for line in out.splitlines()
                         if line.strip() and line.split()[1:2] != ["c"])

    def hold(self, root, package):
        version = self.versions(root)[package][0]
        path = pathlib.Path(root) / "etc/dnf/plugins/versionlock.list"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write("{}-0:{}.*\n".format(package, version))


FAMILIES = {"deb": DebFamily, "rpm": RpmFamily}
