"""File operations that never follow a symlink, for restore.py.

Rules:
- A tree is reached only through directory fds opened one component at a
  time with O_NOFOLLOW, and stays on one filesystem (st_dev).
- Metadata order matters and is the caller's: chown clears setuid bits and
  file capabilities; setting an ACL rewrites the group bits of the mode.
- Data is shared by reflink (FICLONE) where the filesystem can, copied
  otherwise; equality is proven by shared extents (FIEMAP) or by reading.
"""

import contextlib
import errno
import fcntl
import os
import struct
from typing import Iterator, List, Optional, Sequence

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if an entry was swapped for a fifo since lstat, open must not hang.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# O_EXCL: a temporary name is always new; never write into an existing file.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TMP_PREFIX = ".patchd-tmp-"

FICLONE = 0x40049409            # _IOW(0x94, 9, int), linux/fs.h
FS_IOC_FIEMAP = 0xC020660B      # _IOWR('f', 11, struct fiemap)
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_FIEMAP_FLAG_SYNC = 0x1
_EXTENT_LAST = 0x1
# Extents whose fe_physical does not identify the bytes on its own: unknown,
# delalloc, encoded (compressed: one address for many sub-ranges), encrypted,
# not aligned, inline (linux/fiemap.h).
_EXTENT_UNCOMPARABLE = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200
_CHUNK = 1 << 20


def clean_path(path: str) -> str:
    """Normalise a relative path ("" is the top directory); reject escapes."""
    if path.startswith("/"):
        raise ValueError("absolute path not allowed: {!r}".format(path))
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("path with '..' not allowed: {!r}".format(path))
    return "/".join(parts)


def split(rel: str) -> List[str]:
    return rel.split("/") if rel else []


def join(rel: str, name: str) -> str:
    return rel + "/" + name if rel else name


def parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def proc(fd: int, name: Optional[str] = None) -> str:
    # xattr calls take no dir_fd; /proc/self/fd/N names the pinned directory
    # (or file) itself, and the final name is then looked up without following.
    path = "/proc/self/fd/{}".format(fd)
    return path if name is None else path + "/" + name


@contextlib.contextmanager
def opened(name: str, flags: int, dir_fd: int, mode: int = 0o600) -> Iterator[int]:
    """``os.open`` relative to ``dir_fd``, closed on leaving the block."""
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def held(fd: Optional[int]) -> Iterator[Optional[int]]:
    """Close ``fd`` (which may be None) on leaving the block."""
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def lstat(dir_fd: int, name: str):
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def xattrs(path: str, follow: bool):
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=follow) for n in names}


def copy_xattrs(src: str, dst: str, follow: bool) -> bool:
    """Give ``dst`` exactly the xattrs of ``src``; True if any had to change."""
    return sync_xattrs(xattrs(src, follow), dst, follow)


def sync_xattrs(want: dict, path: str, follow: bool) -> bool:
    have = xattrs(path, follow)
    for name in sorted(set(have) - set(want)):
        os.removexattr(path, name, follow_symlinks=follow)
    for name, value in sorted(want.items()):
        if have.get(name) != value:
            os.setxattr(path, name, value, follow_symlinks=follow)
    return have != want


def _extents(fd: int):
    """Physical extents of a file, or None when they can't prove equality."""
    out, start = [], 0
    while True:
        count = 64
        buf = bytearray(_FIEMAP_HEAD.size + count * _FIEMAP_EXTENT.size)
        _FIEMAP_HEAD.pack_into(buf, 0, start, 2 ** 64 - 1, _FIEMAP_FLAG_SYNC, 0, count, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        except OSError:
            return None
        mapped = _FIEMAP_HEAD.unpack_from(buf)[3]
        if not mapped:
            return out
        for i in range(mapped):
            ext = _FIEMAP_EXTENT.unpack_from(buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)
            logical, physical, length, flags = ext[0], ext[1], ext[2], ext[5]
            if flags & _EXTENT_UNCOMPARABLE:
                return None
            out.append((logical, physical, length))
            if flags & _EXTENT_LAST:
                return out
        start = logical + length


def same_content(sfd: int, tfd: int) -> bool:
    """Equal bytes in two files of equal size, read from their start."""
    # Reflinked copies share their extents: equal without reading a byte.
    a = _extents(sfd)
    if a is not None and a == _extents(tfd):
        return True
    while True:
        x, y = os.read(sfd, _CHUNK), os.read(tfd, _CHUNK)
        if x != y:
            return False
        if not x:
            return True


def copy_data(sfd: int, tfd: int) -> None:
    try:
        fcntl.ioctl(tfd, FICLONE, sfd)   # shares extents: instant, no space used
        return
    except OSError as e:
        # Other filesystem, nodatacow mismatch, no reflink support: copy.
        if e.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL,
                           errno.EPERM, errno.ENOTSUP):
            raise
    while True:
        chunk = os.read(sfd, _CHUNK)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(tfd, view):]


class Tree:
    """A directory tree reached only through O_NOFOLLOW directory fds."""

    def __init__(self, root: str):
        self.fd = os.open(root, DIR_FLAGS)
        self.dev = os.fstat(self.fd).st_dev

    def open_dir(self, parts: Sequence[str]) -> Optional[int]:
        """A new fd for the directory at ``parts``, or None if that is not a
        plain directory of this filesystem (missing, symlink, file, mount)."""
        fd = os.dup(self.fd)
        try:
            for part in parts:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
                if os.fstat(fd).st_dev != self.dev:
                    os.close(fd)
                    return None
        except (FileNotFoundError, NotADirectoryError):
            os.close(fd)
            return None
        except OSError as e:
            os.close(fd)
            if e.errno == errno.ELOOP:     # a symlink where a directory was expected
                return None
            raise
        return fd

    def close(self) -> None:
        os.close(self.fd)
