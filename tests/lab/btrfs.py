"""A loop-mounted btrfs filesystem for tests, plus subvolume helpers.

``LoopBtrfs`` creates a sparse image, formats it, loop-mounts it and, on
exit, tears everything down again: nested mounts, the btrfs mount, the loop
device and the image.  ``remove_tree`` deletes a directory that may contain
subvolumes and read-only snapshots.

Rules:
* Never leak a mount or a loop device, even when the body raises or the
  setup itself fails half-way.  Unmount is retried, then done lazily
  (``umount -l``), because a leaked mount outlives the test run and breaks
  the next one.
* Mounts are read from /proc/self/mountinfo and loop devices from
  /sys/block/loop*/loop/backing_file (what ``losetup -j`` reads), so no
  output of a tool has to be parsed.
* btrfsutil is imported lazily: conftest imports this module, and unit
  tests run under interpreters without python3-btrfsutil must still load.
"""
from __future__ import annotations

import glob
import os
import pathlib
import re
import shutil
import subprocess
import time
import uuid
from typing import List, Sequence, Union

_SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)$")
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_size(size: Union[int, str]) -> int:
    if isinstance(size, int):
        return size
    match = _SIZE_RE.match(size.strip().upper())
    if not match:
        raise ValueError("bad size %r (use bytes or e.g. '512M', '4G')" % (size,))
    return int(match.group(1)) * _SUFFIX[match.group(2)]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> List[str]:
    """All current mount points of this mount namespace."""
    with open("/proc/self/mountinfo") as handle:
        return [_unescape(line.split()[4]) for line in handle]


def mounts_below(path) -> List[str]:
    """Mount points at or below ``path``, deepest first (unmount order)."""
    top = os.path.realpath(str(path))
    found = [m for m in mount_points() if m == top or m.startswith(top.rstrip("/") + "/")]
    # Reverse mount order handles stacked mounts; depth sort handles nesting.
    found = list(reversed(found))
    found.sort(key=lambda m: m.count("/"), reverse=True)
    return found


def unmount_tree(path, retries: int = 5) -> None:
    """Unmount everything at or below ``path``; lazy unmount as last resort."""
    for _ in range(retries):
        targets = mounts_below(path)
        if not targets:
            return
        for target in targets:
            subprocess.run(["umount", target], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if not mounts_below(path):
            return
        time.sleep(0.2)  # busy: give short-lived processes a moment
    for target in mounts_below(path):
        # Detaches now; the kernel frees it when the last user goes away.
        subprocess.run(["umount", "-l", target], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    left = mounts_below(path)
    if left:
        raise RuntimeError("could not unmount: %s" % ", ".join(left))


def loop_devices_for(image) -> List[str]:
    """Loop devices whose backing file is ``image`` (even if deleted)."""
    image = os.path.realpath(str(image))
    devices = []
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(backing) as handle:
                name = handle.read().rstrip("\n")
        except OSError:
            continue  # detached while we looked
        if name.endswith(" (deleted)"):
            name = name[: -len(" (deleted)")]
        if name == image:
            devices.append("/dev/" + backing.split("/")[3])
    return devices


def detach_loops(image, wait: float = 3.0) -> None:
    """Make sure no loop device is backed by ``image`` any more."""
    start = time.monotonic()
    # The kernel auto-clears a mount's loop device, but asynchronously, so
    # poll for half the budget before detaching by hand.
    while loop_devices_for(image) and time.monotonic() < start + wait / 2:
        time.sleep(0.05)
    for device in loop_devices_for(image):
        subprocess.run(["losetup", "-d", device], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    while loop_devices_for(image) and time.monotonic() < start + wait:
        time.sleep(0.05)
    left = loop_devices_for(image)
    if left:
        raise RuntimeError("loop devices still attached to %s: %s" % (image, left))


class LoopBtrfs:
    """Context manager: a fresh btrfs on a sparse loop image.

    ``with LoopBtrfs(tmpdir) as fs:`` gives ``fs.mountpoint``, ``fs.image``
    and ``fs.loop_device``.  If a process still holds a file open inside,
    the mount is detached lazily and the loop device clears itself once
    that file is closed; ``cleanup`` raises RuntimeError saying so (after
    about 4 s) rather than pretending all was freed.
    """

    def __init__(self, directory, size: Union[int, str] = "4G",
                 mount_options: Sequence[str] = ()) -> None:
        self.directory = pathlib.Path(directory).resolve()
        self.size = _parse_size(size)
        self.mount_options = tuple(mount_options)
        tag = uuid.uuid4().hex[:8]
        self.image = self.directory / ("lab-btrfs-%s.img" % tag)
        self.mountpoint = self.directory / ("lab-btrfs-%s.mnt" % tag)
        self.loop_device = None  # type: Union[str, None]

    def __enter__(self) -> LoopBtrfs:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            with open(str(self.image), "xb") as handle:
                handle.truncate(self.size)  # sparse: no blocks allocated
            subprocess.run(["mkfs.btrfs", "-q", "-f", str(self.image)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.mountpoint.mkdir()
            options = ",".join(("loop",) + self.mount_options)
            subprocess.run(["mount", "-o", options, str(self.image), str(self.mountpoint)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            devices = loop_devices_for(self.image)
            self.loop_device = devices[0] if devices else None
        except BaseException:
            self.cleanup()  # half-built setups must not leak either
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Idempotent teardown; raises only if something could not be freed."""
        errors = []
        for step in (lambda: unmount_tree(self.mountpoint),
                     lambda: detach_loops(self.image)):
            try:
                step()
            except Exception as exc:  # keep going: free as much as possible
                errors.append(str(exc))
        if self.image.exists():
            self.image.unlink()
        if self.mountpoint.is_dir() and not mounts_below(self.mountpoint):
            self.mountpoint.rmdir()
        if errors:
            raise RuntimeError("LoopBtrfs cleanup incomplete: " + "; ".join(errors))


def make_subvolume(path) -> pathlib.Path:
    """Create a btrfs subvolume at ``path`` (parent directories included)."""
    import btrfsutil

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    btrfsutil.create_subvolume(str(path))
    return path


def remove_tree(path) -> None:
    """Delete ``path`` including nested subvolumes and read-only snapshots.

    Anything mounted below it is unmounted first.  Plain ``rm -rf`` cannot
    do this: files inside a read-only snapshot cannot be unlinked, and
    subvolumes must be deleted, not emptied.
    """
    import btrfsutil

    path = pathlib.Path(path)
    if not os.path.lexists(str(path)):
        return
    unmount_tree(path)
    if path.is_dir() and not path.is_symlink() and btrfsutil.is_subvolume(str(path)):
        btrfsutil.delete_subvolume(str(path), recursive=True)
        return
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, _files in os.walk(str(path)):
            for name in list(dirnames):
                child = os.path.join(dirpath, name)
                if not os.path.islink(child) and btrfsutil.is_subvolume(child):
                    btrfsutil.delete_subvolume(child, recursive=True)
                    dirnames.remove(name)  # gone; do not descend
        shutil.rmtree(str(path))
    else:
        path.unlink()
