"""``make demo``: patchd on sandboxed endpoints, told step by step.

The same story on both families: a real Debian 12 root (mmdebstrap) and an
rpm root (openEuler os-release, dnf), each in a btrfs subvolume on a loop
device with a signed local repository, driven by the real ``patchd``
executable: one upgrade that succeeds, and one whose post-installation
script fails and is rolled back automatically. The host's own packages are
never touched; everything is removed at the end.
"""

import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.lab.endpoint import Lab, changed_paths
from tests.lab.fingerprint import tree_fingerprint


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say("== " + text)


def show_packages(endpoint) -> None:
    for name, (version, status) in sorted(endpoint.demo_versions().items()):
        state = "installed" if status == "ii" else "BROKEN ({})".format(status)
        say("   {:<12} {:<8} {}".format(name, version, state))
    audit = endpoint.audit()
    check = "dpkg --audit" if endpoint.family.name == "deb" else "rpm -Va"
    say("   {}: {}".format(check, "clean" if not audit else audit))


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


def story(family: str, base: pathlib.Path) -> bool:
    title = {"deb": "a Debian 12 root (apt/dpkg), as on Kylin, UOS, Deepin",
             "rpm": "an openEuler-style root (dnf/rpm), as on openEuler, Anolis"}[family]
    heading("Setting up a sandboxed endpoint: " + title)
    say("   The root lives in a btrfs subvolume on a loop device under {},".format(base))
    say("   with a local repository signed with an Ed25519 key. Nothing outside it")
    say("   is changed.")
    started = time.monotonic()
    with Lab(base, family=family) as lab:
        endpoint = lab.endpoint()
        v = endpoint.v
        say("   ready in {:.1f} s; managed root: {}".format(time.monotonic() - started,
                                                           endpoint.root))
        say("   installed demo packages:")
        show_packages(endpoint)

        heading("Step 1: an upgrade that succeeds (demo-app and demo-lib to 1.1)")
        code = run_patchd(endpoint, "install", "demo-app=1.1", "demo-lib=1.1")
        say("   afterwards:")
        show_packages(endpoint)
        ok = code == 0 and endpoint.demo_versions()["demo-app"][0] == v("1.1")

        heading("Step 2: an upgrade whose post-installation script fails (demo-app 1.2)")
        if family == "deb":
            say("   demo-app 1.2's postinst exits with status 1. dpkg would leave the")
            say("   package half-configured; patchd restores the snapshot it took, live.")
        else:
            say("   demo-app 1.2's %post exits with status 1. rpm only warns and keeps")
            say("   1.2 installed; patchd counts it as a failure and restores the snapshot.")
        before = tree_fingerprint(endpoint.root)
        code = run_patchd(endpoint, "install", "demo-app=1.2")
        say("   afterwards:")
        show_packages(endpoint)
        diff = changed_paths(before, tree_fingerprint(endpoint.root))
        say("   files compared with before step 2 (ignoring caches): {}".format(
            "identical" if not diff else "\n     ".join(diff)))
        ok = ok and code == 2 and not diff and endpoint.audit() == ""

        heading("History and snapshots")
        run_patchd(endpoint, "history")
        run_patchd(endpoint, "snapshots")
        lab.discard(endpoint)
    return ok


def main() -> int:
    if os.geteuid() != 0:
        say("The demo needs root: it mounts loop devices and runs dpkg and rpm in a chroot.")
        return 1
    results = {}
    for family in ("deb", "rpm"):
        base = pathlib.Path(tempfile.mkdtemp(prefix="patchd-demo-{}-".format(family)))
        try:
            results[family] = story(family, base)
        finally:
            shutil.rmtree(str(base), ignore_errors=True)   # the lab unmounted its btrfs
    heading("Result")
    for family, ok in results.items():
        say("   {}: {}".format(family, "the upgrade succeeded; the failing upgrade was rolled "
                               "back automatically, nothing half-installed" if ok
                               else "UNEXPECTED: see the output above"))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
