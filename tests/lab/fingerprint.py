"""Whole-tree fingerprints, to prove exactly what a transaction changed.

``tree_fingerprint(root)`` maps every path below ``root`` (relative, POSIX
style, "." excluded) to an ``Entry``; ``diff_fingerprints(a, b)`` lists the
differences in words a failing assertion can print.

Rules:
* Symlinks are never followed: a symlink is recorded by its target.
* Mount points strictly below ``root`` (a mounted proc, sys, dev, or any
  bind mount) are omitted together with their contents: their stat and
  contents describe another filesystem, not the root.
* mtime/ctime/atime are ignored on purpose (a correct restore may change
  them), and so is a directory's size (on btrfs it changes with every entry
  added, which the added entry itself already reports).
* ``exclude`` entries are relative paths or fnmatch patterns; an entry also
  excludes everything below it.
"""
from __future__ import annotations

import collections
import fnmatch
import hashlib
import os
import stat
from typing import Dict, Iterable, List, Optional

from tests.lab.btrfs import mount_points

Entry = collections.namedtuple("Entry", "type mode uid gid size content")
Entry.__doc__ = (
    "type: file/dir/symlink/chardev/blockdev/fifo/socket; mode: permission "
    "bits; content: sha256 (file), link target (symlink), (major, minor) "
    "(device) or None."
)
_FIELDS = Entry._fields


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry(path: str, st: os.stat_result) -> Entry:
    mode = stat.S_IMODE(st.st_mode)
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        return Entry("file", mode, st.st_uid, st.st_gid, st.st_size, _sha256(path))
    if fmt == stat.S_IFDIR:
        return Entry("dir", mode, st.st_uid, st.st_gid, None, None)
    if fmt == stat.S_IFLNK:
        return Entry("symlink", mode, st.st_uid, st.st_gid, None, os.readlink(path))
    rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if fmt == stat.S_IFCHR:
        return Entry("chardev", mode, st.st_uid, st.st_gid, None, rdev)
    if fmt == stat.S_IFBLK:
        return Entry("blockdev", mode, st.st_uid, st.st_gid, None, rdev)
    kind = "fifo" if fmt == stat.S_IFIFO else "socket"
    return Entry(kind, mode, st.st_uid, st.st_gid, None, None)


def _excluded(rel: str, patterns: List[str]) -> bool:
    for pattern in patterns:
        if rel == pattern or rel.startswith(pattern + "/"):
            return True
        if fnmatch.fnmatchcase(rel, pattern):
            return True
    return False


def tree_fingerprint(root, exclude: Iterable[str] = ()) -> Dict[str, Entry]:
    """Fingerprint every path below ``root``; see the module rules."""
    top = os.path.realpath(str(root))
    patterns = [p.strip("/") for p in exclude]
    prefix = top.rstrip("/") + "/"
    mounted = {m for m in mount_points() if m.startswith(prefix)}
    result = {}  # type: Dict[str, Entry]
    for dirpath, dirnames, filenames in os.walk(top):
        # Prune in place so os.walk neither descends into excluded trees
        # nor into mounts; os.walk does not follow directory symlinks.
        keep = []
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            if full in mounted or _excluded(rel, patterns):
                continue
            st = os.lstat(full)
            result[rel] = _entry(full, st)
            if stat.S_ISDIR(st.st_mode):
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            if full in mounted or _excluded(rel, patterns):
                continue  # a file can be a bind-mount target too
            result[rel] = _entry(full, os.lstat(full))
    return result


def _describe(entry: Entry) -> str:
    return "%s %04o %d:%d" % (entry.type, entry.mode, entry.uid, entry.gid)


def _show(field: str, value: Optional[object]) -> str:
    if field == "mode":
        return "%04o" % value
    if field == "content" and isinstance(value, str) and len(value) == 64:
        return value[:12]  # a sha256 prefix is enough to tell them apart
    return repr(value)


def diff_fingerprints(a: Dict[str, Entry], b: Dict[str, Entry]) -> List[str]:
    """Human-readable differences going from ``a`` to ``b``, sorted by path."""
    lines = []
    for path in sorted(set(a) | set(b)):
        old, new = a.get(path), b.get(path)
        if old == new:
            continue
        if old is None:
            lines.append("added %s (%s)" % (path, _describe(new)))
        elif new is None:
            lines.append("removed %s (%s)" % (path, _describe(old)))
        else:
            changes = [
                "%s %s -> %s" % (field, _show(field, getattr(old, field)),
                                 _show(field, getattr(new, field)))
                for field in _FIELDS
                if getattr(old, field) != getattr(new, field)
            ]
            lines.append("changed %s: %s" % (path, ", ".join(changes)))
    return lines
