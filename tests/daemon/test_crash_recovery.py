"""kill -9 at every state, then restart: the root converges, 100% of runs,
on both families (the ``lab`` fixture is parametrized: apt/dpkg, dnf/rpm).

The ``patchd`` process is killed with SIGKILL at a named point (see
``patchd.daemon.failpoints``: the process kills itself, so the point is
exact and nothing of its own runs afterwards). One more test kills it from
outside while a real maintainer script runs. ``patchd recover`` then plays
the daemon's next start. After recovery:

- the journal shows a terminal state for the transaction;
- ``dpkg --audit`` / ``rpm -Va`` is clean: no half-installed or
  half-configured package, no file differing from the package database;
- the dpkg database and every file equal either the snapshot (before) or the
  fully applied state, as the state table's RECOVERY column says.

States covered (COVERED below): every state a transaction can be journaled
in, plus the gaps between a step's work and its journal row.
"""

import os
import signal
import subprocess
import time

import pytest

from patchd.core.model import State
from patchd.core.states import RECOVERY
from tests.lab.endpoint import changed_paths
from tests.lab.fingerprint import tree_fingerprint

pytestmark = pytest.mark.integration

GOOD = ("install", "demo-app=1.1", "demo-lib=1.1")    # succeeds
BAD = ("install", "demo-app=1.2")                      # postinst fails: rolls back

# (failpoint, request, journaled state at the kill, final state after recovery)
MATRIX = [
    ("after-record:resolving", GOOD, State.RESOLVING, State.FAILED),
    ("after-record:resolved", GOOD, State.RESOLVED, State.FAILED),
    ("after-record:downloading", GOOD, State.DOWNLOADING, State.FAILED),
    ("after-record:verified", GOOD, State.VERIFIED, State.FAILED),
    ("after-record:snapshotting", GOOD, State.SNAPSHOTTING, State.FAILED),
    ("after:TakeSnapshot", GOOD, State.SNAPSHOTTING, State.FAILED),
    ("after-record:applying", GOOD, State.APPLYING, State.ROLLED_BACK),
    ("during:Apply:0.5", GOOD, State.APPLYING, State.ROLLED_BACK),
    ("after:Apply", GOOD, State.APPLYING, State.ROLLED_BACK),
    ("after-record:checking", GOOD, State.CHECKING, State.ROLLED_BACK),
    ("after:Check", GOOD, State.CHECKING, State.ROLLED_BACK),
    ("after-record:terminal", GOOD, State.DONE, State.DONE),
    ("during:Apply:0.5", BAD, State.APPLYING, State.ROLLED_BACK),
    ("after-record:rolling_back", BAD, State.ROLLING_BACK, State.ROLLED_BACK),
    ("during:Rollback:0.5", BAD, State.ROLLING_BACK, State.ROLLED_BACK),
    ("after:Rollback", BAD, State.ROLLING_BACK, State.ROLLED_BACK),
    ("after-record:terminal", BAD, State.ROLLED_BACK, State.ROLLED_BACK),
]
COVERED = {row[2] for row in MATRIX}


def test_matrix_covers_every_non_terminal_state_but_queued():
    # queued exists only in the daemon's queue, before any journal row.
    journaled = {s for s in State if RECOVERY[s] != "none"} - {State.QUEUED}
    assert journaled <= COVERED


def journal_state(endpoint, tx_id):
    code, history, _ = endpoint.patchd_json("history")
    assert code == 0
    return {h["id"]: h for h in history}[tx_id]


@pytest.mark.parametrize("failpoint,request_args,killed_in,final", MATRIX,
                         ids=["{}-{}".format(r[0], "bad" if r[1] is BAD else "good")
                              for r in MATRIX])
def test_kill_at_state_then_recover(endpoint, failpoint, request_args, killed_in, final):
    before = tree_fingerprint(endpoint.root)
    tx_id = "crash-test"
    result = endpoint.patchd("--json", *request_args, "--id", tx_id, failpoint=failpoint)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    assert journal_state(endpoint, tx_id)["state"] == killed_in.value

    recovered = endpoint.patchd("--json", "recover")
    assert recovered.returncode == 0, recovered.stderr
    tx = journal_state(endpoint, tx_id)
    assert tx["state"] == final.value
    assert endpoint.audit() == ""
    if final is State.DONE:
        assert endpoint.demo_versions() == endpoint.expected(demo_app="1.1", demo_lib="1.1")
    else:
        assert endpoint.demo_versions() == endpoint.expected()
        assert changed_paths(before, tree_fingerprint(endpoint.root)) == []
    if final is State.ROLLED_BACK:
        # Every file equals the snapshot, caches included.
        assert endpoint.differs_from_snapshot(tx) == []
    if final is State.FAILED:
        assert tx["error"]["code"] == "interrupted"
        assert not [s for s in endpoint.snapshots() if s.endswith("-pre")]
    if request_args is BAD and final is State.ROLLED_BACK and killed_in is not State.APPLYING:
        assert tx["error"]["code"] == "script-failed"   # the first error is kept
    # A second start finds nothing left to do.
    again = endpoint.patchd("--json", "recover")
    assert again.returncode == 0 and again.stdout.strip() == "[]"


def test_external_kill_while_maintainer_script_runs(endpoint):
    """A real kill -9 from outside while dpkg or rpm runs demo-slow's postinst."""
    (endpoint.root / "etc/demo-slow.sleep").write_text("3\n")
    before = tree_fingerprint(endpoint.root)
    proc = subprocess.Popen(endpoint.command("--json", "install", "demo-slow=1.1", "--id", "ext"),
                            env=endpoint.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not processes_in_root(endpoint.root, "sleep"):
        assert proc.poll() is None and time.monotonic() < deadline, "postinst never started"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    recovered = endpoint.patchd("--json", "recover")
    assert recovered.returncode == 0, recovered.stderr
    assert journal_state(endpoint, "ext")["state"] == "rolled_back"
    assert endpoint.audit() == ""
    assert endpoint.demo_versions() == endpoint.expected()
    assert changed_paths(before, tree_fingerprint(endpoint.root)) == []


def processes_in_root(root, name):
    """PIDs of processes called ``name`` chrooted into ``root``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/{}/comm".format(pid)) as f:
                if f.read().strip() != name:
                    continue
            if os.readlink("/proc/{}/root".format(pid)) == str(root):
                found.append(int(pid))
        except OSError:
            continue
    return found
