"""The python3-dnf API on a lab rpm root, and the lock files rpm and dnf use.

The API test runs the exact ``dnf.Base`` set-up and call sequence the dnf
backend needs (``API_SCRIPT``) in a fresh /usr/bin/python3 with HOME set to
the rpm home.  The lock tests prove the lock paths inside an installroot
by holding each lock and watching rpm or dnf stop:

* ``var/lib/rpm/.rpm.lock``        rpm's transaction lock: a POSIX (fcntl)
                                   write lock on the whole file, which is
                                   kept.  rpm 4.18 does not wait for it.
* ``var/cache/dnf/metadata_lock.pid``,
  ``var/lib/dnf/rpmdb_lock.pid``   dnf's process locks: a *pid file*; the
                                   flock on it is only held while reading
                                   and writing the pid, and the file is
                                   unlinked on release.  A live pid in it is
                                   the lock.
Budget: under 5 s.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest

from tests.lab.rpmroots import installed_version, rpm_env, run_dnf, set_repos

pytestmark = pytest.mark.integration

# rpm reads ~/.rpmmacros once, when the rpm module loads, so HOME must be
# right before "import dnf": hence a fresh interpreter.  Prints JSON.
API_SCRIPT = r"""
import json, os, sys
import dnf, dnf.callback, dnf.conf

root, spec = sys.argv[1], sys.argv[2]
errors = []

class Progress(dnf.callback.TransactionProgress):
    def error(self, message):  # the only place scriptlet failures arrive
        errors.append(message)

# Conf first, then Base(conf): a bare dnf.Base() detects releasever from
# installroot "/" at once, which opens (and creates) the host's rpmdb.
conf = dnf.conf.Conf()
conf.installroot = root
conf.config_file_path = os.path.join(root, "etc/dnf/dnf.conf")
conf.read(priority=dnf.conf.PRIO_MAINCONFIG)
conf.reposdir = [os.path.join(root, "etc/yum.repos.d")]
# Unlike the CLI, dnf.Base prefixes none of these with installroot: at
# their defaults, history.sqlite, rpmdb_lock.pid and hawkey.log go to the
# host's /var/lib/dnf and /var/log.
conf.cachedir = os.path.join(root, "var/cache/dnf")
conf.persistdir = os.path.join(root, "var/lib/dnf")
conf.logdir = os.path.join(root, "var/log")
conf.assumeyes = True  # import keys, but only from the repo's own gpgkey=
conf.substitutions["releasever"] = "22.03"
base = dnf.Base(conf)
base.read_all_repos()
base.fill_sack(load_system_repo=True, load_available_repos=True)
out = {"installed": sorted(str(p) for p in base.sack.query().installed()),
       "conf": {k: getattr(conf, k) for k in ("installroot", "cachedir", "persistdir",
                "logdir", "gpgcheck", "best", "installonly_limit")}}
base.install(spec)
base.resolve()
pkgs = list(base.transaction.install_set)
base.download_packages(pkgs)
checks = []
for pkg in pkgs:
    code, msg = base.package_signature_check(pkg)
    if code == 1:  # signed, key not in the rpmdb yet: import from gpgkey=
        base.package_import_key(pkg, askcb=lambda *args: True)
        code, msg = base.package_signature_check(pkg)
    checks.append([str(pkg), code, msg])
out["signature_checks"] = checks
if all(check[1] == 0 for check in checks):
    base.do_transaction(display=Progress())
out["errors"] = errors
base.close()
print(json.dumps(out))
"""


def dnf_api(root, home, spec: str) -> dict:
    result = subprocess.run([sys.executable, "-c", API_SCRIPT, str(root), spec],
                            env=rpm_env(home), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def dnf(root, home, *args: str) -> subprocess.CompletedProcess:
    return run_dnf(root, home, "--disablerepo=*", "--enablerepo=lab", *args)


def _host_dnf_state():
    """What dnf or rpm could write on the host if not confined to a root."""
    state = {path: sorted(os.listdir(path)) if os.path.isdir(path) else None
             for path in ("/var/lib/rpm", "/var/lib/dnf", "/var/cache/dnf")}
    state["/var/log/hawkey.log"] = os.path.exists("/var/log/hawkey.log")
    return state


def test_dnf_api_on_a_clone(rpm_managed_root, rpm_repos, rpm_home):
    pytest.importorskip("dnf")
    root = rpm_managed_root.root
    host_before = _host_dnf_state()
    set_repos(root, {"lab": rpm_repos["signed"]})
    assert dnf(root, rpm_home, "install", "demo-app-1.1").returncode == 0

    out = dnf_api(root, rpm_home, "demo-app-1.2")
    assert "demo-app-1.1-1.noarch" in out["installed"]
    assert out["conf"]["persistdir"] == str(root / "var/lib/dnf")
    assert out["signature_checks"] == [["demo-app-1.2-1.noarch", 0, ""]]
    # The failing %post does not raise: it only reaches Progress.error().
    assert out["errors"] == ["Error in POSTIN scriptlet in rpm package demo-app"]
    assert installed_version(root, rpm_home, "demo-app") == "1.2-1"
    assert (root / "var/lib/dnf/history.sqlite").is_file()
    assert _host_dnf_state() == host_before  # nothing of it touched the host


def test_dnf_api_refuses_unsigned(rpm_managed_root, rpm_repos, rpm_home):
    pytest.importorskip("dnf")
    root = rpm_managed_root.root
    set_repos(root, {"lab": rpm_repos["unsigned"]})
    out = dnf_api(root, rpm_home, "demo-app-1.0")
    [[_nevra, code, message]] = out["signature_checks"]
    assert code == 2 and "not signed" in message
    assert installed_version(root, rpm_home, "demo-app") == ""


@pytest.mark.parametrize("lock, message", [
    ("var/cache/dnf/metadata_lock.pid", "metadata already locked by %d"),
    ("var/lib/dnf/rpmdb_lock.pid", "rpmdb already locked by %d"),
])
def test_dnf_pid_locks(rpm_managed_root, rpm_repos, rpm_home, lock, message):
    root = rpm_managed_root.root
    set_repos(root, {"lab": rpm_repos["signed"]})
    path = root / lock
    path.parent.mkdir(parents=True, exist_ok=True)
    # Our own (live) pid, no flock held: that is all dnf's lock consists of.
    path.write_text(str(os.getpid()))
    # exit_on_lock: fail at once instead of "Waiting for process with pid".
    result = dnf(root, rpm_home, "--setopt=exit_on_lock=True", "install", "demo-app-1.0")
    assert result.returncode == 200, result.stdout  # dnf's lock exit code
    assert message % os.getpid() in result.stdout.lower()  # "RPMDB already..."
    assert installed_version(root, rpm_home, "demo-app") == ""
    assert path.read_text() == str(os.getpid())  # dnf never breaks a live lock


def test_rpm_transaction_lock(rpm_managed_root, rpm_repos, rpm_home):
    root = rpm_managed_root.root
    set_repos(root, {"lab": rpm_repos["signed"]})
    lock = root / "var/lib/rpm/.rpm.lock"
    with open(str(lock), "r+") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)  # what rpm itself takes (F_SETLK)
        # rpm 4.18 does not wait for its lock: it fails at once, and so
        # does dnf's transaction.  Waiting is the caller's job.
        erase = subprocess.run(["rpm", "--root", str(root), "-e", "lab-base"],
                               env=rpm_env(rpm_home), capture_output=True, text=True)
        assert erase.returncode == 1
        assert "can't create transaction lock on %s" % lock in erase.stderr
        install = dnf(root, rpm_home, "install", "demo-app-1.0")
        # Here the first victim is dnf's key import, so dnf misreports the
        # busy lock as "Key import failed ... GPG check FAILED".
        assert install.returncode != 0, install.stdout
        assert "can't create transaction lock on %s" % lock in install.stdout
        # Queries do not take the lock.
        assert installed_version(root, rpm_home, "lab-base") == "1.0-1"
    assert installed_version(root, rpm_home, "demo-app") == ""
