"""Transactions end to end: real dpkg root, real btrfs snapshots, real journal.

Each refusal must say what to do and leave the root exactly as it was; each
failure after applying must roll back to the snapshot, live.
"""

import subprocess
import sys
import time

import pytest

from tests.lab.endpoint import BASELINE, changed_paths
from tests.lab.fingerprint import tree_fingerprint
from tests.lab.roots import set_sources

pytestmark = pytest.mark.integration

BASE = {spec.split("=")[0]: (spec.split("=")[1], "ii") for spec in BASELINE}


def assert_untouched(endpoint, before, expected=BASE):
    assert endpoint.demo_versions() == expected
    assert changed_paths(before, tree_fingerprint(endpoint.root)) == []
    assert [s for s in endpoint.snapshots() if s.endswith("-pre")] == []
    assert endpoint.audit() == ""


def test_upgrade_succeeds_and_is_journaled(endpoint):
    code, tx, _ = endpoint.patchd_json("install", "demo-app=1.1", "demo-lib=1.1")
    assert code == 0, tx
    assert tx["state"] == "done" and tx["error"] is None
    assert {(c["name"], c["old"], c["new"], c["action"]) for c in tx["plan"]["changes"]} == {
        ("demo-app", "1.0", "1.1", "upgrade"), ("demo-lib", "1.0", "1.1", "upgrade")}
    versions = endpoint.demo_versions()
    assert versions["demo-app"] == ("1.1", "ii") and versions["demo-lib"] == ("1.1", "ii")
    assert (endpoint.root / "usr/share/doc/demo-app/VERSION").read_text().strip() == "1.1"
    assert endpoint.audit() == ""
    assert tx["snapshot"]["name"] in endpoint.snapshots()
    code, history, _ = endpoint.patchd_json("history")
    assert [h["id"] for h in history] == [tx["id"]] and history[0]["state"] == "done"
    log = (endpoint.state_dir / "logs" / (tx["id"] + ".log")).read_text()
    assert "Unpacking demo-app (1.1)" in log   # dpkg's output is kept per transaction


def test_failing_postinst_rolls_back_live(endpoint):
    before = tree_fingerprint(endpoint.root)
    code, tx, _ = endpoint.patchd_json("install", "demo-app=1.2")
    assert code == 2, tx
    assert tx["state"] == "rolled_back"
    assert tx["error"]["code"] == "script-failed"
    assert "post-installation script" in tx["error"]["message"]
    assert endpoint.demo_versions() == BASE
    assert endpoint.audit() == ""
    assert changed_paths(before, tree_fingerprint(endpoint.root)) == []
    # Every file equals the pre snapshot, caches included.
    snapshot = tree_fingerprint(tx["snapshot"]["path"])
    assert changed_paths(snapshot, tree_fingerprint(endpoint.root), exclude=()) == []
    # The broken state is kept for diagnosis beside the pre snapshot.
    names = endpoint.snapshots()
    assert tx["snapshot"]["name"] in names
    assert tx["snapshot"]["name"].replace("-pre", "-failed") in names


def test_upgrade_all_plans_every_candidate(endpoint):
    code, plan, _ = endpoint.patchd_json("updates")
    assert code == 0
    assert {(c["name"], c["new"]) for c in plan["changes"]} == {
        ("demo-app", "1.2"), ("demo-lib", "1.1"), ("demo-tool", "2.0"), ("demo-slow", "1.1")}


def test_missing_dependency_is_refused_untouched(endpoint):
    before = tree_fingerprint(endpoint.root)
    code, tx, _ = endpoint.patchd_json("install", "demo-broken")
    assert code == 1 and tx["state"] == "failed"
    assert tx["error"]["code"] == "dependency-problem"
    assert "Depends: does-not-exist (>= 9) but it is not installable" in tx["error"]["message"]
    assert "mirror" in tx["error"]["hint"]
    assert_untouched(endpoint, before)


def test_conflicting_pair_is_refused_untouched(endpoint):
    before = tree_fingerprint(endpoint.root)
    code, tx, _ = endpoint.patchd_json("install", "demo-conflict-a", "demo-conflict-b")
    assert code == 1 and tx["error"]["code"] == "dependency-problem"
    assert "Conflicts: demo-conflict-" in tx["error"]["message"]
    assert_untouched(endpoint, before)


def test_unknown_package_and_bad_spec(endpoint):
    code, tx, _ = endpoint.patchd_json("install", "no-such-package")
    assert code == 1 and tx["error"]["code"] == "package-not-found"
    code, tx, _ = endpoint.patchd_json("install", "demo-app=9.9")
    assert code == 1 and "available: " in tx["error"]["message"]
    code, tx, _ = endpoint.patchd_json("install", "Bad;rm -rf")
    assert code == 1 and tx["error"]["code"] == "invalid-request"


def test_held_package_is_refused_untouched(endpoint):
    endpoint.hold("demo-app")
    before = tree_fingerprint(endpoint.root)
    code, tx, _ = endpoint.patchd_json("install", "demo-app=1.1")
    assert code == 1 and tx["error"]["code"] == "package-held"
    assert "demo-app is held at 1.0" in tx["error"]["message"]
    assert "apt-mark unhold" in tx["error"]["hint"]
    assert_untouched(endpoint, before, dict(BASE, **{"demo-app": ("1.0", "hi")}))
    code, tx, _ = endpoint.patchd_json("remove", "demo-app")
    assert code == 1 and tx["error"]["code"] == "package-held"
    # Upgrading everything leaves the held package alone.
    code, plan, _ = endpoint.patchd_json("updates")
    assert "demo-app" not in {c["name"] for c in plan["changes"]}


def test_unsigned_repository_is_refused(endpoint, lab, lab_dir):
    from tests.lab.endpoint import publish_repo
    unsigned = publish_repo(lab_dir, {}, key=None, name="unsigned-repo")
    set_sources(endpoint.root, [unsigned.source_line()])
    code, out, _ = endpoint.patchd_json("refresh")
    assert code == 1 and out["error"]["code"] == "repository-unsigned"
    assert "is not signed" in out["error"]["message"]
    assert "signed-by" in out["error"]["hint"]
    # The admin may mark it trusted explicitly.
    set_sources(endpoint.root, [unsigned.source_line(trusted=True)])
    code, out, _ = endpoint.patchd_json("refresh")
    assert code == 0, out


def test_wrong_key_is_refused(endpoint, lab, lab_dir, gpg_key):
    other = gpg_key.export(lab_dir / "other-key.gpg")
    set_sources(endpoint.root, [lab.repo.source_line(keyring=other)])
    code, out, _ = endpoint.patchd_json("refresh")
    assert code == 1 and out["error"]["code"] == "repository-unsigned", out


HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "w")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_dpkg_lock(endpoint, seconds):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(endpoint.root / "var/lib/dpkg/lock-frontend"),
         str(seconds)], stdout=subprocess.PIPE, universal_newlines=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_held_by_another_process_times_out_untouched(endpoint):
    before = tree_fingerprint(endpoint.root)
    holder = hold_dpkg_lock(endpoint, 60)
    try:
        code, tx, _ = endpoint.patchd_json("--lock-timeout", "1", "install", "demo-app=1.1")
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and tx["error"]["code"] == "lock-timeout"
    assert "process {}".format(holder.pid) in tx["error"]["message"]
    assert "wait for it" in tx["error"]["hint"]
    assert_untouched(endpoint, before)


def test_lock_is_waited_for(endpoint):
    holder = hold_dpkg_lock(endpoint, 1.5)
    started = time.monotonic()
    code, tx, _ = endpoint.patchd_json("--lock-timeout", "30", "install", "demo-app=1.1")
    holder.wait()
    assert code == 0, tx
    assert time.monotonic() - started >= 1.0
    assert endpoint.demo_versions()["demo-app"] == ("1.1", "ii")


def test_snapshots_can_be_deleted(endpoint):
    code, tx, _ = endpoint.patchd_json("install", "demo-lib=1.1")
    assert code == 0
    name = tx["snapshot"]["name"]
    code, snaps, _ = endpoint.patchd_json("snapshots", "--delete", name)
    assert code == 0 and snaps == [] and endpoint.snapshots() == []
    code, out, _ = endpoint.patchd_json("snapshots", "--delete", name)
    assert code == 1 and out["error"]["code"] == "invalid-request"


def test_installed_lists_the_roots_packages(endpoint):
    code, packages, _ = endpoint.patchd_json("installed")
    assert code == 0
    found = {p["name"]: p["version"] for p in packages}
    assert found["demo-app"] == "1.0" and "apt" in found and "dpkg" in found


def test_retention_keeps_last_n(endpoint):
    for version in ("1.1", "1.0", "1.1", "1.0"):
        code, tx, _ = endpoint.patchd_json("--keep", "2", "install", "demo-lib=" + version)
        assert code == 0, tx
    code, snaps, _ = endpoint.patchd_json("snapshots")
    assert len(snaps) == 2 and snaps[-1]["name"] == tx["snapshot"]["name"]
