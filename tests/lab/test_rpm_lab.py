"""Self-tests of the rpm lab: the same catalogue, driven by real dnf and rpm.

They build the catalogue as rpms, publish signed and unsigned rpm-md
repositories (conftest ``rpm_repos``), clone the ``@rpm-template`` root and
run the dnf CLI against the clone, with HOME set to the lab's rpm home (see
rpmroots).  They also pin down how rpm differs from dpkg where patchd must
care: a failing %post is only a warning.  test_rpm_api.py covers the
python3-dnf API and the lock files.  Budget: under 10 s.
"""
from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from tests.lab.debs import DebSpec
from tests.lab.rpmroots import installed_version as rpm_q
from tests.lab.rpmroots import run_dnf, set_repos
from tests.lab.rpms import build_rpm, rpm_evr

pytestmark = pytest.mark.integration


def dnf(root, home, *args: str) -> subprocess.CompletedProcess:
    return run_dnf(root, home, "--disablerepo=*", "--enablerepo=lab", *args)


def postinst_log(root):
    log = root / "var/log/lab-postinst.log"
    return log.read_text().splitlines() if log.exists() else []


def qp(path, *args: str) -> str:
    # rpm -qp opens an rpmdb (its keyring) and creates one if missing: give
    # it a throw-away HOME so the host's ~/.rpmdb is never created.
    with tempfile.TemporaryDirectory(prefix="lab-rpm-qp-") as home:
        return subprocess.run(["rpm", "-qp"] + list(args) + [str(path)], check=True,
                              env=dict(os.environ, HOME=home), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout


def test_rpm_build_translates_the_deb_spec(tmp_path):
    spec = DebSpec("demo-x", "2:1.5-3", depends=("demo-lib (>= 1.0)", "alt-a | alt-b (<< 2)"),
                   conflicts=("demo-y (>> 0.5)",), provides=("demo-virt (= 1.5)",),
                   files=(("/usr/bin/x", "#!/bin/sh\n"), ("/etc/x 100%.conf", "")),
                   preinst='printf "%s\\n" pre', postinst="true")
    first = build_rpm(spec, tmp_path / "a")
    assert first.name == "demo-x-1.5-3.noarch.rpm"
    assert first.read_bytes() == build_rpm(spec, tmp_path / "b").read_bytes()
    assert qp(first, "--qf", "%{EPOCH}:%{VERSION}-%{RELEASE} %{ARCH}") == "2:1.5-3 noarch"
    requires = qp(first, "--requires").splitlines()
    assert "demo-lib >= 1.0" in requires and "(alt-a or alt-b < 2)" in requires
    assert "/bin/sh" in requires  # from the scriptlets; lab-base provides it
    assert qp(first, "--conflicts").split("\n")[0] == "demo-y > 0.5"
    assert "demo-virt = 1.5" in qp(first, "--provides")
    modes = qp(first, "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES}\n]")
    assert "-rwxr-xr-x root /usr/bin/x" in modes
    assert "-rw-r--r-- root /etc/x 100%.conf" in modes
    scripts = qp(first, "--scripts")
    assert 'printf "%s\\n" pre' in scripts and "set -- configure" in scripts
    assert '"demo-x 2:1.5-3 configured" >>' in scripts
    with pytest.raises(ValueError):
        rpm_evr("1.0-beta-2")  # dpkg allows it, rpm cannot express it


def test_lab_base_is_a_shell(lab_base_rpm):
    assert lab_base_rpm.name == "lab-base-1.0-1.noarch.rpm"
    assert [r for r in qp(lab_base_rpm, "--requires").splitlines()
            if not r.startswith("rpmlib(")] == []
    provides = qp(lab_base_rpm, "--provides").splitlines()
    assert {"/bin/sh", "/usr/bin/sh"} <= set(provides)
    files = qp(lab_base_rpm, "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]").splitlines()
    for name in ("/bin/sh", "/usr/bin/sleep", "/usr/bin/cat", "/usr/bin/["):
        assert "lrwxrwxrwx " + name in files
    assert "drwxrwxrwt /tmp" in files and "drwxr-xr-x /var/log" in files


def test_template_has_rpmdb_in_var_lib_rpm(rpm_template_root, rpm_home, tmp_path):
    import btrfsutil

    root = rpm_template_root
    assert btrfsutil.get_subvolume_read_only(str(root))
    assert rpm_q(root, rpm_home, "lab-base") == "1.0-1"
    assert (root / "var/lib/rpm/rpmdb.sqlite").is_file()
    assert not (root / "root/.rpmdb").exists()
    assert list((root / "etc/yum.repos.d").iterdir()) == []
    assert 'VERSION_ID="22.03"' in (root / "etc/os-release").read_text()
    assert "gpgcheck=1" in (root / "etc/dnf/dnf.conf").read_text()
    # Why rpm_home exists: with Debian's default %_dbpath (~/.rpmdb) rpm
    # looks for <root>/<HOME>/.rpmdb and sees nothing installed.
    assert rpm_q(root, tmp_path, "lab-base") == ""


def test_install_from_signed_repo(rpm_managed_root, rpm_repos, rpm_home):
    root = rpm_managed_root.root
    host_log_before = os.path.exists("/var/log/lab-postinst.log")
    set_repos(root, {"lab": rpm_repos["signed"]})
    result = dnf(root, rpm_home, "install", "demo-app-1.0")
    assert result.returncode == 0, result.stdout
    assert "Importing GPG key" in result.stdout
    assert rpm_q(root, rpm_home, "demo-app") == "1.0-1"
    assert postinst_log(root) == ["demo-app 1.0 configured"]
    assert (root / "usr/share/doc/demo-app/VERSION").read_text() == "1.0\n"
    assert os.stat(str(root / "usr/bin/demo-app")).st_mode & 0o777 == 0o755
    # Scriptlets ran chrooted, and the dnf CLI kept its cache in the root.
    assert os.path.exists("/var/log/lab-postinst.log") == host_log_before
    assert (root / "var/cache/dnf/lab.solv").is_file()
    assert not (root / str(root).lstrip("/")).exists()


@pytest.mark.parametrize("repo", ["unsigned", "other-key"])
def test_bad_signature_is_refused(rpm_managed_root, rpm_repos, rpm_home, repo):
    root = rpm_managed_root.root
    set_repos(root, {"lab": rpm_repos[repo]})
    result = dnf(root, rpm_home, "install", "demo-app-1.0")
    assert result.returncode != 0, result.stdout
    assert "GPG check FAILED" in result.stdout
    assert rpm_q(root, rpm_home, "demo-app") == "" and postinst_log(root) == []


def test_failing_post_is_not_fatal(rpm_managed_root, rpm_repos, rpm_home):
    """rpm has no half-configured state: patchd must catch this itself."""
    root = rpm_managed_root.root
    set_repos(root, {"lab": rpm_repos["signed"]})
    assert dnf(root, rpm_home, "install", "demo-app-1.1").returncode == 0
    result = dnf(root, rpm_home, "install", "demo-app-1.2")
    assert result.returncode == 0, result.stdout
    assert "%post(demo-app-1.2-1.noarch) scriptlet failed, exit status 1" in result.stdout
    assert rpm_q(root, rpm_home, "demo-app") == "1.2-1"
    assert postinst_log(root)[-1] == "demo-app 1.2 configured"


def test_failing_pre_keeps_old_version(rpm_managed_root, rpm_repos, rpm_home):
    root = rpm_managed_root.root
    set_repos(root, {"lab": rpm_repos["signed"]})
    assert dnf(root, rpm_home, "install", "demo-tool-1.0").returncode == 0
    result = dnf(root, rpm_home, "install", "demo-tool-3.0")
    assert result.returncode == 1, result.stdout
    assert "%prein(demo-tool-3.0-1.noarch) scriptlet failed" in result.stdout
    assert "Error: Transaction failed" in result.stdout
    assert rpm_q(root, rpm_home, "demo-tool") == "1.0-1"
    assert "level=1" in (root / "etc/demo-tool.conf").read_text()
    assert postinst_log(root) == ["demo-tool 1.0 configured"]


def test_missing_dependency_is_refused(rpm_managed_root, rpm_repos, rpm_home):
    root = rpm_managed_root.root
    set_repos(root, {"lab": rpm_repos["signed"]})
    result = dnf(root, rpm_home, "install", "demo-broken")
    assert result.returncode == 1, result.stdout
    assert "nothing provides does-not-exist >= 9" in result.stdout
    assert rpm_q(root, rpm_home, "demo-broken") == ""


def test_debian_style_scriptlet_runs_unchanged(rpm_managed_root, rpm_repos, rpm_home):
    """demo-slow's postinst tests "$1 = configure" and calls sleep and cat:
    the argument translation and lab-base's applets make it work."""
    root = rpm_managed_root.root
    set_repos(root, {"lab": rpm_repos["signed"]})
    (root / "etc/demo-slow.sleep").write_text("0\n")
    result = dnf(root, rpm_home, "install", "demo-slow-1.0")
    assert result.returncode == 0 and "scriptlet failed" not in result.stdout, result.stdout
    assert postinst_log(root) == ["demo-slow 1.0 configured", "demo-slow 1.0 finished"]
