"""patchd apply versus the native tool installing the same packages, same run.

Usage: ``make bench`` (or ``.venv/bin/python bench/bench_apply.py [rounds]
[deb|rpm ...]``).

For each family, each round clones the same base endpoint twice (btrfs
snapshots), upgrades PACKAGES bench packages (FILES files each) from 1.0 to
1.1 once with the native tool (``apt-get install`` with APT_CONFIG confined
to the root and dpkg chrooted; ``dnf install --installroot`` with the
root's configuration) and once with ``patchd install``, alternating which
goes first. Printed per round and as medians:

- the native tool's wall time;
- patchd's apply step (journal: ``applying`` row to ``checking`` row) and
  the ratio to the native tool: the overhead of patchd's pinned apply;
- patchd's whole transaction (process start to exit: plan, download and
  verify, snapshot, apply, dpkg --audit, journal) and its ratio;
- the snapshot step (``snapshotting`` to ``applying``);
- a live rollback after a failing postinst at the end of the same upgrade
  (``rolling_back`` to ``rolled_back``).
"""

import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from patchd.core.model import SnapshotRef
from patchd.snapshot.btrfs import BtrfsSnapshotter
from patchd.store.journal import SqliteJournal
from tests.lab import btrfs as lab_btrfs
from tests.lab.debs import DebSpec
from tests.lab.endpoint import Lab

PACKAGES = 40
FILES = 30
NAMES = ["bench-{:02d}".format(i) for i in range(PACKAGES)]


def bench_packages(family, outdir: pathlib.Path):
    packages = {}
    for name in NAMES:
        for version in ("1.0", "1.1"):
            files = tuple(("/usr/share/{}/data-{:02d}.txt".format(name, i),
                           "{} {} file {}\n".format(name, version, i) * 200)
                          for i in range(FILES))
            spec = DebSpec(name, version, files=files, description="benchmark package")
            packages[(name, version)] = family.build(spec, outdir)
    return packages


def timed(cmd, env=None) -> float:
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    elapsed = time.monotonic() - started
    if result.returncode not in (0, 2):
        raise RuntimeError("{} failed:\n{}".format(cmd, result.stdout))
    return elapsed


def step_seconds(endpoint, tx_id: str, start: str, end: str) -> float:
    journal = SqliteJournal(str(endpoint.state_dir / "journal.db"))
    try:
        at = {}
        for event in journal.events(tx_id):
            at.setdefault(event.state, event.at)
        return at[end] - at[start]
    finally:
        journal.close()


def settled_snapshot_seconds(endpoint, repeat: int = 5) -> float:
    """Median time of ``take()`` on a root with nothing left to flush."""
    snapshotter = BtrfsSnapshotter(str(endpoint.root), str(endpoint.snapshot_dir))
    times = []
    for i in range(repeat):
        ref = SnapshotRef("patchd-settled-{}-pre".format(i))
        started = time.monotonic()
        taken = snapshotter.take(ref)
        times.append(time.monotonic() - started)
        snapshotter.delete(taken)
    return statistics.median(times)


def bench_family(family: str, rounds: int) -> None:
    base = pathlib.Path(tempfile.mkdtemp(prefix="patchd-bench-{}-".format(family)))
    with Lab(base, family=family) as lab:
        repo = lab.publish(bench_packages(lab.family, base / "bench-packages"),
                           name="bench-repo")
        seed = lab.endpoint()
        lab.use_repos(seed, [lab.repo, repo])
        for args in (("refresh",), ("install",) + tuple(n + "=1.0" for n in NAMES)):
            result = seed.patchd(*args)
            if result.returncode != 0:
                raise RuntimeError("seeding failed: " + result.stdout + result.stderr)
        upgrade = [n + "=1.1" for n in NAMES]
        native = {"deb": "apt-get install", "rpm": "dnf install"}[family]
        rows = []
        for i in range(rounds):
            raw, ours = lab.endpoint(seed.root), lab.endpoint(seed.root)
            native_cmd, native_env = lab.family.native_install(raw.root, upgrade)
            tx_id = "bench-{}".format(i)
            patchd_cmd = ours.command("install", "--id", tx_id, *upgrade)
            if i % 2:
                total = timed(patchd_cmd, ours.env())
                native_s = timed(native_cmd, native_env)
            else:
                native_s = timed(native_cmd, native_env)
                total = timed(patchd_cmd, ours.env())
            apply_s = step_seconds(ours, tx_id, "applying", "checking")
            snap_s = step_seconds(ours, tx_id, "snapshotting", "applying")
            settled_s = settled_snapshot_seconds(ours)
            failing = lab.endpoint(seed.root)
            fail_id = "bench-fail-{}".format(i)
            timed(failing.command("install", "--id", fail_id, "demo-app=1.2", *upgrade),
                  failing.env())
            rollback_s = step_seconds(failing, fail_id, "rolling_back", "rolled_back")
            rows.append((native_s, apply_s, total, snap_s, rollback_s, settled_s))
            print("{} round {}: {} {:.3f} s | patchd apply {:.3f} s ({:.2f}x) | "
                  "patchd transaction {:.3f} s ({:.2f}x) | snapshot {:.1f} ms | "
                  "settled snapshot {:.1f} ms | live rollback {:.0f} ms".format(
                      family, i + 1, native, native_s, apply_s, apply_s / native_s, total,
                      total / native_s, snap_s * 1000, settled_s * 1000, rollback_s * 1000),
                  flush=True)
            for endpoint in (raw, ours, failing):
                lab.discard(endpoint)
        med = [statistics.median(col) for col in zip(*rows)]
        print()
        print("{}: {} packages x {} files, {} rounds, medians:".format(
            family, PACKAGES, FILES, rounds))
        print("  {:<24} {:.3f} s".format(native, med[0]))
        print("  patchd apply step        {:.3f} s  ratio {:.2f}".format(med[1], med[1] / med[0]))
        print("  patchd whole transaction {:.3f} s  ratio {:.2f}".format(med[2], med[2] / med[0]))
        print("  snapshot step            {:.1f} ms  (in the transaction: flushes the"
              " archives just downloaded, plus the journal row)".format(med[3] * 1000))
        print("  snapshot, settled root   {:.1f} ms  (BtrfsSnapshotter.take alone)".format(
            med[5] * 1000))
        print("  live rollback            {:.0f} ms".format(med[4] * 1000))
        print(flush=True)
        lab_btrfs.remove_tree(seed.root)
    shutil.rmtree(str(base), ignore_errors=True)   # the lab unmounted its btrfs


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    families = sys.argv[2:] or ["deb", "rpm"]
    for family in families:
        bench_family(family, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
