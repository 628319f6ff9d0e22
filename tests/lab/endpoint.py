"""A sandboxed endpoint: a managed Debian root driven by the real ``patchd``.

Used by the integration tests, the demo and the benchmark alike, so all
three exercise the same thing: the ``patchd`` executable (a separate
process, as in production: python-apt's state is per process), a real dpkg
root in a btrfs subvolume, a signed local repository.

Rules:
- Nothing here touches the host's package state: every command is pointed
  at the endpoint's root, and apt runs with ``APT_CONFIG`` for that root.
- ``Lab`` owns the loop-mounted btrfs and cleans it up on exit.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid
from typing import Dict, Iterable, List, Optional, Tuple

from tests.lab import btrfs as lab_btrfs
from tests.lab.aptrepo import AptRepo, GpgKey
from tests.lab.catalog import build_catalog
from tests.lab.roots import clone_root, prepare_template, set_sources

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
# Installed in every baseline endpoint.
BASELINE = ("demo-lib=1.0", "demo-app=1.0", "demo-tool=1.0", "demo-slow=1.0")
# Paths apt rewrites on every run (caches, indexes): not package state.
VOLATILE = ("var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old",
            "var/cache/debconf/config.dat-old")


class Endpoint:
    """One managed root with its own patchd state and snapshot directories."""

    def __init__(self, root: pathlib.Path, state_dir: pathlib.Path,
                 snapshot_dir: pathlib.Path):
        self.root = pathlib.Path(root)
        self.state_dir = pathlib.Path(state_dir)
        self.snapshot_dir = pathlib.Path(snapshot_dir)

    def command(self, *args: str) -> List[str]:
        return [sys.executable, "-m", "patchd.daemon.main", "--root", str(self.root),
                "--state-dir", str(self.state_dir), "--snapshot-dir",
                str(self.snapshot_dir)] + list(args)

    def patchd(self, *args: str, failpoint: Optional[str] = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``patchd ARGS`` for this endpoint; never raises on exit codes."""
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        env.pop("PATCHD_FAILPOINT", None)
        if failpoint:
            env["PATCHD_FAILPOINT"] = failpoint
        return subprocess.run(self.command(*args), env=env, cwd=str(REPO_ROOT),
                              capture_output=True, text=True, timeout=timeout)

    def patchd_json(self, *args: str, failpoint: Optional[str] = None):
        """``patchd --json ARGS``: (exit code, parsed output or None, stderr)."""
        result = self.patchd("--json", *args, failpoint=failpoint)
        data = json.loads(result.stdout) if result.stdout.strip() else None
        return result.returncode, data, result.stderr

    def versions(self) -> Dict[str, Tuple[str, str]]:
        """{package: (version, dpkg status abbreviation)} from the root's dpkg."""
        out = subprocess.run(
            ["dpkg-query", "--admindir={}/var/lib/dpkg".format(self.root), "-W",
             "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"],
            stdout=subprocess.PIPE, text=True, check=True).stdout
        result = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                result[parts[0]] = (parts[1], parts[2])
        return result

    def demo_versions(self) -> Dict[str, Tuple[str, str]]:
        return {k: v for k, v in self.versions().items() if k.startswith("demo-")}

    def audit(self) -> str:
        """``dpkg --audit`` output; empty when the database is consistent."""
        result = subprocess.run(["dpkg", "--root={}".format(self.root), "--audit"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        return result.stdout.strip()

    def snapshots(self) -> List[str]:
        return sorted(p.name for p in self.snapshot_dir.iterdir()) \
            if self.snapshot_dir.exists() else []

    def hold(self, package: str) -> None:
        """``apt-mark hold`` in the root (dpkg selections)."""
        subprocess.run(["dpkg", "--root={}".format(self.root), "--set-selections"],
                       input="{} hold\n".format(package), text=True, check=True)


class Lab:
    """A loop-mounted btrfs holding a template root, a signed repository and
    a baseline endpoint (BASELINE installed) that endpoints are cloned from."""

    def __init__(self, base_dir: pathlib.Path):
        self.base_dir = pathlib.Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)   # apt's _apt user reads repo and keyring
        self._fs = None   # type: Optional[lab_btrfs.LoopBtrfs]
        self._key = None   # type: Optional[GpgKey]
        self.baseline = None   # type: Optional[pathlib.Path]

    def __enter__(self) -> Lab:
        try:
            self._fs = lab_btrfs.LoopBtrfs(self.base_dir, size="4G").__enter__()
            self.mountpoint = pathlib.Path(self._fs.mountpoint)
            self.template = prepare_template(self.mountpoint)
            self._key = GpgKey()
            self.repo = publish_repo(self.base_dir, build_catalog(self.base_dir / "catalog"),
                                     self._key)
            self.keyring = self._key.export(self.base_dir / "repo.gpg")
            self.baseline = self._make_baseline()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._key is not None:
            self._key.close()
        if self._fs is not None:
            self._fs.__exit__(None, None, None)

    def _make_baseline(self) -> pathlib.Path:
        endpoint = self.endpoint(self.template, name="baseline")
        set_sources(endpoint.root, [self.repo.source_line(keyring=self.keyring)])
        for args in (("refresh",), ("install",) + BASELINE):
            result = endpoint.patchd(*args)
            if result.returncode != 0:
                raise RuntimeError("baseline {} failed: {}{}".format(
                    args[0], result.stdout, result.stderr))
        return endpoint.root

    def endpoint(self, source: Optional[pathlib.Path] = None,
                 name: Optional[str] = None) -> Endpoint:
        """A fresh endpoint cloned (btrfs snapshot, milliseconds) from ``source``."""
        unique = name or uuid.uuid4().hex[:12]
        root = clone_root(source or self.baseline, self.mountpoint / "roots" / unique)
        snapshots = self.mountpoint / "snapshots" / unique
        snapshots.mkdir(parents=True)
        state = self.base_dir / "state" / unique
        state.mkdir(parents=True)
        return Endpoint(root, state, snapshots)

    def discard(self, endpoint: Endpoint) -> None:
        for path in (endpoint.root, endpoint.snapshot_dir, endpoint.state_dir):
            lab_btrfs.remove_tree(path)


def publish_repo(base_dir: pathlib.Path, debs: Dict, key: Optional[GpgKey],
                 name: str = "repo") -> AptRepo:
    repo = AptRepo(base_dir / name)
    repo.add(debs.values())
    repo.publish(key=key)
    return repo


def changed_paths(a: Dict, b: Dict, exclude: Iterable[str] = VOLATILE) -> List[str]:
    """Differences between two tree fingerprints outside ``exclude``."""
    from tests.lab.fingerprint import diff_fingerprints
    prefixes = tuple(p.rstrip("/") for p in exclude)

    def keep(path: str) -> bool:
        return not any(path == p or path.startswith(p + "/") for p in prefixes)

    return diff_fingerprints({k: v for k, v in a.items() if keep(k)},
                             {k: v for k, v in b.items() if keep(k)})
