"""Request marking, version locks, signatures and error wording for dnf.

Rules:
- Requests use the same syntax on every family: ``name``, ``name:arch``,
  ``name=version`` (``version``, ``version-release`` or
  ``epoch:version-release``); versions in plans are ``[epoch:]version-release``.
- Version locks follow the versionlock plugin's file
  (``etc/dnf/plugins/versionlock.list``): a locked name keeps the NEVRAs its
  patterns match; ``!pattern`` lines exclude.
- Scriptlet errors reach ``TransactionDisplay.error``; every one is kept.
"""

import fnmatch
import os
import re
from typing import Dict, List

from patchd.backends.locks import describe_process
from patchd.core import errors
from patchd.core.model import Action, Operation, Plan, Request

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_][A-Za-z0-9_.+-]*)(?::(?P<arch>[A-Za-z0-9_]+))?"
                   r"(?:=(?P<version>[A-Za-z0-9._+~^:-]+))?$")
VERSIONLOCK_LIST = "etc/dnf/plugins/versionlock.list"
_SIGNATURE_MARKERS = ("GPG", "signature", "gpg", "not signed", "Public key")


def evr(pkg) -> str:
    base = "{}-{}".format(pkg.version, pkg.release)
    return "{}:{}".format(pkg.epoch, base) if pkg.epoch else base


def nevra_forms(pkg) -> List[str]:
    return ["{}-{}:{}-{}.{}".format(pkg.name, pkg.epoch, pkg.version, pkg.release, pkg.arch),
            "{}-{}.{}".format(pkg.name, evr(pkg), pkg.arch)]


def process(pid) -> str:
    return describe_process(int(pid)) if pid else "another process"


def releasever(root: str) -> str:
    """The root's release version: its rpm database first, then os-release."""
    import dnf.rpm
    try:
        found = dnf.rpm.detect_releasever(root)
    except Exception:   # an rpmdb dnf cannot read falls back to os-release
        found = None
    if found:
        return found
    try:
        with open(os.path.join(root, "etc/os-release")) as f:
            for line in f:
                if line.startswith("VERSION_ID="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "0"


def repo_error(message: str) -> errors.PatchdError:
    text = " ".join(message.split())
    if any(marker in text for marker in _SIGNATURE_MARKERS):
        return errors.RepositoryUnsigned(text, "Install the repository's key (gpgkey=) "
                                         "or fix its signature; gpgcheck=0 marks it trusted.")
    return errors.RepositoryUnavailable(text)


def depsolve_message(message: str) -> str:
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    return "; ".join(lines)


# -- version locks --

def apply_versionlock(base, root: str) -> Dict[str, List[str]]:
    """Exclude what the lock list forbids; return {locked name: allowed EVRs}."""
    try:
        with open(os.path.join(root, VERSIONLOCK_LIST)) as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        return {}
    keep = [p for p in lines if p and not p.startswith(("#", "!"))]
    drop = [p[1:] for p in lines if p.startswith("!")]
    everything = base.sack.query()
    locked = {}   # type: Dict[str, List[str]]
    for pkg in everything:
        if any(fnmatch.fnmatch(form, pattern) for form in nevra_forms(pkg) for pattern in keep):
            locked.setdefault(pkg.name, []).append(evr(pkg))
    excluded = [pkg for pkg in everything.available()
                if (pkg.name in locked and evr(pkg) not in locked[pkg.name])
                or any(fnmatch.fnmatch(form, p) for form in nevra_forms(pkg) for p in drop)]
    if excluded:
        base.sack.add_excludes(excluded)
    return {name: sorted(set(evrs)) for name, evrs in locked.items()}


def _refuse_locked(name: str, locked: Dict[str, List[str]]) -> None:
    raise errors.PackageHeld(
        "{} is locked at {} (dnf versionlock)".format(name, ", ".join(locked[name])),
        "Remove its line from /{} (dnf versionlock delete) if the change is "
        "intended; nothing was changed.".format(VERSIONLOCK_LIST))


def refuse_locked_changes(plan: Plan, locked: Dict[str, List[str]]) -> None:
    for change in plan.changes:
        if change.name in locked and change.new not in locked[change.name]:
            _refuse_locked(change.name, locked)


# -- marking --

def _parse(spec: str):
    match = _SPEC.match(spec)
    if match is None:
        raise errors.InvalidRequest(
            "{!r} is not a package name, name:arch or name=version".format(spec))
    return match.group("name"), match.group("arch"), match.group("version")


def _version_filter(version: str) -> Dict[str, object]:
    epoch, _, rest = version.rpartition(":")
    ver, _, release = rest.partition("-")
    found = {"version": ver}   # type: Dict[str, object]
    if release:
        found["release"] = release
    if epoch:
        found["epoch"] = int(epoch)
    return found


def mark_request(base, request: Request, locked: Dict[str, List[str]]) -> None:
    op = request.operation
    if op is Operation.UPGRADE and not request.packages:
        base.upgrade_all()
        return
    for spec in request.packages:
        name, arch, version = _parse(spec)
        filters = {"name": name}   # type: Dict[str, object]
        if arch:
            filters["arch"] = arch
        installed = base.sack.query().installed().filter(**filters)
        if op is not Operation.INSTALL:
            if not installed:
                raise errors.PackageNotFound("{} is not installed".format(name),
                                             "Nothing to {}; check the name.".format(op.value))
            if name in locked:
                _refuse_locked(name, locked)
            if version:
                raise errors.InvalidRequest(
                    "{} takes package names without versions: {}".format(op.value, spec))
            if op is Operation.REMOVE:
                for pkg in installed:
                    base.package_remove(pkg)
            else:
                base.upgrade(name)
            continue
        if version:
            filters.update(_version_filter(version))
        if name in locked and version is not None:
            matching = base.sack.query().filter(**filters)
            if not [p for p in matching if evr(p) in locked[name]]:
                _refuse_locked(name, locked)
        candidates = base.sack.query().available().filter(**filters).latest()
        if not candidates:
            known = base.sack.query().available().filter(name=name)
            if not known:
                raise errors.PackageNotFound(
                    "no package named {} is available in the configured repositories".format(
                        name))
            raise errors.PackageNotFound("{} {} is not available (available: {})".format(
                name, version, ", ".join(sorted({evr(p) for p in known}))))
        for pkg in candidates:
            _mark_version(base, pkg, installed.filter(arch=pkg.arch))


def _mark_version(base, pkg, installed) -> None:
    current = list(installed)
    if not current:
        base.package_install(pkg, strict=True)
    elif pkg.evr_cmp(current[0]) > 0:
        base.package_upgrade(pkg)
    elif pkg.evr_cmp(current[0]) < 0:
        base.package_downgrade(pkg, strict=True)


def mark_plan(base, plan: Plan) -> None:
    """Mark exactly the plan's NEVRAs."""
    for change in plan.changes:
        installed = base.sack.query().installed().filter(name=change.name, arch=change.arch)
        if change.action is Action.REMOVE:
            for pkg in installed:
                base.package_remove(pkg)
            continue
        found = [p for p in base.sack.query().available().filter(
            name=change.name, arch=change.arch) if evr(p) == change.new]
        if not found:
            raise errors.PackageNotFound("{} {} is no longer in any configured repository"
                                         .format(change.name, change.new))
        if change.action is Action.REINSTALL:
            base.package_reinstall(found[0])
        else:
            _mark_version(base, found[0], installed)


def dependency_keys(base) -> set:
    """(name, arch) of packages the goal pulls in as dependencies."""
    import libdnf.transaction
    wanted = libdnf.transaction.TransactionItemReason_DEPENDENCY
    return {(tsi.pkg.name, tsi.pkg.arch) for tsi in base.transaction
            if tsi.reason == wanted}


# -- verification --

def verify_signature(base, pkg) -> None:
    """Refuse a downloaded package whose signature does not verify."""
    import dnf.exceptions
    code, message = base.package_signature_check(pkg)
    if code == 1:   # the key the repository names (gpgkey=) is not imported yet
        try:
            base.package_import_key(pkg, askcb=lambda *args: True)
            code, message = base.package_signature_check(pkg)
        except dnf.exceptions.Error as exc:   # the named key is not the signer's
            code, message = 2, " ".join(str(exc).split())
    if code == 0:
        return
    # Unsigned, or signed by a key the repository file does not name: the
    # same fix as apt's unsigned repository, hence the same error.
    raise errors.RepositoryUnsigned(
        "{} {} from repository {} has no valid signature: {}".format(
            pkg.name, evr(pkg), pkg.reponame, message),
        "Sign the repository's packages and name the key in gpgkey=, or set "
        "gpgcheck=0 for it if it is trusted; nothing was changed.")


def verify_problems(output: str) -> List[str]:
    """``rpm -V`` lines that matter: not config files, not ghosts."""
    problems = []
    for line in output.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) >= 3 and fields[1] in ("c", "g"):
            continue
        problems.append(line.strip())
    return problems


def transaction_display(progress, on_error):
    """A dnf display that reports progress and passes on every error rpm reports."""
    import dnf.callback
    import dnf.transaction

    class Display(dnf.callback.TransactionProgress):

        def progress(self, package, action, ti_done, ti_total, ts_done, ts_total):
            if action == dnf.transaction.TRANS_PREPARATION or not ts_total:
                # rpm's preparation reports itself as step 1 of 1: not progress.
                return
            part = (ti_done / ti_total) if ti_total else 1.0
            progress(min(1.0, (max(ts_done - 1, 0) + part) / ts_total),
                     "{}: {}".format(getattr(package, "name", package),
                                     dnf.transaction.ACTIONS.get(action, "")))

        def error(self, message):
            on_error(" ".join(str(message).split()))

        def scriptout(self, msgs):
            # Scriptlet output goes where dpkg's goes: standard output, which
            # the runner points at the transaction's log.
            if msgs:
                text = msgs if isinstance(msgs, str) else msgs.decode("utf-8", "replace")
                os.write(1, text.encode("utf-8", "replace"))

    return Display()
