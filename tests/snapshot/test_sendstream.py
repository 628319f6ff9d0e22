"""Send-stream parser: synthetic streams, and real ones checked against
``btrfs receive --dump`` so the command and attribute numbers are verified
on this kernel rather than trusted from memory."""

import os
import socket
import struct
import subprocess

import pytest

from patchd.snapshot import sendstream as ss

# -- synthetic streams ------------------------------------------------------


def _attr(atype, value):
    return struct.pack("<HH", atype, len(value)) + value


def _cmd(cmd, *attrs, data=None):
    payload = b"".join(_attr(t, v) for t, v in attrs)
    if data is not None:
        payload += struct.pack("<H", ss.A_DATA) + data     # v2: no length
    return struct.pack("<IHI", len(payload), cmd, 0) + payload


def _stream(*cmds, version=1, end=True):
    body = b"".join(cmds) + (_cmd(ss.C_END) if end else b"")
    return ss.MAGIC + struct.pack("<I", version) + body


def _p(path):
    return (ss.A_PATH, path.encode())


def _to(path):
    return (ss.A_PATH_TO, path.encode())


def test_collects_path_and_path_to_not_link_targets():
    data = _stream(
        _cmd(ss.C_SNAPSHOT, _p("work")),
        _cmd(ss.C_SYMLINK, _p("o260-7-0"), (ss.A_PATH_LINK, b"/etc/target")),
        _cmd(ss.C_RENAME, _p("o260-7-0"), _to("lnk")),
        _cmd(ss.C_LINK, _p("hard"), (ss.A_PATH_LINK, b"existing")),
        _cmd(ss.C_CLONE, _p("dst"), (ss.A_CLONE_PATH, b"clonesrc")),
        _cmd(ss.C_UTIMES, _p("")),
    )
    assert ss.mentioned_paths(data) == {"o260-7-0", "lnk", "hard", "dst", ""}
    assert ss.changed_paths(data) == [".", "dst", "hard", "lnk"]


def test_v2_unsized_data_attribute_is_skipped():
    data = _stream(
        _cmd(ss.C_WRITE, _p("big"), (18, struct.pack("<Q", 0)), data=b"\x00" * 70000),
        _cmd(ss.C_ENCODED_WRITE, _p("enc"), data=b"zz"),
        version=2)
    commands = list(ss.parse(data))
    assert commands[0].attrs[ss.A_DATA] == b"\x00" * 70000
    assert ss.changed_paths(data) == ["big", "enc"]


def test_renames_are_followed_to_both_names():
    # PRE: d1/d2/f.  WORK: e1/e2/f, f modified after both renames, plus a
    # directory made under an orphan name and renamed into place.
    data = _stream(
        _cmd(ss.C_RENAME, _p("d1"), _to("e1")),
        _cmd(ss.C_UPDATE_EXTENT, _p("e1/d2/f")),
        _cmd(ss.C_RENAME, _p("e1/d2"), _to("e1/e2")),
        _cmd(ss.C_MKDIR, _p("o300-9-0")),
        _cmd(ss.C_MKFILE, _p("o300-9-0/n")),
        _cmd(ss.C_RENAME, _p("o300-9-0"), _to("e1/new")),
    )
    assert ss.changed_paths(data) == [
        "d1", "d1/d2", "d1/d2/f", "e1", "e1/e2", "e1/e2/f", "e1/new", "e1/new/n"]


def test_removed_and_recreated_names_are_distinct():
    # "a" is renamed away, then a new "a" is created: the old mention of
    # "a/x" must not be carried along with the new directory.
    data = _stream(
        _cmd(ss.C_CHMOD, _p("a/x")),
        _cmd(ss.C_RENAME, _p("a"), _to("b")),
        _cmd(ss.C_MKDIR, _p("a")),
        _cmd(ss.C_UNLINK, _p("b/x")),
    )
    assert ss.changed_paths(data) == ["a", "a/x", "b", "b/x"]


def test_orphan_names_are_dropped_only_at_the_top():
    data = _stream(
        _cmd(ss.C_MKFILE, _p("o257-5-0")),
        _cmd(ss.C_UNLINK, _p("o257-5-0")),
        _cmd(ss.C_MKFILE, _p("dir/o1-2-3")),
    )
    assert ss.changed_paths(data) == ["dir/o1-2-3"]


def test_non_utf8_names_round_trip():
    data = _stream(_cmd(ss.C_MKFILE, (ss.A_PATH, b"caf\xe9")))
    (path,) = ss.changed_paths(data)
    assert os.fsencode(path) == b"caf\xe9"


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"not-a-btrfs-stream-at-all", "bad magic"),
    (ss.MAGIC + struct.pack("<I", 99), "version 99"),
    (ss.MAGIC + b"\x01\x00", "truncated btrfs send stream header"),
    (_stream(end=False) + b"\x05\x00", "truncated command header"),
    (_stream(_cmd(ss.C_MKFILE, _p("x")), end=False), "without an END"),
    (ss.MAGIC + struct.pack("<I", 1) + struct.pack("<IHI", 50, ss.C_MKFILE, 0) + b"ab",
     "runs past the end"),
    (ss.MAGIC + struct.pack("<I", 1) + struct.pack("<IHI", 6, ss.C_MKFILE, 0)
     + struct.pack("<HH", ss.A_PATH, 40) + b"ab", "runs past its command"),
    (ss.MAGIC + struct.pack("<I", 1) + struct.pack("<IHI", 1, ss.C_MKFILE, 0) + b"a",
     "truncated attribute"),
    (ss.MAGIC + struct.pack("<I", 1) + struct.pack("<IHI", 0, 0, 0), "invalid command 0"),
])
def test_malformed_streams_raise_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        ss.changed_paths(data)


# -- real streams ----------------------------------------------------------

def _unescape_tokens(line):
    """Split a ``btrfs receive --dump`` line; undo print_path_escaped."""
    simple = {"a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "n": "\n", "r": "\r",
              "t": "\t", "v": "\v"}
    tokens, cur, i = [], [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            j = i + 1
            while j < len(line) and j < i + 4 and line[j] in "01234567":
                j += 1
            if j > i + 1:
                cur.append(chr(int(line[i + 1:j], 8)))
                i = j
            else:
                cur.append(simple.get(line[i + 1], line[i + 1]))
                i += 2
        elif c.isspace():
            if cur:
                tokens.append("".join(cur))
                cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    if cur:
        tokens.append("".join(cur))
    return tokens


def _dump(stream_file, subvol):
    """[(command name, path, {key: value})] from btrfs receive --dump."""
    out = subprocess.run(["btrfs", "receive", "--dump", "-f", stream_file],
                         stdout=subprocess.PIPE, check=True,
                         text=True).stdout
    prefix = "./" + subvol
    rows = []
    for line in out.splitlines():
        tokens = _unescape_tokens(line)
        args = dict(t.split("=", 1) for t in tokens[2:] if "=" in t)
        rows.append((tokens[0], _strip(tokens[1], prefix), args))
    return rows, prefix


def _strip(path, prefix):
    if path == prefix or path == prefix + "/":
        return ""
    assert path.startswith(prefix + "/"), path
    return path[len(prefix) + 1:]


def _populate(root):
    os.makedirs(os.path.join(root, "a/b"))
    os.makedirs(os.path.join(root, "d1/d2"))
    for rel, text in (("a/f1", "one"), ("a/f 2", "two"), ("d1/d2/f", "deep"),
                      ("gone", "x"), ("big", "B" * 300000), ("xa", "x")):
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)
    os.link(os.path.join(root, "a/f1"), os.path.join(root, "hl"))
    os.symlink("a/f1", os.path.join(root, "sl"))
    os.mkfifo(os.path.join(root, "fifo"))
    os.setxattr(os.path.join(root, "xa"), "user.k", b"v1")
    os.setxattr(os.path.join(root, "xa"), "user.r", b"removed later")


def _mutate(root):
    j = lambda rel: os.path.join(root, rel)  # noqa: E731
    os.rename(j("a"), j("b2"))
    os.mkdir(j("a"))
    os.rename(j("b2/f1"), j("a/f1"))
    with open(j("hl"), "a") as f:
        f.write("more")
    os.rename(j("d1"), j("e1"))
    os.rename(j("e1/d2"), j("e1/e2"))
    os.unlink(j("gone"))
    os.rmdir(j("b2/b"))
    os.unlink(j("sl"))
    os.symlink("zz", j("sl"))
    os.makedirs(j("new/n 2"))
    with open(j("new/n 2/q"), "w") as f:
        f.write("q")
    os.chmod(j("b2/f 2"), 0o600)
    os.chown(j("e1/e2/f"), 1000, 1000)
    os.truncate(j("big"), 1000)
    os.setxattr(j("xa"), "user.k", b"v2")
    os.setxattr(j("xa"), "user.n", b"new")
    os.mknod(j("node"), 0o600 | 0o020000, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(j("sock"))
    sock.close()
    os.unlink(j("fifo"))
    os.link(j("xa"), j("xa-link"))
    os.removexattr(j("xa"), "user.r")
    os.mkfifo(j("fifo2"))
    subprocess.run(["cp", "--reflink=always", j("big"), j("big-clone")], check=True)


@pytest.mark.integration
@pytest.mark.parametrize("proto", [1, 2])
@pytest.mark.parametrize("no_data", [True, False])
def test_real_stream_matches_receive_dump(btrfs_root, tmp_path, proto, no_data):
    import btrfsutil

    root, snapdir = btrfs_root
    _populate(root)
    pre, work = os.path.join(snapdir, "pre"), os.path.join(snapdir, "work")
    btrfsutil.create_snapshot(root, pre, read_only=True)
    _mutate(root)
    btrfsutil.create_snapshot(root, work, read_only=True)
    stream_file = str(tmp_path / "stream")
    cmd = ["btrfs", "send", "-q", "--proto", str(proto), "-p", pre, "-f", stream_file, work]
    if no_data:
        cmd.insert(2, "--no-data")
    subprocess.run(cmd, check=True)
    with open(stream_file, "rb") as f:
        data = f.read()
    rows, _prefix = _dump(stream_file, "work")
    commands = list(ss.parse(data))
    assert commands[-1].cmd == ss.C_END       # the dump does not print END
    commands = commands[:-1]

    # Command numbers: the same sequence of names as btrfs-progs prints.
    assert [ss.COMMAND_NAMES[c.cmd] for c in commands] == [r[0] for r in rows]
    assert commands[0].version == proto
    seen = set(r[0] for r in rows)
    # The mutation exercises most command kinds, so their numbers are checked.
    assert {"snapshot", "mkfile", "mkdir", "mknod", "mksock", "symlink", "rename", "link",
            "unlink", "rmdir", "set_xattr", "remove_xattr", "truncate", "chmod", "chown",
            "utimes", "mkfifo"} <= seen
    assert ({"write", "clone"} if not no_data else {"update_extent"}) <= seen
    # PATH / PATH_TO / PATH_LINK numbers: the same values as the dump.
    expected = set()
    for (name, path, args), command in zip(rows, commands):
        if name in ("snapshot", "subvol", "end"):
            continue
        assert os.fsdecode(command.attrs[ss.A_PATH]) == path
        expected.add(path)
        if name == "rename":
            to = _strip(args["dest"], "./work")
            assert os.fsdecode(command.attrs[ss.A_PATH_TO]) == to
            expected.add(to)
        if name in ("symlink", "link"):
            assert os.fsdecode(command.attrs[ss.A_PATH_LINK]) == args["dest"]
    assert ss.mentioned_paths(data) == expected

    # Every path that really differs is named, under its PRE or WORK name.
    changed = set(ss.changed_paths(data))
    must = {"a", "a/f1", "a/f 2", "a/b", "b2", "b2/f 2", "hl", "d1/d2/f", "e1/e2/f",
            "gone", "sl", "new", "new/n 2", "new/n 2/q", "big", "xa", "node", "sock",
            "fifo", "xa-link", "fifo2", "big-clone", "."}
    assert must <= changed, must - changed
    assert not [p for p in changed if p.split("/")[0].startswith("o2")]
