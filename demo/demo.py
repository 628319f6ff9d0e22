"""``make demo``: patchd on a sandboxed endpoint, told step by step.

Builds a real Debian 12 root (mmdebstrap) in a btrfs subvolume on a loop
device, with a signed local repository, and drives the real ``patchd``
executable against it: one upgrade that succeeds, and one whose
post-installation script fails and is rolled back automatically. The host's
own packages are never touched; everything is removed at the end.
"""

import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.lab.endpoint import VOLATILE, Lab, changed_paths
from tests.lab.fingerprint import tree_fingerprint


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say("== " + text)


def show_packages(endpoint) -> None:
    for name, (version, status) in sorted(endpoint.demo_versions().items()):
        state = "installed" if status == "ii" else "BROKEN ({})".format(status)
        say("   {:<12} {:<6} {}".format(name, version, state))
    audit = endpoint.audit()
    say("   dpkg --audit: " + ("clean" if not audit else audit))


def run_patchd(endpoint, *args: str) -> int:
    say("   $ patchd " + " ".join(args))
    started = time.monotonic()
    result = endpoint.patchd(*args)
    for line in result.stdout.splitlines():
        say("   | " + line)
    if result.returncode not in (0, 1, 2, 3):
        say(result.stderr)
    say("   (exit code {}, {:.2f} s)".format(result.returncode, time.monotonic() - started))
    return result.returncode


def main() -> int:
    if os.geteuid() != 0:
        say("The demo needs root: it mounts a loop device and runs dpkg in a chroot.")
        return 1
    base = pathlib.Path(tempfile.mkdtemp(prefix="patchd-demo-"))
    heading("Setting up a sandboxed endpoint")
    say("   A real Debian 12 root (mmdebstrap --variant=apt, cached) in a btrfs")
    say("   subvolume on a loop device under {}, and a local".format(base))
    say("   repository signed with an Ed25519 key. Nothing outside it is changed.")
    started = time.monotonic()
    with Lab(base) as lab:
        endpoint = lab.endpoint()
        say("   ready in {:.1f} s; managed root: {}".format(time.monotonic() - started,
                                                           endpoint.root))
        say("   installed demo packages:")
        show_packages(endpoint)

        heading("Step 1: an upgrade that succeeds (demo-app and demo-lib to 1.1)")
        code = run_patchd(endpoint, "install", "demo-app=1.1", "demo-lib=1.1")
        say("   afterwards:")
        show_packages(endpoint)
        ok = code == 0

        heading("Step 2: an upgrade whose post-installation script fails (demo-app 1.2)")
        say("   demo-app 1.2's postinst exits with status 1. dpkg would leave the")
        say("   package half-configured; patchd restores the snapshot it took, live.")
        before = tree_fingerprint(endpoint.root)
        code = run_patchd(endpoint, "install", "demo-app=1.2")
        say("   afterwards:")
        show_packages(endpoint)
        diff = changed_paths(before, tree_fingerprint(endpoint.root))
        say("   files compared with before step 2 (ignoring {}): {}".format(
            ", ".join(VOLATILE[:2]), "identical" if not diff else "\n     ".join(diff)))
        ok = ok and code == 2 and not diff and endpoint.audit() == ""

        heading("History and snapshots")
        run_patchd(endpoint, "history")
        run_patchd(endpoint, "snapshots")
        lab.discard(endpoint)
    heading("Result")
    if ok:
        say("   The upgrade succeeded; the failing upgrade was rolled back to its")
        say("   snapshot automatically and left no half-configured package.")
    else:
        say("   UNEXPECTED: see the output above.")
    shutil.rmtree(str(base), ignore_errors=True)   # the lab unmounted its btrfs
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
