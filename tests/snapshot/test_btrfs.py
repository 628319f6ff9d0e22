"""BtrfsSnapshotter on a real btrfs: snapshots, live restore, retention."""

import hashlib
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

from patchd.core import errors, names
from patchd.core.model import SnapshotRef
from patchd.snapshot.btrfs import WORK_NAME, BtrfsSnapshotter
from patchd.snapshot.restore import restore_paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXCLUDE = "var/lib/patchd"

# security.capability v2 (linux/capability.h vfs_cap_data): effective flag,
# permitted = CAP_NET_RAW (bit 13).
CAP_NET_RAW = struct.pack("<IIIII", 0x02000000 | 0x1, 1 << 13, 0, 0, 0)
# system.posix_acl_access v2 (linux/posix_acl_xattr.h): user::rw-,
# user:1000:r--, group::r--, mask::r--, other::---.
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in (
    (0x01, 6, 0xFFFFFFFF), (0x02, 4, 1000), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
    (0x20, 0, 0xFFFFFFFF)))


def pre_ref(tx="tx1"):
    return SnapshotRef(names.snapshot_name(tx, names.SNAPSHOT_PRE))


def fingerprint(top, skip=(), times=True):
    """{path: (type, mode, uid, gid, size, sha256, link, rdev, xattrs, mtime)}."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        for name in sorted(dirnames + filenames) + ([] if rel_dir != "." else ["."]):
            path = os.path.normpath(os.path.join(dirpath, name))
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            st = os.lstat(path)
            digest = link = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            if stat.S_ISLNK(st.st_mode):
                link = os.readlink(path)
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in os.listxattr(path, follow_symlinks=False)))
            result[rel] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid,
                           None if stat.S_ISDIR(st.st_mode) else st.st_size, digest, link,
                           st.st_rdev, xattrs, st.st_mtime_ns if times else None)
        dirnames[:] = [d for d in dirnames
                       if not any(os.path.normpath(os.path.join(rel_dir, d)) == s
                                  for s in skip)]
    return result


def identities(top):
    """{path: (inode, ctime)}: any replacement or metadata write changes it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames + ["."]:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_ino, st.st_ctime_ns)
    return out


def write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)


def populate(root):
    j = lambda rel: os.path.join(root, rel)  # noqa: E731
    rnd = random.Random(7)
    write(j("etc/hostname"), "pre\n")
    write(j("etc/conf.d/a.conf"), "a=1\n")
    write(j("etc/conf.d/b.conf"), "b=1\n")
    write(j("usr/bin/tool"), b"#!/bin/sh\necho tool\n", 0o755)
    write(j("usr/bin/suid"), b"\x7fELF suid", 0o4755)
    write(j("usr/bin/capped"), b"\x7fELF capped", 0o755)
    os.setxattr(j("usr/bin/capped"), "security.capability", CAP_NET_RAW)
    write(j("usr/lib/libx.so.1"), bytes(rnd.getrandbits(8) for _ in range(100000)))
    os.symlink("libx.so.1", j("usr/lib/libx.so"))
    write(j("usr/lib/big.bin"), os.urandom(3 << 20))
    write(j("usr/share/doc/pkg/README"), "readme\n")
    write(j("usr/share/doc/pkg/changelog"), "changes\n" * 500)
    write(j("data/hl1"), "hardlinked\n")
    os.link(j("data/hl1"), j("data/hl2"))
    os.makedirs(j("run"))
    os.mkfifo(j("run/fifo"))
    os.makedirs(j("dev"))
    os.mknod(j("dev/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(j("run/sock"))
    sock.close()
    write(j("dir-to-symlink/inner"), "inner\n")
    write(j("file-to-dir"), "was a file\n")
    write(j("olddir/sub/deep/file"), "deep\n")
    write(j("swap_a/which"), "a\n")
    write(j("swap_b/which"), "b\n")
    write(j("keep/one"), "1\n")
    write(j("keep/two"), "2\n")
    os.mkdir(j("keep/sub"))
    write(j("xattrs/file"), "x\n")
    os.setxattr(j("xattrs/file"), "user.test", b"1")
    os.setxattr(j("xattrs"), "user.dir", b"d")
    write(j("xattrs/acl"), "acl\n", 0o640)
    os.setxattr(j("xattrs/acl"), "system.posix_acl_access", ACL)
    write(j("owned"), "owned\n")
    os.chown(j("owned"), 1000, 1000)
    write(j("spaced name \u00fc.txt"), "unicode\n")
    write(j("inplace.bin"), os.urandom(200000))
    write(j("var/lib/dpkg/status"), "Package: demo\nVersion: 1.1\n")
    write(j(EXCLUDE + "/journal.db"), "journal v1\n")
    os.mkdir(j("emptydir"))
    os.chmod(j("emptydir"), 0o1777)
    os.mkdir(j("private"), 0o700)
    write(j("private/secret"), "s\n", 0o600)
    os.chmod(j("private"), 0o500)   # restore must still write into it
    os.makedirs(j("tree"))
    for i in range(40):
        write(j("tree/d{}/f{}".format(i % 5, i)), "file {}\n".format(i))


def mutate(root, outside):
    j = lambda rel: os.path.join(root, rel)  # noqa: E731
    write(j("etc/hostname"), "pst\n")                       # same size, new bytes
    with open(j("etc/conf.d/a.conf"), "a") as f:
        f.write("a=2\n")
    os.chown(j("etc/conf.d/a.conf"), 1234, 1234)
    os.rename(j("etc/conf.d/b.conf"), j("etc/b.conf"))      # moved to another dir
    write(j("etc/new.conf"), "new\n")
    subprocess.run(["rm", "-rf", j("usr/share/doc")], check=True)
    os.chmod(j("usr/bin/tool"), 0o700)
    os.chmod(j("usr/bin/suid"), 0o755)                      # setuid dropped
    os.removexattr(j("usr/bin/capped"), "security.capability")
    os.unlink(j("usr/lib/libx.so"))
    os.symlink("libx.so.2", j("usr/lib/libx.so"))
    write(j("usr/lib/libx.so.2"), "v2")
    with open(j("usr/lib/big.bin"), "r+b") as f:
        f.seek(1 << 20)
        f.write(b"corrupt")
    with open(j("data/hl2"), "a") as f:                     # in place, both names
        f.write("appended\n")
    os.unlink(j("run/fifo"))
    write(j("run/fifo"), "now a file\n")
    os.unlink(j("dev/null"))
    subprocess.run(["rm", "-rf", j("dir-to-symlink")], check=True)
    os.symlink(outside, j("dir-to-symlink"))                # points out of the root
    os.unlink(j("file-to-dir"))
    write(j("file-to-dir/child/grandchild"), "now a dir\n")
    os.makedirs(j("newplace"))
    os.rename(j("olddir"), j("newplace/olddir-moved"))      # nested rename of a tree
    os.rename(j("swap_a"), j("swap_tmp"))
    os.rename(j("swap_b"), j("swap_a"))
    os.rename(j("swap_tmp"), j("swap_b"))
    os.rename(j("keep"), j("kept-away"))                    # new dir, same name
    os.mkdir(j("keep"))
    os.rename(j("kept-away/one"), j("keep/one"))
    write(j("a/b/c/d/e/new"), "nested new\n")
    os.removexattr(j("xattrs/file"), "user.test")
    os.setxattr(j("xattrs/file"), "user.other", b"2")
    os.setxattr(j("xattrs"), "user.dir", b"changed")
    os.removexattr(j("xattrs/acl"), "system.posix_acl_access")
    os.chown(j("owned"), 0, 0)
    os.unlink(j("spaced name \u00fc.txt"))
    st = os.stat(j("inplace.bin"))                          # same size and mtime
    with open(j("inplace.bin"), "r+b") as f:
        f.seek(4096)
        f.write(b"X" * 4096)
    os.utime(j("inplace.bin"), ns=(st.st_atime_ns, st.st_mtime_ns))
    write(j("var/lib/dpkg/status"), "Package: demo\nVersion: 1.2\nStatus: half-configured\n")
    write(j(EXCLUDE + "/journal.db"), "journal v2: rolling back\n")
    write(j(EXCLUDE + "/new.log"), "log\n")
    os.chmod(j("emptydir"), 0o755)
    write(j("private/secret"), "changed while its directory is read-only\n", 0o600)
    subprocess.run(["rm", "-rf", j("tree/d3")], check=True)
    for i in range(0, 40, 3):
        path = j("tree/d{}/f{}".format(i % 5, i))
        if os.path.exists(path):
            write(path, "changed {}\n".format(i))
    os.utime(j("tree"), ns=(1, 1))


@pytest.fixture
def scenario(btrfs_root):
    root, snapdir = btrfs_root
    outside = os.path.join(os.path.dirname(root), "outside")
    os.mkdir(outside)
    write(os.path.join(outside, "untouched"), "outside the root\n")
    populate(root)
    snap = BtrfsSnapshotter(root, snapdir, exclude=[EXCLUDE])
    ref = snap.take(pre_ref())
    mutate(root, outside)
    return snap, ref, root, outside


def assert_restored(root, ref, mutated_excluded):
    assert fingerprint(root, skip=[EXCLUDE]) == fingerprint(ref.path, skip=[EXCLUDE])
    assert fingerprint(os.path.join(root, EXCLUDE)) == mutated_excluded


@pytest.mark.integration
def test_take_makes_a_read_only_snapshot(btrfs_root):
    import btrfsutil

    root, snapdir = btrfs_root
    write(os.path.join(root, "f"), "x")
    snap = BtrfsSnapshotter(root, os.path.join(snapdir, "made/on/demand"))
    ref = snap.take(pre_ref())
    assert ref == SnapshotRef(ref.name, "btrfs", os.path.join(snapdir, "made/on/demand",
                                                              ref.name))
    assert btrfsutil.get_subvolume_read_only(ref.path)
    first = btrfsutil.subvolume_info(ref.path).id
    write(os.path.join(root, "f"), "y")
    again = snap.take(pre_ref())                  # stale one replaced
    assert btrfsutil.subvolume_info(again.path).id != first
    assert open(os.path.join(again.path, "f")).read() == "y"


@pytest.mark.integration
def test_restore_makes_the_live_root_equal_to_the_snapshot(scenario):
    snap, ref, root, outside = scenario
    mutated_excluded = fingerprint(os.path.join(root, EXCLUDE))
    before_outside = fingerprint(outside)
    calls = []
    snap.restore(ref, lambda fraction, message: calls.append((fraction, message)))

    assert_restored(root, ref, mutated_excluded)
    assert fingerprint(outside) == before_outside
    hl1, hl2 = (os.lstat(os.path.join(root, "data", n)) for n in ("hl1", "hl2"))
    assert hl1.st_ino == hl2.st_ino                 # hardlink kept
    fractions = [f for f, _m in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(calls) > 40                          # at least one per path
    failed = os.path.join(snap.snapshot_dir, names.snapshot_name("tx1", names.SNAPSHOT_FAILED))
    assert open(os.path.join(failed, "etc/hostname")).read() == "pst\n"
    assert not os.path.exists(os.path.join(snap.snapshot_dir, WORK_NAME))
    leftovers = [n for _d, ds, fs in os.walk(root) for n in ds + fs if n.startswith(".patchd")]
    assert leftovers == []


@pytest.mark.integration
def test_second_restore_is_a_no_op(scenario):
    snap, ref, root, _outside = scenario
    snap.restore(ref)
    before = identities(root)
    snap.restore(ref)
    assert identities(root) == before


@pytest.mark.integration
def test_restore_killed_midway_converges_on_rerun(scenario):
    snap, ref, root, _outside = scenario
    mutated_excluded = fingerprint(os.path.join(root, EXCLUDE))
    script = (
        "import os, signal, sys\n"
        "sys.path.insert(0, {repo!r})\n"
        "from patchd.core.model import SnapshotRef\n"
        "from patchd.snapshot.btrfs import BtrfsSnapshotter\n"
        "def progress(fraction, message):\n"
        "    if fraction >= 0.5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "snap = BtrfsSnapshotter({root!r}, {snapdir!r}, exclude=[{exclude!r}])\n"
        "snap.restore(SnapshotRef({name!r}, 'btrfs', {path!r}), progress)\n"
    ).format(repo=REPO, root=root, snapdir=snap.snapshot_dir, exclude=EXCLUDE,
             name=ref.name, path=ref.path)
    proc = subprocess.run([sys.executable, "-c", script], stderr=subprocess.PIPE)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert fingerprint(root, skip=[EXCLUDE]) != fingerprint(ref.path, skip=[EXCLUDE])

    snap.restore(ref)
    assert_restored(root, ref, mutated_excluded)


@pytest.mark.integration
def test_restore_of_a_missing_snapshot_fails_loudly(btrfs_root):
    root, snapdir = btrfs_root
    snap = BtrfsSnapshotter(root, snapdir)
    with pytest.raises(errors.RollbackFailed, match="does not exist"):
        snap.restore(pre_ref("nope"))


@pytest.mark.integration
def test_live_writes_during_restore_are_caught_by_the_next_pass(scenario):
    snap, ref, root, _outside = scenario
    mutated_excluded = fingerprint(os.path.join(root, EXCLUDE))
    writes = []

    def progress(fraction, message):
        if fraction > 0.3 and not writes:     # a service writes once, mid-pass
            writes.append(message)
            write(os.path.join(root, "etc/hostname"), "written by a service\n")
    snap.restore(ref, progress)
    assert writes
    assert_restored(root, ref, mutated_excluded)


@pytest.mark.integration
def test_restore_fails_loudly_if_the_root_keeps_changing(scenario):
    snap, ref, root, _outside = scenario
    counter = []

    def progress(fraction, message):
        counter.append(1)
        write(os.path.join(root, "var/log/busy.log"), "line {}\n".format(len(counter)))
    with pytest.raises(errors.RollbackFailed, match="keep changing: .*var/log/busy.log"):
        snap.restore(ref, progress)


@pytest.mark.integration
def test_list_delete_prune(btrfs_root):
    import btrfsutil

    root, snapdir = btrfs_root
    snap = BtrfsSnapshotter(root, snapdir)
    made = []
    # t2 failed late (its "failed" snapshot is newer than t3's "pre"): it is
    # still the older transaction.
    for tx, role in (("t1", "pre"), ("t2", "pre"), ("t3", "pre"), ("t2", "failed"),
                     ("t4", "pre")):
        made.append(snap.take(SnapshotRef(names.snapshot_name(tx, role))))
    btrfsutil.create_snapshot(root, os.path.join(snapdir, "not-ours"), read_only=True)
    os.mkdir(os.path.join(snapdir, names.snapshot_name("t9", "pre")))   # a plain dir
    assert [r.name for r in snap.list()] == [r.name for r in made]

    snap.delete(made[-1])
    snap.delete(made[-1])                           # missing is fine
    assert [r.name for r in snap.list()] == [r.name for r in made[:-1]]

    deleted = snap.prune(keep=1, protect=["t1"])
    assert [r.name for r in deleted] == [made[1].name, made[3].name]
    assert [r.name for r in snap.list()] == [made[0].name, made[2].name]
    assert os.path.isdir(os.path.join(snapdir, "not-ours"))
    assert [r.name for r in snap.prune(keep=0)] == [made[0].name, made[2].name]
    assert snap.list() == [] and snap.prune(keep=0) == []

@pytest.mark.integration
def test_root_must_be_a_btrfs_subvolume(btrfs_root, tmp_path):
    root, snapdir = btrfs_root
    os.mkdir(os.path.join(root, "plain"))
    with pytest.raises(errors.SnapshotFailed, match="not a subvolume"):
        BtrfsSnapshotter(os.path.join(root, "plain"), snapdir)
    with pytest.raises(errors.SnapshotFailed, match="not on a btrfs"):
        BtrfsSnapshotter(str(tmp_path), str(tmp_path / "snaps"))


@pytest.mark.integration
def test_restore_paths_rejects_escaping_paths(tmp_path):
    for bad in ("/etc/passwd", "a/../../etc"):
        with pytest.raises(ValueError):
            restore_paths(str(tmp_path), str(tmp_path), [bad])
    with pytest.raises(ValueError):
        restore_paths(str(tmp_path), str(tmp_path), ["a"], exclude=["."])


def test_restore_paths_never_follows_a_planted_symlink(tmp_path):
    src, tgt, outside = (str(tmp_path / n) for n in ("src", "tgt", "outside"))
    write(os.path.join(src, "d/f"), "from the snapshot\n")
    write(os.path.join(outside, "x"), "victim\n")
    os.mkdir(tgt)
    os.symlink(outside, os.path.join(tgt, "d"))
    # "d/x" is not in the source: deleting it must not reach outside/x, and
    # "d/f" must land in a real directory "d", not through the link.
    restore_paths(src, tgt, ["d/x", "d/f"])
    assert sorted(os.listdir(outside)) == ["x"]
    assert not os.path.islink(os.path.join(tgt, "d"))
    assert open(os.path.join(tgt, "d/f")).read() == "from the snapshot\n"


def test_restore_paths_skips_excluded_paths(tmp_path):
    src, tgt = str(tmp_path / "src"), str(tmp_path / "tgt")
    write(os.path.join(src, "keep/me"), "old\n")
    write(os.path.join(tgt, "keep/me"), "new\n")
    write(os.path.join(tgt, "extra"), "x\n")
    result = restore_paths(src, tgt, [".", "keep/me", "keep"], exclude=["keep"])
    assert open(os.path.join(tgt, "keep/me")).read() == "new\n"
    assert not os.path.exists(os.path.join(tgt, "extra"))
    assert "extra" in result.changed


@pytest.mark.integration
def test_timing_of_take_and_restore(btrfs_root):
    root, snapdir = btrfs_root
    rnd = random.Random(1)
    files = []
    for i in range(3000):
        rel = "usr/share/d{:02d}/sub{}/file{:04d}".format(i % 60, i % 3, i)
        write(os.path.join(root, rel), os.urandom(rnd.choice((512, 3000, 9000, 20000))))
        files.append(rel)
    snap = BtrfsSnapshotter(root, snapdir)
    start = time.perf_counter()
    ref = snap.take(pre_ref())
    took = time.perf_counter() - start
    for i, rel in enumerate(files[::3]):              # 1000 files touched
        path = os.path.join(root, rel)
        if i % 4 == 0:
            os.unlink(path)
        else:
            write(path, os.urandom(4000))
        write(os.path.join(root, "usr/new/n{:04d}".format(i)), "new")
    os.rename(os.path.join(root, "usr/share/d07"), os.path.join(root, "usr/d07-moved"))
    start = time.perf_counter()
    snap.restore(ref)
    restored = time.perf_counter() - start
    assert fingerprint(root) == fingerprint(ref.path)
    start = time.perf_counter()
    snap.restore(ref)
    again = time.perf_counter() - start
    print("\ntiming: take() {:.1f} ms; restore() {:.1f} ms for 3000 files with ~1300 "
          "changed; a second, no-op restore() {:.1f} ms"
          .format(took * 1000, restored * 1000, again * 1000))
