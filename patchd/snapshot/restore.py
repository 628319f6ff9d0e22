"""Make chosen paths of a live tree equal to a read-only source tree.

Live rollback: the source is the pre-transaction snapshot, the target the
running root, the paths those a send-stream diff names (sendstream.py).

Rules:
- Paths are relative; absolute paths and ".." are rejected (ValueError).
- No symlink is ever followed in either tree: walks open one directory at a
  time with O_NOFOLLOW relative to a directory fd, and entries are created and
  changed relative to their parent's fd, so a symlink planted in the target
  cannot redirect a write outside the root.
- Other filesystems and nested subvolumes (another st_dev) are not ours: never
  entered, replaced or removed, on either side. Excluded paths and all below
  them are neither read nor written.
- Each replacement is atomic: built under a temporary name in the same
  directory, then renamed over the old entry, so running programs see old or
  new, never half. A missing directory is built whole, then renamed in.
- Equal entries are left alone, so a second run changes nothing; a killed run
  leaves only temporary names, which the next diff names and removes.
- Directory metadata is set last, deepest first: adding or removing children
  changes a directory's mtime.
"""

import logging
import os
import stat
from collections import namedtuple
from typing import Callable, Iterable, List, Optional, Sequence

from patchd.core.ports import Progress
from patchd.snapshot import fileops
from patchd.snapshot.fileops import clean_path

__all__ = ["restore_paths", "RestoreResult", "clean_path"]

log = logging.getLogger(__name__)

RestoreResult = namedtuple("RestoreResult", "paths changed")
RestoreResult.__doc__ = "How many paths were asked for; the entries that had to change."


class _Restorer:
    """One restore run: the two trees, what changed, what is left to do."""

    def __init__(self, source_root: str, target_root: str, exclude: Sequence[str],
                 inode_paths: Optional[Callable[[int], Iterable[str]]]):
        self.src = fileops.Tree(source_root)
        self.tgt = fileops.Tree(target_root)
        self.exclude = tuple(exclude)
        self.inode_paths = inode_paths
        self.changed = []      # entries written or removed, in order
        self.fix_dirs = set()  # target dirs whose metadata must be set from source
        self.links = {}        # source inode -> (target path, target inode) copied this run
        self.extra = []        # other names of replaced hardlinked inodes
        self.done = set()

    def close(self) -> None:
        self.src.close()
        self.tgt.close()

    def excluded(self, rel: str) -> bool:
        return any(rel == ex or rel.startswith(ex + "/") for ex in self.exclude)

    def in_source(self, rel: str) -> bool:
        parts = fileops.split(rel)
        if not parts:
            return True
        with fileops.held(self.src.open_dir(parts[:-1])) as fd:
            st = fileops.lstat(fd, parts[-1]) if fd is not None else None
            return st is not None and st.st_dev == self.src.dev

    def run(self, paths: List[str], progress: Progress) -> RestoreResult:
        wanted = sorted(set(p for p in paths if not self.excluded(p)))
        gone = set(p for p in wanted if not self.in_source(p))
        kept = [p for p in wanted if p not in gone]
        # Removals deepest first, then (re)creation parents first.
        order = sorted(gone, key=lambda p: (-p.count("/"), p)) + \
            sorted(kept, key=lambda p: (p.count("/"), p))
        for i, rel in enumerate(order):
            self.one(rel, rel not in gone)
            progress((i + 1.0) / len(order), rel or ".")
        while self.extra:
            rel = self.extra.pop()
            if rel not in self.done and not self.excluded(rel):
                self.one(rel)
        self.fix_all_dirs()
        if not order:
            progress(1.0, "nothing to restore")
        return RestoreResult(len(order), tuple(self.changed))

    def one(self, rel: str, present: Optional[bool] = None) -> None:
        self.done.add(rel)
        try:
            if present if present is not None else self.in_source(rel):
                self.restore(rel)
            else:
                self.delete(rel)
        except OSError as e:
            raise OSError(e.errno, "{}: {}".format(rel or ".", e.strerror or e)) from e

    def delete(self, rel: str) -> None:
        parts = fileops.split(rel)
        with fileops.held(self.tgt.open_dir(parts[:-1])) as pfd:
            if pfd is None:
                return      # no real parent directory, so nothing at this path
            st = fileops.lstat(pfd, parts[-1])
            if st is not None and st.st_dev == self.tgt.dev:
                self.remove(pfd, parts[-1], rel, st)
                self.fix_dirs.add(fileops.parent(rel))

    def restore(self, rel: str) -> None:
        parts = fileops.split(rel)
        if not parts:
            with fileops.held(self.src.open_dir([])) as sfd, \
                    fileops.held(self.tgt.open_dir([])) as tfd:
                self.sync_dir(sfd, tfd, "", deep=False)
            self.fix_dirs.add("")
            return
        with fileops.held(self.src.open_dir(parts[:-1])) as spfd:
            if spfd is None:
                return      # not in the source after all: nothing to copy
            with fileops.held(self.target_parent(parts[:-1])) as tpfd:
                if tpfd is None:
                    log.warning("not restoring %s: its parent can't be made a directory",
                                rel)
                    return
                name = parts[-1]
                sst, tst = fileops.lstat(spfd, name), fileops.lstat(tpfd, name)
                self.sync(spfd, tpfd, name, sst, tst, rel, False)

    def target_parent(self, parts: List[str]) -> Optional[int]:
        fd = self.tgt.open_dir(parts)
        if fd is not None:
            return fd
        # An ancestor is missing or not a directory: restore it first (whole).
        for depth in range(1, len(parts) + 1):
            fd = self.tgt.open_dir(parts[:depth])
            if fd is None:
                self.restore("/".join(parts[:depth]))
            else:
                os.close(fd)
        return self.tgt.open_dir(parts)

    def sync(self, spfd, tpfd, name, sst, tst, rel, deep) -> None:
        """Make target entry ``name`` equal to source entry ``name``."""
        if sst is None or sst.st_dev != self.src.dev:
            return   # gone meanwhile, or a nested-subvolume placeholder
        if tst is not None and tst.st_dev != self.tgt.dev:
            log.warning("not restoring %s: another filesystem is mounted there", rel)
            return
        if stat.S_ISDIR(sst.st_mode):
            if tst is not None and stat.S_ISDIR(tst.st_mode):
                with fileops.opened(name, fileops.DIR_FLAGS, spfd) as sfd, \
                        fileops.opened(name, fileops.DIR_FLAGS, tpfd) as tfd:
                    # Another inode at the same path (a directory renamed into
                    # place) may differ anywhere below: compare all of it.
                    self.sync_dir(sfd, tfd, rel, deep or sst.st_ino != tst.st_ino)
                self.fix_dirs.add(rel)
            else:
                self.replace_with_tree(spfd, tpfd, name, tst, rel)
            return
        if tst is not None and self.same(spfd, tpfd, name, sst, tst):
            return
        if (self.inode_paths is not None and tst is not None and stat.S_ISREG(tst.st_mode)
                and tst.st_nlink > 1):
            # Changed in place, its other names changed too; the diff named one.
            self.extra.extend(p for p in self.inode_paths(tst.st_ino) if p != rel)
        tmp = fileops.TMP_PREFIX + os.urandom(6).hex()
        self.create(spfd, tpfd, name, sst, tmp, rel)
        if tst is not None and stat.S_ISDIR(tst.st_mode):
            self.remove(tpfd, name, rel, tst)    # rename can't put a file over a directory
        os.rename(tmp, name, src_dir_fd=tpfd, dst_dir_fd=tpfd)
        self.changed.append(rel)
        self.fix_dirs.add(fileops.parent(rel))

    def sync_dir(self, sfd: int, tfd: int, rel: str, deep: bool) -> None:
        snames, tnames = set(os.listdir(sfd)), set(os.listdir(tfd))
        for name in sorted(tnames - snames):
            child = fileops.join(rel, name)
            st = fileops.lstat(tfd, name)
            if not self.excluded(child) and st is not None and st.st_dev == self.tgt.dev:
                self.remove(tfd, name, child, st)
                self.fix_dirs.add(rel)
        for name in sorted(snames):
            child = fileops.join(rel, name)
            if self.excluded(child) or (name in tnames and not deep):
                continue
            sst, tst = fileops.lstat(sfd, name), fileops.lstat(tfd, name)
            self.sync(sfd, tfd, name, sst, tst, child, deep)

    def replace_with_tree(self, spfd, tpfd, name, tst, rel) -> None:
        tmp = fileops.TMP_PREFIX + os.urandom(6).hex()
        os.mkdir(tmp, 0o700, dir_fd=tpfd)
        with fileops.opened(name, fileops.DIR_FLAGS, spfd) as sfd, \
                fileops.opened(tmp, fileops.DIR_FLAGS, tpfd) as tfd:
            self.copy_children(sfd, tfd, rel)
        if tst is not None:
            self.remove(tpfd, name, rel, tst)    # rename can't put a directory over a file
        os.rename(tmp, name, src_dir_fd=tpfd, dst_dir_fd=tpfd)
        self.changed.append(rel)
        self.fix_dirs.update((rel, fileops.parent(rel)))

    def copy_children(self, sfd: int, tfd: int, rel: str) -> None:
        for name in sorted(os.listdir(sfd)):
            child = fileops.join(rel, name)
            st = fileops.lstat(sfd, name)
            if self.excluded(child) or st is None or st.st_dev != self.src.dev:
                continue
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=tfd)
                with fileops.opened(name, fileops.DIR_FLAGS, sfd) as csfd, \
                        fileops.opened(name, fileops.DIR_FLAGS, tfd) as ctfd:
                    self.copy_children(csfd, ctfd, child)
                self.fix_dirs.add(child)
            else:
                self.create(sfd, tfd, name, st, name, child)

    def create(self, spfd, tpfd, name, sst, dest, rel) -> None:
        """Create non-directory ``dest`` in tpfd as a copy of ``name`` in spfd."""
        mode = sst.st_mode
        if stat.S_ISREG(mode):
            if not self.link_copy(sst, tpfd, dest):
                self.copy_file(spfd, tpfd, name, sst, dest)
            if sst.st_nlink > 1:
                self.links[sst.st_ino] = (rel, fileops.lstat(tpfd, dest).st_ino)
            return
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=spfd), dest, dir_fd=tpfd)
        else:   # character/block device, fifo, socket
            os.mknod(dest, mode, sst.st_rdev, dir_fd=tpfd)
        os.chown(dest, sst.st_uid, sst.st_gid, dir_fd=tpfd, follow_symlinks=False)
        fileops.copy_xattrs(fileops.proc(spfd, name), fileops.proc(tpfd, dest), False)
        if not stat.S_ISLNK(mode):
            os.chmod(dest, stat.S_IMODE(mode), dir_fd=tpfd)   # mknod is subject to umask
        os.utime(dest, ns=(sst.st_atime_ns, sst.st_mtime_ns), dir_fd=tpfd,
                 follow_symlinks=False)

    def link_copy(self, sst, tpfd: int, dest: str) -> bool:
        """Hardlink ``dest`` to a copy of the same source inode made this run."""
        if sst.st_nlink < 2 or sst.st_ino not in self.links:
            return False
        rel, ino = self.links[sst.st_ino]
        parts = fileops.split(rel)
        with fileops.held(self.tgt.open_dir(parts[:-1])) as lfd:
            st = fileops.lstat(lfd, parts[-1]) if lfd is not None else None
            if st is None or st.st_ino != ino:
                return False
            os.link(parts[-1], dest, src_dir_fd=lfd, dst_dir_fd=tpfd, follow_symlinks=False)
            return True

    def copy_file(self, spfd, tpfd, name, sst, dest) -> None:
        with fileops.opened(name, fileops.READ_FLAGS, spfd) as sfd, \
                fileops.opened(dest, fileops.CREATE_FLAGS, tpfd) as tfd:
            fileops.copy_data(sfd, tfd)
            # Order matters: chown clears setuid bits and file capabilities,
            # and setting an ACL rewrites the group bits of the mode.
            os.fchown(tfd, sst.st_uid, sst.st_gid)
            fileops.copy_xattrs(fileops.proc(sfd), fileops.proc(tfd), True)
            os.fchmod(tfd, stat.S_IMODE(sst.st_mode))
            os.utime(tfd, ns=(sst.st_atime_ns, sst.st_mtime_ns))

    def same(self, spfd, tpfd, name, sst, tst) -> bool:
        """Are two non-directory entries equal in type, metadata and content?"""
        if (sst.st_mode, sst.st_uid, sst.st_gid) != (tst.st_mode, tst.st_uid, tst.st_gid):
            return False
        if sst.st_mtime_ns != tst.st_mtime_ns:
            return False
        if stat.S_ISREG(sst.st_mode) and sst.st_size != tst.st_size:
            return False
        if (stat.S_ISCHR(sst.st_mode) or stat.S_ISBLK(sst.st_mode)) and sst.st_rdev != tst.st_rdev:
            return False
        if stat.S_ISLNK(sst.st_mode) and (os.readlink(name, dir_fd=spfd)
                                          != os.readlink(name, dir_fd=tpfd)):
            return False
        xattrs = fileops.xattrs
        if xattrs(fileops.proc(spfd, name), False) != xattrs(fileops.proc(tpfd, name), False):
            return False
        if not stat.S_ISREG(sst.st_mode):
            return True
        with fileops.opened(name, fileops.READ_FLAGS, spfd) as sfd, \
                fileops.opened(name, fileops.READ_FLAGS, tpfd) as tfd:
            if os.fstat(tfd).st_ino != tst.st_ino:
                return False    # replaced since lstat: not known to be equal
            return fileops.same_content(sfd, tfd)

    def remove(self, pfd: int, name: str, rel: str, st) -> None:
        """Remove an entry and everything below it, sparing excludes and mounts."""
        if self.excluded(rel):
            return
        if st.st_dev != self.tgt.dev:
            log.info("leaving %s alone: another filesystem or subvolume", rel)
            return
        if stat.S_ISDIR(st.st_mode):
            with fileops.opened(name, fileops.DIR_FLAGS, pfd) as fd:
                for child in os.listdir(fd):
                    cst = fileops.lstat(fd, child)
                    if cst is not None:
                        self.remove(fd, child, fileops.join(rel, child), cst)
            os.rmdir(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        self.changed.append(rel)

    def fix_all_dirs(self) -> None:
        for rel in sorted(self.fix_dirs, key=lambda p: (-p.count("/") if p else 1, p)):
            if self.excluded(rel):
                continue
            parts = fileops.split(rel)
            with fileops.held(self.src.open_dir(parts)) as sfd, \
                    fileops.held(self.tgt.open_dir(parts)) as tfd:
                try:
                    if sfd is not None and tfd is not None and self.fix_dir(sfd, tfd):
                        self.changed.append(rel)
                except OSError as e:
                    raise OSError(e.errno, "{}: {}".format(rel or ".", e.strerror or e)) from e

    def fix_dir(self, sfd: int, tfd: int) -> bool:
        sst, tst = os.fstat(sfd), os.fstat(tfd)
        changed = False
        if (sst.st_uid, sst.st_gid) != (tst.st_uid, tst.st_gid):
            os.fchown(tfd, sst.st_uid, sst.st_gid)
            changed = True
        if fileops.copy_xattrs(fileops.proc(sfd), fileops.proc(tfd), True):
            changed = True
        if sst.st_mode != os.fstat(tfd).st_mode:
            os.fchmod(tfd, stat.S_IMODE(sst.st_mode))
            changed = True
        if sst.st_mtime_ns != tst.st_mtime_ns or changed:
            os.utime(tfd, ns=(sst.st_atime_ns, sst.st_mtime_ns))
            changed = True
        return changed


def restore_paths(source_root: str, target_root: str, paths: Iterable[str],
                  exclude: Iterable[str] = (), progress: Optional[Progress] = None,
                  inode_paths: Optional[Callable[[int], Iterable[str]]] = None
                  ) -> RestoreResult:
    """Make each of ``paths`` in ``target_root`` equal to ``source_root``.

    A path absent from the source is removed from the target (with all below
    it); a present one is recreated: files by reflink or copy with owner,
    mode, xattrs (capabilities, ACLs) and ns times; symlinks; device nodes,
    fifos and sockets; directories fixed in place, or built whole when missing
    or of another type. A directory whose inode differs from the source's is
    compared all the way down. ``progress(fraction, message)`` is called once
    per path, fraction increasing. ``inode_paths(ino)`` may name the other
    target paths of a hardlinked inode, which are then restored too.
    """
    rels = [clean_path(p) for p in paths]
    skip = [clean_path(p) for p in exclude]
    if any(not p for p in skip):
        raise ValueError("excluding the whole tree makes no sense")
    restorer = _Restorer(source_root, target_root, skip, inode_paths)
    try:
        return restorer.run(rels, progress or (lambda fraction, message: None))
    finally:
        restorer.close()
