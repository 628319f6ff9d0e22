"""Transactions end to end, on both families: real dpkg and rpm roots, real
btrfs snapshots, real journal, driven through the ``patchd`` executable.

Every test runs once per family (the ``lab`` fixture is parametrized), so
apt and dnf are held to the same behaviour: same states, same error codes,
same rollback. Where a family does something differently (where it checks a
signature, how it words a dependency problem), the test says why.
Each refusal must say what to do and leave the root exactly as it was; each
failure after applying must roll back to the snapshot, live.
"""

import subprocess
import sys
import time

import pytest

from tests.lab.endpoint import changed_paths
from tests.lab.fingerprint import tree_fingerprint

pytestmark = pytest.mark.integration


def assert_untouched(endpoint, before, expected=None):
    assert endpoint.demo_versions() == (expected or endpoint.expected())
    assert changed_paths(before, tree_fingerprint(endpoint.root)) == []
    assert [s for s in endpoint.snapshots() if s.endswith("-pre")] == []
    assert endpoint.audit() == ""


def changes(tx):
    return {(c["name"], c["old"], c["new"], c["action"]) for c in tx["plan"]["changes"]}


def test_upgrade_succeeds_and_is_journaled(endpoint):
    v = endpoint.v
    code, tx, _ = endpoint.patchd_json("install", "demo-app=1.1", "demo-lib=1.1")
    assert code == 0, tx
    assert tx["state"] == "done" and tx["error"] is None
    assert changes(tx) == {("demo-app", v("1.0"), v("1.1"), "upgrade"),
                           ("demo-lib", v("1.0"), v("1.1"), "upgrade")}
    assert endpoint.demo_versions() == endpoint.expected(demo_app="1.1", demo_lib="1.1")
    assert (endpoint.root / "usr/share/doc/demo-app/VERSION").read_text().strip() == "1.1"
    assert "demo-app 1.1 configured" in (endpoint.root / "var/log/lab-postinst.log").read_text()
    assert endpoint.audit() == ""
    assert tx["snapshot"]["name"] in endpoint.snapshots()
    code, history, _ = endpoint.patchd_json("history")
    assert [h["id"] for h in history] == [tx["id"]] and history[0]["state"] == "done"
    if endpoint.family.name == "deb":   # dpkg's own output is kept per transaction
        log = (endpoint.state_dir / "logs" / (tx["id"] + ".log")).read_text()
        assert "Unpacking demo-app (1.1)" in log


def test_install_new_package_and_remove(endpoint):
    code, tx, _ = endpoint.patchd_json("install", "demo-conflict-a")
    assert code == 0, tx
    assert changes(tx) == {("demo-conflict-a", None, endpoint.v("1.0"), "install")}
    code, tx, _ = endpoint.patchd_json("remove", "demo-conflict-a", "demo-slow")
    assert code == 0, tx
    assert {(c["name"], c["action"]) for c in tx["plan"]["changes"]} == {
        ("demo-conflict-a", "remove"), ("demo-slow", "remove")}
    remaining = endpoint.expected()
    del remaining["demo-slow"]
    assert endpoint.demo_versions() == remaining
    assert not (endpoint.root / "usr/share/doc/demo-slow/VERSION").exists()
    assert endpoint.audit() == ""


@pytest.mark.parametrize("spec,script", [("demo-app=1.2", "post"), ("demo-tool=3.0", "pre")])
def test_failing_script_rolls_back_live(endpoint, spec, script):
    """A failing postinst/%post (rpm only warns about it) and a failing
    preinst/%pre both fail the transaction and roll back."""
    before = tree_fingerprint(endpoint.root)
    code, tx, _ = endpoint.patchd_json("install", spec)
    assert code == 2, tx
    assert tx["state"] == "rolled_back"
    assert tx["error"]["code"] == "script-failed"
    words = {("deb", "post"): "post-installation script",
             ("deb", "pre"): "pre-installation script",
             ("rpm", "post"): "POSTIN scriptlet", ("rpm", "pre"): "PREIN scriptlet"}
    assert words[(endpoint.family.name, script)] in tx["error"]["message"]
    assert endpoint.demo_versions() == endpoint.expected()
    assert endpoint.audit() == ""
    assert changed_paths(before, tree_fingerprint(endpoint.root)) == []
    # Every file equals the pre snapshot, caches included.
    assert endpoint.differs_from_snapshot(tx) == []
    # The broken state is kept for diagnosis beside the pre snapshot.
    names = endpoint.snapshots()
    assert tx["snapshot"]["name"] in names
    assert tx["snapshot"]["name"].replace("-pre", "-failed") in names


def test_upgrade_all_plans_every_candidate(endpoint):
    code, plan, _ = endpoint.patchd_json("updates")
    assert code == 0
    v = endpoint.v
    assert {(c["name"], c["new"]) for c in plan["changes"]} == {
        ("demo-app", v("1.2")), ("demo-lib", v("1.1")), ("demo-tool", v("3.0")),
        ("demo-slow", v("1.1"))}


def test_missing_dependency_is_refused_untouched(endpoint):
    before = tree_fingerprint(endpoint.root)
    code, tx, _ = endpoint.patchd_json("install", "demo-broken")
    assert code == 1 and tx["state"] == "failed"
    assert tx["error"]["code"] == "dependency-problem"
    message = tx["error"]["message"]
    # Each family's own words, which its admins know.
    assert {"deb": "Depends: does-not-exist (>= 9) but it is not installable",
            "rpm": "nothing provides does-not-exist >= 9 needed by demo-broken"}[
                endpoint.family.name] in message
    assert "mirror" in tx["error"]["hint"]
    assert_untouched(endpoint, before)


def test_conflicting_pair_is_refused_untouched(endpoint):
    before = tree_fingerprint(endpoint.root)
    code, tx, _ = endpoint.patchd_json("install", "demo-conflict-a", "demo-conflict-b")
    assert code == 1 and tx["error"]["code"] == "dependency-problem", tx
    assert "demo-conflict-" in tx["error"]["message"]
    assert "onflict" in tx["error"]["message"]
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
    expected = endpoint.demo_versions()   # dpkg shows the hold in the state ("hi")
    code, tx, _ = endpoint.patchd_json("install", "demo-app=1.1")
    assert code == 1 and tx["error"]["code"] == "package-held"
    word, how = {"deb": ("held", "apt-mark unhold"),
                 "rpm": ("locked", "versionlock")}[endpoint.family.name]
    assert "demo-app is {} at {}".format(word, endpoint.v("1.0")) in tx["error"]["message"]
    assert how in tx["error"]["hint"]
    assert_untouched(endpoint, before, expected)
    code, tx, _ = endpoint.patchd_json("remove", "demo-app")
    assert code == 1 and tx["error"]["code"] == "package-held"
    # Upgrading everything leaves the held package alone.
    code, plan, _ = endpoint.patchd_json("updates")
    assert "demo-app" not in {c["name"] for c in plan["changes"]}
    assert "demo-lib" in {c["name"] for c in plan["changes"]}


def refused_source(endpoint):
    """apt checks the repository's signed index at refresh; dnf (with
    repo_gpgcheck=0, the norm on openEuler and Kylin Server) checks each
    package's signature after download. Either way nothing is installed."""
    code, out, _ = endpoint.patchd_json("refresh")
    if endpoint.family.name == "rpm":
        assert code == 0, out
        code, out, _ = endpoint.patchd_json("install", "demo-app=1.1")
    return code, out


def test_unsigned_repository_is_refused(endpoint, lab):
    unsigned = lab.publish(lab.family.build_catalog(lab.base_dir / "unsigned-catalog"),
                           name="unsigned-repo", signed=False)
    lab.use_repos(endpoint, [unsigned])
    before = tree_fingerprint(endpoint.root)
    code, out = refused_source(endpoint)
    assert code == 1 and out["error"]["code"] == "repository-unsigned", out
    assert "not signed" in out["error"]["message"]
    assert "trusted" in out["error"]["hint"]
    assert_untouched(endpoint, before)
    # The admin may mark it trusted explicitly.
    lab.use_repos(endpoint, [unsigned], trusted=True)
    code, out, _ = endpoint.patchd_json("refresh")
    assert code == 0, out
    code, tx, _ = endpoint.patchd_json("install", "demo-app=1.1")
    assert code == 0, tx


def test_repository_signed_by_another_key_is_refused(endpoint, lab, gpg_key):
    """Signed, but by a key the endpoint does not trust (``gpg_key`` is not
    the lab's key, which the repository configuration names)."""
    name = "other-key-repo-" + endpoint.root.name
    catalog = lab.family.build_catalog(lab.base_dir / (name + "-catalog"))
    other = lab.family.publish(lab.base_dir, catalog, gpg_key, name)
    lab.use_repos(endpoint, [other])
    before = tree_fingerprint(endpoint.root)
    code, out = refused_source(endpoint)
    assert code == 1 and out["error"]["code"] == "repository-unsigned", out
    assert_untouched(endpoint, before)


HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_native_lock(endpoint, seconds):
    """Take the native tool's database lock the way apt and rpm do."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(endpoint.root / endpoint.family.lock_file),
         str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_held_by_another_process_times_out_untouched(endpoint):
    before = tree_fingerprint(endpoint.root)
    holder = hold_native_lock(endpoint, 60)
    try:
        code, tx, _ = endpoint.patchd_json("--lock-timeout", "1", "install", "demo-app=1.1")
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and tx["error"]["code"] == "lock-timeout"
    assert "process {}".format(holder.pid) in tx["error"]["message"] or \
        "{} (python".format(holder.pid) in tx["error"]["message"]
    assert "wait for it" in tx["error"]["hint"]
    assert_untouched(endpoint, before)


def test_lock_is_waited_for(endpoint):
    holder = hold_native_lock(endpoint, 1.5)
    started = time.monotonic()
    code, tx, _ = endpoint.patchd_json("--lock-timeout", "30", "install", "demo-app=1.1")
    holder.wait()
    assert code == 0, tx
    assert time.monotonic() - started >= 1.0
    assert endpoint.demo_versions()["demo-app"] == (endpoint.v("1.1"), "ii")


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
    assert found["demo-app"] == endpoint.v("1.0")
    assert endpoint.family.base_package in found


def test_retention_keeps_last_n(endpoint):
    for version in ("1.1", "1.0", "1.1", "1.0"):
        code, tx, _ = endpoint.patchd_json("--keep", "2", "install", "demo-lib=" + version)
        assert code == 0, tx
    code, snaps, _ = endpoint.patchd_json("snapshots")
    assert len(snaps) == 2 and snaps[-1]["name"] == tx["snapshot"]["name"]


def test_dnf_excludes_are_honoured(endpoint):
    """``exclude=`` in dnf.conf hides packages from dnf; apt has no such
    setting (holds are its tool, tested above), so this runs on rpm only."""
    if endpoint.family.name != "rpm":
        pytest.skip("exclude= is a dnf.conf setting; apt/dpkg has none")
    conf = endpoint.root / "etc/dnf/dnf.conf"
    conf.write_text(conf.read_text() + "exclude=demo-lib\n")
    code, plan, _ = endpoint.patchd_json("updates")
    assert code == 0
    assert "demo-lib" not in {c["name"] for c in plan["changes"]}
    code, tx, _ = endpoint.patchd_json("install", "demo-lib=1.1")
    assert code == 1 and tx["error"]["code"] == "package-not-found"
