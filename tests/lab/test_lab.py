"""Self-tests of the lab: if these fail, no integration result can be trusted.

They drive real apt-get (LAB-NOTES approach A: host apt, state in the root,
dpkg chrooted) against lab repositories, and check the lab's own tools:
package building, repository signing, fingerprints and btrfs cleanup.
Budget: the whole module well under 20 s.
"""
from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from tests.lab.aptrepo import AptRepo, GpgKey
from tests.lab.btrfs import LoopBtrfs, loop_devices_for, mounts_below
from tests.lab.debs import DebSpec, build_deb
from tests.lab.fingerprint import diff_fingerprints, tree_fingerprint
from tests.lab.roots import set_sources, write_apt_config

pytestmark = pytest.mark.integration


def apt_get(root: pathlib.Path, conf_dir: pathlib.Path, *args: str):
    """Run host apt-get confined to ``root`` (approach A)."""
    conf = write_apt_config(root, conf_dir / "apt.conf")
    env = dict(os.environ, APT_CONFIG=str(conf), DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "-q", "-y",
            "-o", "Dir=%s/" % root,
            "-o", "Dir::Etc::SourceList=%s/etc/apt/sources.list" % root,
            "-o", "Dir::Etc::SourceParts=%s/etc/apt/sources.list.d" % root,
            "-o", "DPkg::Chroot-Directory=%s/" % root] + list(args)
    return subprocess.run(argv, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def dpkg_status(root: pathlib.Path, name: str) -> dict:
    out = subprocess.run(["dpkg", "--root=%s" % root, "-s", name], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def postinst_log(root: pathlib.Path):
    log = root / "var/log/lab-postinst.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def repos(lab_dir, catalog_debs, gpg_key):
    base = lab_dir / "repos"  # lab_dir: readable by apt's _apt sandbox user
    signed, unsigned = AptRepo(base / "signed"), AptRepo(base / "unsigned")
    for repo, key in ((signed, gpg_key), (unsigned, None)):
        repo.add(catalog_debs.values())
        repo.publish(key)
    keyring = gpg_key.export(base / "lab-repo.gpg")
    return {"signed": signed.source_line(keyring=keyring),
            "unsigned": unsigned.source_line(trusted=True),
            "signed_repo": signed, "base": base}


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
def test_install_in_clone(managed_root, repos, kind):
    root = managed_root.root
    host_log_before = os.path.exists("/var/log/lab-postinst.log")
    set_sources(root, [repos[kind]])
    update = apt_get(root, managed_root.state_dir, "update", "--error-on=any")
    assert update.returncode == 0, update.stdout
    install = apt_get(root, managed_root.state_dir, "install", "demo-app=1.0")
    assert install.returncode == 0, install.stdout
    # Everything apt reads is readable by _apt, so it stayed sandboxed.
    assert "unsandboxed" not in update.stdout + install.stdout

    status = dpkg_status(root, "demo-app")
    assert status["Status"] == "install ok installed"
    assert status["Version"] == "1.0"
    assert postinst_log(root) == ["demo-app 1.0 configured"]
    assert (root / "usr/share/doc/demo-app/VERSION").read_text() == "1.0\n"
    # The postinst ran chrooted: the host's /var/log is untouched.
    assert os.path.exists("/var/log/lab-postinst.log") == host_log_before


def test_failing_postinst_leaves_half_configured(managed_root, repos):
    root = managed_root.root
    set_sources(root, [repos["unsigned"]])
    assert apt_get(root, managed_root.state_dir, "update").returncode == 0
    assert apt_get(root, managed_root.state_dir, "install", "demo-app=1.1").returncode == 0
    upgrade = apt_get(root, managed_root.state_dir, "install", "demo-app=1.2")
    assert upgrade.returncode == 100, upgrade.stdout
    assert dpkg_status(root, "demo-app")["Status"] == "install ok half-configured"
    assert postinst_log(root)[-1] == "demo-app 1.2 configured"


def test_apt_config_ignores_host_hooks(managed_root):
    conf = write_apt_config(managed_root.root, managed_root.state_dir / "apt.conf")
    dump = subprocess.run(["apt-config", "dump"], env=dict(os.environ, APT_CONFIG=str(conf)),
                          check=True, stdout=subprocess.PIPE, text=True).stdout
    assert 'Dir "%s/";' % managed_root.root in dump
    assert "Post-Invoke" not in dump  # host hooks (PackageKit) did not leak in


def test_wrong_key_is_refused(managed_root, repos):
    root = managed_root.root
    with GpgKey() as other:
        wrong = other.export(managed_root.state_dir / "wrong.gpg")
    set_sources(root, [repos["signed_repo"].source_line(keyring=wrong)])
    strict = apt_get(root, managed_root.state_dir, "update", "--error-on=any")
    assert strict.returncode == 100, strict.stdout
    assert "NO_PUBKEY" in strict.stdout
    lists = root / "var/lib/apt/lists"
    assert not any(p.name.endswith("_Packages") for p in lists.iterdir())


def test_fingerprint_sees_every_change(managed_root, template_root):
    root = managed_root.root
    before = tree_fingerprint(root)
    assert diff_fingerprints(tree_fingerprint(template_root), before) == []
    (root / "etc/hostname").write_text("changed\n")
    os.chmod(str(root / "etc/debian_version"), 0o600)
    (root / "etc/motd").unlink()
    (root / "etc/new-file").write_text("x")
    os.symlink("/nowhere", str(root / "etc/new-link"))
    diff = diff_fingerprints(before, tree_fingerprint(root))
    assert [line.split()[0] + " " + line.split()[1].rstrip(":") for line in diff] == [
        "changed etc/debian_version", "changed etc/hostname", "removed etc/motd",
        "added etc/new-file", "added etc/new-link"]
    assert "mode 0644 -> 0600" in diff[0]
    assert "content" in diff[1] and "size" in diff[1]


def test_loop_btrfs_cleans_up_after_errors(tmp_path):
    with pytest.raises(RuntimeError, match="body failed"):
        with LoopBtrfs(tmp_path, size="256M") as fs:
            image, mnt = fs.image, fs.mountpoint
            assert fs.loop_device in loop_devices_for(image)
            inner = mnt / "inner"
            inner.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "lab-inner", str(inner)], check=True)
            raise RuntimeError("body failed")
    assert mounts_below(tmp_path) == []
    assert loop_devices_for(image) == []
    assert not image.exists() and not mnt.exists()

    # A setup that fails half-way (image too small for btrfs) leaves nothing.
    with pytest.raises(subprocess.CalledProcessError):
        with LoopBtrfs(tmp_path, size="1M"):
            pass
    assert list(tmp_path.iterdir()) == [] and mounts_below(tmp_path) == []


def test_debs_are_valid_and_reproducible(tmp_path):
    for bad in (dict(name="Bad_Name"), dict(version="one"), dict(version="1.0 beta"),
                dict(depends=("lib (>> )",)), dict(files=(("rel/path", ""),)),
                dict(depends="demo-lib")):
        fields = dict(name="demo-x", version="1.0")
        fields.update(bad)
        with pytest.raises(ValueError):
            DebSpec(**fields)
    spec = DebSpec("demo-x", "1:1.0-1", files=(("/usr/bin/x", "#!/bin/sh\n"), ("/etc/x", "")))
    first = build_deb(spec, tmp_path / "a")
    assert first.name == "demo-x_1.0-1_all.deb"
    assert first.read_bytes() == build_deb(spec, tmp_path / "b").read_bytes()
    listing = subprocess.run(["dpkg-deb", "-c", str(first)], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
    modes = {line.split()[-1]: (line.split()[0], line.split()[1]) for line in listing.splitlines()}
    assert modes["./usr/bin/x"] == ("-rwxr-xr-x", "root/root")
    assert modes["./etc/x"] == ("-rw-r--r--", "root/root")
