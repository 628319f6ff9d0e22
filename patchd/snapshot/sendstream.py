"""Read a btrfs send stream and name the paths it changes.

``btrfs send --no-data -p PRE WORK`` describes, as a list of commands, how to
turn snapshot PRE into snapshot WORK. patchd only needs *which paths* differ,
so this module decodes the stream just far enough to collect them; it never
applies a command.

Stream format (kernel fs/btrfs/send.h, btrfs-progs common/send-stream.c):
a header ``b"btrfs-stream\\0"`` + le32 version, then commands: le32 payload
length, le16 command, le32 crc32c, then TLV attributes (le16 type, le16
length, value). From version 2 on, a DATA attribute has no length: it is the
last attribute and runs to the end of its command. The numbers below are
checked against ``btrfs receive --dump`` in tests/snapshot/test_sendstream.py.

Rules:
- Paths come from the PATH and PATH_TO attributes only. PATH_LINK is a
  symlink's target text or, for LINK, an existing unchanged file; CLONE_PATH
  is an unchanged clone source. SUBVOL/SNAPSHOT name the subvolume itself.
- A stream names each inode by its path *at that moment*, between renames.
  ``changed_paths`` follows every rename forwards (to the name in WORK) and
  backwards (to the name in PRE), so it returns names valid in either tree.
- btrfs gives new and displaced inodes temporary names ``o<ino>-<gen>-<idx>``
  in the subvolume's top directory (send.c ``gen_unique_name`` and
  ``orphanize_inode``); those never exist in PRE or WORK and are dropped.
- The CRC is not checked: the stream comes through a local pipe from the
  kernel; lengths are checked, and a malformed stream raises ValueError.
"""

import os
import re
import struct
from collections import namedtuple
from typing import Iterator, List, Optional, Set, Tuple

__all__ = ["Command", "COMMAND_NAMES", "parse", "mentioned_paths", "changed_paths",
           "ROOT"]

MAGIC = b"btrfs-stream\0"
SUPPORTED_VERSIONS = (1, 2, 3)

# Commands (fs/btrfs/send.h enum btrfs_send_cmd). v2 added 23-25, v3 26.
C_SUBVOL = 1
C_SNAPSHOT = 2
C_MKFILE = 3
C_MKDIR = 4
C_MKNOD = 5
C_MKFIFO = 6
C_MKSOCK = 7
C_SYMLINK = 8
C_RENAME = 9
C_LINK = 10
C_UNLINK = 11
C_RMDIR = 12
C_SET_XATTR = 13
C_REMOVE_XATTR = 14
C_WRITE = 15
C_CLONE = 16
C_TRUNCATE = 17
C_CHMOD = 18
C_CHOWN = 19
C_UTIMES = 20
C_END = 21
C_UPDATE_EXTENT = 22
C_FALLOCATE = 23
C_FILEATTR = 24
C_ENCODED_WRITE = 25
C_ENABLE_VERITY = 26

# The names ``btrfs receive --dump`` prints, so tests can compare with it.
COMMAND_NAMES = {
    C_SUBVOL: "subvol", C_SNAPSHOT: "snapshot", C_MKFILE: "mkfile",
    C_MKDIR: "mkdir", C_MKNOD: "mknod", C_MKFIFO: "mkfifo", C_MKSOCK: "mksock",
    C_SYMLINK: "symlink", C_RENAME: "rename", C_LINK: "link", C_UNLINK: "unlink",
    C_RMDIR: "rmdir", C_SET_XATTR: "set_xattr", C_REMOVE_XATTR: "remove_xattr",
    C_WRITE: "write", C_CLONE: "clone", C_TRUNCATE: "truncate", C_CHMOD: "chmod",
    C_CHOWN: "chown", C_UTIMES: "utimes", C_END: "end",
    C_UPDATE_EXTENT: "update_extent", C_FALLOCATE: "fallocate",
    C_FILEATTR: "fileattr", C_ENCODED_WRITE: "encoded_write",
    C_ENABLE_VERITY: "enable_verity",
}

# Attributes (fs/btrfs/send.h, BTRFS_SEND_A_*).
A_PATH = 15
A_PATH_TO = 16
A_PATH_LINK = 17
A_DATA = 19
A_CLONE_PATH = 22

# Commands that bring a new name into existence at PATH.
_CREATES = frozenset((C_MKFILE, C_MKDIR, C_MKNOD, C_MKFIFO, C_MKSOCK, C_SYMLINK,
                      C_LINK))
_REMOVES = frozenset((C_UNLINK, C_RMDIR))
_SUBVOLUME = frozenset((C_SUBVOL, C_SNAPSHOT))

_STREAM_HEADER = struct.Struct("<13sI")
_CMD_HEADER = struct.Struct("<IHI")
_TLV_HEADER = struct.Struct("<HH")
_ORPHAN = re.compile(r"o\d+-\d+-\d+\Z")

# The subvolume's top directory; the stream names it with an empty PATH.
ROOT = "."

Command = namedtuple("Command", "cmd attrs version")
Command.__doc__ = "One stream command: number, {attribute: bytes}, stream version."


def parse(data: bytes) -> Iterator[Command]:
    """Yield the commands of one or more concatenated send streams."""
    view = memoryview(data)
    pos = 0
    if len(view) == 0:
        raise ValueError("empty btrfs send stream")
    while pos < len(view):
        if len(view) - pos < _STREAM_HEADER.size:
            raise ValueError("truncated btrfs send stream header at byte {}".format(pos))
        magic, version = _STREAM_HEADER.unpack_from(view, pos)
        if magic != MAGIC:
            raise ValueError("not a btrfs send stream (bad magic at byte {})".format(pos))
        if version not in SUPPORTED_VERSIONS:
            raise ValueError("unsupported btrfs send stream version {}".format(version))
        pos += _STREAM_HEADER.size
        ended = False
        while pos < len(view) and not ended:
            cmd, pos = _command(view, pos, version)
            ended = cmd.cmd == C_END
            yield cmd
        if not ended:
            # ``btrfs send`` always closes a stream with END; without it the
            # sender died and the list of changes is incomplete.
            raise ValueError("btrfs send stream ends without an END command")


def _command(view: memoryview, pos: int, version: int):
    if len(view) - pos < _CMD_HEADER.size:
        raise ValueError("truncated command header at byte {}".format(pos))
    length, cmd, _crc = _CMD_HEADER.unpack_from(view, pos)
    start = pos + _CMD_HEADER.size
    end = start + length
    if end > len(view):
        raise ValueError("command {} at byte {} runs past the end of the stream"
                         .format(cmd, pos))
    if cmd == 0:
        raise ValueError("invalid command 0 at byte {}".format(pos))
    attrs = {}  # type: Dict[int, bytes]
    at = start
    while at < end:
        if end - at < 2:
            raise ValueError("truncated attribute in command {} at byte {}".format(cmd, at))
        (atype,) = struct.unpack_from("<H", view, at)
        if version >= 2 and atype == A_DATA:
            # v2: unsized, always last, runs to the end of the command.
            attrs[atype] = bytes(view[at + 2:end])
            at = end
            break
        if end - at < _TLV_HEADER.size:
            raise ValueError("truncated attribute in command {} at byte {}".format(cmd, at))
        atype, alen = _TLV_HEADER.unpack_from(view, at)
        vstart = at + _TLV_HEADER.size
        if vstart + alen > end:
            raise ValueError("attribute {} of command {} at byte {} runs past its command"
                             .format(atype, cmd, at))
        attrs[atype] = bytes(view[vstart:vstart + alen])
        at = vstart + alen
    return Command(cmd, attrs, version), end


def _text(raw: bytes) -> str:
    # Filenames are bytes; surrogateescape keeps non-UTF-8 names round-trip
    # safe for the os functions that later open them.
    return os.fsdecode(raw)


def _paths_of(command: Command) -> List[str]:
    if command.cmd in _SUBVOLUME:
        return []
    found = []
    for attr in (A_PATH, A_PATH_TO):
        if attr in command.attrs:
            found.append(_text(command.attrs[attr]))
    return found


def mentioned_paths(data: bytes) -> Set[str]:
    """Every PATH and PATH_TO exactly as the stream spells it (raw, unmapped)."""
    found = set()  # type: Set[str]
    for command in parse(data):
        found.update(_paths_of(command))
    return found


class _Node:
    """One name in a tree that follows names through renames."""

    __slots__ = ("name", "parent", "children", "gone")

    def __init__(self, name: str, parent: "Optional[_Node]"):
        self.name = name
        self.parent = parent
        self.children = {}  # type: Dict[str, _Node]
        self.gone = None    # type: Optional[str]  # path it had when removed


class _Names:
    """Nodes for the paths seen so far; renames move nodes, removals detach them.

    A node stands for "the dentry that had this path at that moment", so its
    path at the end of a pass is where that dentry ended up.
    """

    def __init__(self):
        self.root = _Node("", None)

    def node(self, path: str) -> _Node:
        cur = self.root
        for part in _parts(path):
            child = cur.children.get(part)
            if child is None:
                child = cur.children[part] = _Node(part, cur)
            cur = child
        return cur

    def find(self, path: str) -> Optional[_Node]:
        cur = self.root
        for part in _parts(path):
            cur = cur.children.get(part)
            if cur is None:
                return None
        return cur

    def detach(self, path: str) -> None:
        node = self.find(path)
        if node is not None and node.parent is not None:
            node.gone = _path_of(node)
            del node.parent.children[node.name]

    def move(self, src: str, dst: str) -> None:
        if src == dst:
            return
        node = self.node(src)
        self.detach(dst)          # rename(2) replaces whatever had that name
        del node.parent.children[node.name]
        head, _, tail = dst.rpartition("/")
        parent = self.node(head)
        node.name, node.parent = tail, parent
        parent.children[tail] = node


def _path_of(node: _Node) -> str:
    """A node's current path, or where it was when it was removed."""
    parts = []
    while node.gone is None and node.parent is not None:
        parts.append(node.name)
        node = node.parent
    if node.gone is not None:
        parts.append(node.gone)
    return "/".join(reversed(parts))


def _parts(path: str) -> List[str]:
    return [p for p in path.split("/") if p]


def _forward(steps: List[Tuple[int, List[str]]]) -> Set[_Node]:
    """Nodes whose paths at the end are each mention's final name (in WORK)."""
    names = _Names()
    mentions = set()  # type: Set[_Node]
    last = ("", names.root)   # most commands repeat the previous command's path
    for cmd, paths in steps:
        if cmd == C_RENAME and len(paths) == 2:
            mentions.add(names.node(paths[0]))
            names.move(paths[0], paths[1])
            last = ("", names.root)
            continue
        if cmd in _CREATES:
            names.detach(paths[0])    # a new dentry, unrelated to older ones
            last = ("", names.root)
        for path in paths:
            if path != last[0]:
                last = (path, names.node(path))
            mentions.add(last[1])
        if cmd in _REMOVES:
            names.detach(paths[0])
            last = ("", names.root)
    return mentions


def _backward(steps: List[Tuple[int, List[str]]]) -> Set[_Node]:
    """Nodes whose paths at the end are each mention's first name (in PRE)."""
    names = _Names()
    mentions = set()  # type: Set[_Node]
    last = ("", names.root)
    for cmd, paths in reversed(steps):
        if cmd == C_RENAME and len(paths) == 2:
            mentions.add(names.node(paths[1]))
            names.move(paths[1], paths[0])
            last = ("", names.root)
            continue
        for path in paths:
            if path != last[0]:
                last = (path, names.node(path))
            mentions.add(last[1])
        if cmd in _CREATES:
            # Before it was created this name did not exist: older mentions
            # of the same path are a different dentry.
            names.detach(paths[0])
            last = ("", names.root)
    return mentions


def changed_paths(data: bytes) -> List[str]:
    """Sorted relative paths that may differ between PRE and WORK.

    The result holds each mentioned dentry's name in PRE and its name in WORK;
    ``ROOT`` (".") stands for the subvolume's top directory. Temporary orphan
    names are left out.
    """
    steps = []  # type: List[Tuple[int, List[str]]]
    for command in parse(data):
        paths = _paths_of(command)
        if paths:
            steps.append((command.cmd, paths))
    found = set()  # type: Set[str]
    for node in _forward(steps) | _backward(steps):
        parts = _parts(_path_of(node))
        if parts and _ORPHAN.match(parts[0]):
            continue
        found.add("/".join(parts) if parts else ROOT)
    return sorted(found)
