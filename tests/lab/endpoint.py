"""A sandboxed endpoint: a managed root driven by the real ``patchd``.

Used by the integration tests, the demo and the benchmark alike, so all
three exercise the same thing: the ``patchd`` executable (a separate
process, as in production: python-apt's state is per process), a real dpkg
or rpm root in a btrfs subvolume, a signed local repository. What differs
between the families is in ``tests.lab.families``.

Rules:
- Nothing here touches the host's package state: every command is pointed
  at the endpoint's root (apt with ``APT_CONFIG`` for that root, dnf with
  ``installroot`` and the root's own configuration).
- ``Lab`` owns the loop-mounted btrfs and cleans it up on exit;
  ``Lab.small_endpoint`` gives an endpoint a small btrfs of its own (to
  fill the disk) and unmounts and detaches it on exit.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import uuid
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from tests.lab import btrfs as lab_btrfs
from tests.lab.aptrepo import GpgKey
from tests.lab.families import FAMILIES, LabFamily
from tests.lab.roots import clone_root

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
# Installed in every baseline endpoint.
BASELINE = ("demo-lib=1.0", "demo-app=1.0", "demo-tool=1.0", "demo-slow=1.0")
# Paths apt and dnf rewrite on every run (caches, indexes), and dnf's pid
# lock, which a killed process leaves behind (dnf takes over a dead pid's
# lock): not package state.
VOLATILE = ("var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old",
            "var/cache/debconf/config.dat-old", "var/cache/dnf", "var/lib/dnf/rpmdb_lock.pid")


class Endpoint:
    """One managed root with its own patchd state and snapshot directories."""

    def __init__(self, root: pathlib.Path, state_dir: pathlib.Path,
                 snapshot_dir: pathlib.Path, family: LabFamily):
        self.root = pathlib.Path(root)
        self.state_dir = pathlib.Path(state_dir)
        self.snapshot_dir = pathlib.Path(snapshot_dir)
        self.family = family

    def command(self, *args: str) -> List[str]:
        return [sys.executable, "-m", "patchd.daemon.main", "--root", str(self.root),
                "--state-dir", str(self.state_dir), "--snapshot-dir",
                str(self.snapshot_dir)] + list(args)

    def env(self, failpoint: Optional[str] = None) -> Dict[str, str]:
        env = dict(self.family.env(), PYTHONPATH=str(REPO_ROOT))
        env.pop("PATCHD_FAILPOINT", None)
        if failpoint:
            env["PATCHD_FAILPOINT"] = failpoint
        return env

    def patchd(self, *args: str, failpoint: Optional[str] = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``patchd ARGS`` for this endpoint; never raises on exit codes."""
        return subprocess.run(self.command(*args), env=self.env(failpoint),
                              cwd=str(REPO_ROOT), capture_output=True, text=True,
                              timeout=timeout)

    def patchd_json(self, *args: str, failpoint: Optional[str] = None):
        """``patchd --json ARGS``: (exit code, parsed output or None, stderr)."""
        result = self.patchd("--json", *args, failpoint=failpoint)
        data = json.loads(result.stdout) if result.stdout.strip() else None
        return result.returncode, data, result.stderr

    def v(self, upstream: str) -> str:
        """A catalogue version as this family spells it ("1.1" or "1.1-1")."""
        return self.family.version(upstream)

    def versions(self) -> Dict[str, Tuple[str, str]]:
        return self.family.versions(self.root)

    def demo_versions(self) -> Dict[str, Tuple[str, str]]:
        return {k: v for k, v in self.versions().items() if k.startswith("demo-")}

    def expected(self, specs: Iterable[str] = BASELINE, **changed: str):
        """demo_versions() of ``specs`` (name=version) with ``changed`` applied."""
        found = {s.split("=")[0]: (self.v(s.split("=")[1]), "ii") for s in specs}
        for name, version in changed.items():
            found[name.replace("_", "-")] = (self.v(version), "ii")
        return found

    def audit(self) -> str:
        """The family's consistency check (``dpkg --audit``, ``rpm -Va``)."""
        return self.family.audit(self.root)

    def snapshots(self) -> List[str]:
        return sorted(p.name for p in self.snapshot_dir.iterdir()) \
            if self.snapshot_dir.exists() else []

    def differs_from_snapshot(self, tx: Dict) -> List[str]:
        """Every difference between the root and ``tx``'s pre snapshot, caches
        included; only the lock files a rollback leaves alone by design are
        not compared."""
        from tests.lab.fingerprint import tree_fingerprint
        return changed_paths(tree_fingerprint(tx["snapshot"]["path"]),
                             tree_fingerprint(self.root), exclude=self.family.restore_exempt)

    def hold(self, package: str) -> None:
        """``apt-mark hold`` / ``dnf versionlock add`` in the root."""
        self.family.hold(self.root, package)


class Lab:
    """A loop-mounted btrfs holding a template root of one family, a signed
    repository of the catalogue and a baseline endpoint (BASELINE installed)
    that endpoints are cloned from."""

    def __init__(self, base_dir: pathlib.Path, family: str = "deb"):
        self.base_dir = pathlib.Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)   # apt's _apt user reads repo and keyring
        self.family = FAMILIES[family]()
        self._fs = None   # type: Optional[lab_btrfs.LoopBtrfs]
        self.key = None   # type: Optional[GpgKey]
        self.baseline = None   # type: Optional[pathlib.Path]

    def __enter__(self) -> Lab:
        try:
            self.family.setup(self.base_dir)
            self._fs = lab_btrfs.LoopBtrfs(self.base_dir, size="4G").__enter__()
            self.mountpoint = pathlib.Path(self._fs.mountpoint)
            self.template = self.family.prepare_template(self.mountpoint, self.base_dir)
            self.key = GpgKey()
            self.keyring = self.family.export_key(self.key, self.base_dir / "repo-key")
            self.repo = self.publish(self.family.build_catalog(self.base_dir / "catalog"))
            self.baseline = self._make_baseline()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.key is not None:
            self.key.close()
        if self._fs is not None:
            self._fs.__exit__(None, None, None)

    def publish(self, packages: Dict, name: str = "repo", signed: bool = True):
        """A repository of ``packages``, signed with the lab's key unless not ``signed``."""
        return self.family.publish(self.base_dir, packages, self.key if signed else None, name)

    def use_repos(self, endpoint: Endpoint, repos: Iterable, keyring=None,
                  trusted: bool = False) -> None:
        self.family.use_repos(endpoint.root, repos, keyring=keyring or self.keyring,
                              trusted=trusted)

    def _make_baseline(self) -> pathlib.Path:
        endpoint = self.endpoint(self.template, name="baseline")
        self.use_repos(endpoint, [self.repo])
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
        return Endpoint(root, state, snapshots, self.family)

    @contextlib.contextmanager
    def small_endpoint(self, size: str = "1G") -> Iterator[Endpoint]:
        """A baseline endpoint alone on a fresh btrfs of ``size``, so a test
        can fill its disk quickly; unmounted and detached on exit.

        The baseline is copied with ``btrfs send`` (of a read-only snapshot)
        | ``btrfs receive``; the root is a writable snapshot of the received
        copy, which stays beside it (sharing all its blocks). The snapshot
        directory is on the small filesystem, the state directory outside.
        """
        import btrfsutil

        unique = uuid.uuid4().hex[:12]
        source = self.mountpoint / "send" / unique
        state = self.base_dir / "state" / unique
        with lab_btrfs.LoopBtrfs(self.base_dir, size=size) as fs:
            mnt = pathlib.Path(fs.mountpoint)
            source.parent.mkdir(exist_ok=True)
            btrfsutil.create_snapshot(str(self.baseline), str(source), read_only=True)
            try:
                _send_receive(source, mnt)
            finally:
                btrfsutil.delete_subvolume(str(source))
            root = clone_root(mnt / unique, mnt / "roots" / unique)
            snapshots = mnt / "snapshots" / unique
            snapshots.mkdir(parents=True)
            state.mkdir(parents=True)
            try:
                yield Endpoint(root, state, snapshots, self.family)
            finally:
                lab_btrfs.remove_tree(state)

    def discard(self, endpoint: Endpoint) -> None:
        for path in (endpoint.root, endpoint.snapshot_dir, endpoint.state_dir):
            lab_btrfs.remove_tree(path)


def _send_receive(snapshot: pathlib.Path, dest: pathlib.Path) -> None:
    """``btrfs send SNAPSHOT | btrfs receive DEST`` (a read-only copy
    named like SNAPSHOT appears in DEST)."""
    send = subprocess.Popen(["btrfs", "send", "-q", str(snapshot)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        receive = subprocess.run(["btrfs", "receive", "-q", str(dest)], stdin=send.stdout,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        send.stdout.close()
        send_error = send.stderr.read().decode(errors="replace")
        send.stderr.close()
        send.wait()
    if send.returncode != 0 or receive.returncode != 0:
        raise RuntimeError("btrfs send | receive of {} failed: {}{}".format(
            snapshot, send_error, receive.stdout))


def changed_paths(a: Dict, b: Dict, exclude: Iterable[str] = VOLATILE) -> List[str]:
    """Differences between two tree fingerprints outside ``exclude``."""
    from tests.lab.fingerprint import diff_fingerprints
    prefixes = tuple(p.rstrip("/") for p in exclude)

    def keep(path: str) -> bool:
        # SQLite's shared-memory index (rpmdb, dnf history) changes when the
        # database is merely read; it holds no data.
        if path.endswith(".sqlite-shm") and prefixes:
            return False
        return not any(path == p or path.startswith(p + "/") for p in prefixes)

    return diff_fingerprints({k: v for k, v in a.items() if keep(k)},
                             {k: v for k, v in b.items() if keep(k)})
