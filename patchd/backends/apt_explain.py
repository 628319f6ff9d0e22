"""Request parsing and error explanation for the apt backend.

Rules:
- Package specs are ``name``, ``name:arch``, ``name=version`` or
  ``name:arch=version``, validated against Debian policy's syntax before
  python-apt sees them; anything else is an ``InvalidRequest``.
- Dependency problems are explained in apt's own words ("Depends: x (>= 2)
  but it is not installable") so admins recognise them.
- Holds (``apt-mark hold``) are refused, never silently overridden.
"""

import re
from typing import List, Optional, Tuple

from patchd.core import errors
from patchd.core.model import Action, Operation, PackageChange, Plan, Request

# Debian policy §5.6.1 (names) and §5.6.12 (versions).
_SPEC = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9+.-]+)(?::(?P<arch>[a-z0-9-]+))?"
    r"(?:=(?P<version>[0-9][A-Za-z0-9.+~:-]*(?:-[A-Za-z0-9.+~]+)?))?$")
_UNSIGNED_MARKERS = ("is not signed", "NO_PUBKEY", "signatures couldn't be verified",
                     "BADSIG", "EXPKEYSIG", "not signed")
_DEPENDS = ("PreDepends", "Depends")
_CONFLICTS = ("Conflicts", "Breaks")


def parse_spec(spec: str) -> Tuple[str, Optional[str], Optional[str]]:
    match = _SPEC.match(spec)
    if match is None:
        raise errors.InvalidRequest(
            "{!r} is not a package name, name:arch or name=version".format(spec))
    return match.group("name"), match.group("arch"), match.group("version")


def lookup(cache, spec: str, op: Operation):
    """Return ``(package, version or None)`` for one request spec."""
    name, arch, version_text = parse_spec(spec)
    key = name if arch is None else "{}:{}".format(name, arch)
    try:
        pkg = cache[key]
    except KeyError:
        raise errors.PackageNotFound(
            "no package named {} is available in the configured repositories".format(key)
        ) from None
    if op is not Operation.INSTALL and not pkg.is_installed:
        raise errors.PackageNotFound("{} is not installed".format(key),
                                     "Nothing to {}; check the name.".format(op.value))
    if version_text is None:
        if op is Operation.INSTALL and pkg.candidate is None:
            raise errors.PackageNotFound("{} has no installable version".format(key))
        return pkg, None
    if op is Operation.REMOVE:
        raise errors.InvalidRequest("remove takes package names without versions: " + spec)
    version = pkg.versions.get(version_text)
    if version is None:
        available = ", ".join(v.version for v in pkg.versions) or "none"
        raise errors.PackageNotFound(
            "{} {} is not available (available: {})".format(key, version_text, available))
    return pkg, version


def _is_held(pkg) -> bool:
    import apt_pkg
    return pkg.is_installed and pkg._pkg.selected_state == apt_pkg.SELSTATE_HOLD


def refuse_if_held(pkg, version, op: Operation) -> None:
    if not _is_held(pkg):
        return
    target = version or pkg.candidate
    if op is Operation.REMOVE or target is None or target.version != pkg.installed.version:
        raise errors.PackageHeld("{} is held at {} (apt-mark hold)".format(
            pkg.shortname, pkg.installed.version))


def refuse_held_changes(cache, plan: Plan, request: Request) -> None:
    """A plan may not change a held package, even as a dependency."""
    held = [c for c in plan.changes if _is_held(package_for(cache, c))]
    if held:
        raise errors.PackageHeld("the request would change held packages: {}".format(
            ", ".join("{} {}".format(c.name, c.old) for c in held)))


def refuse_unmet_request(cache, request: Request) -> None:
    """Every named package must end up as asked, never be dropped silently."""
    for spec in request.packages:
        pkg, version = lookup(cache, spec, request.operation)
        if request.operation is Operation.REMOVE:
            ok = pkg.marked_delete
        else:
            target = version or pkg.candidate
            ok = pkg.candidate == target and (
                pkg.marked_install or pkg.marked_upgrade or pkg.marked_downgrade
                or pkg.installed == target)
        if not ok:
            raise errors.DependencyProblem(
                "{} cannot be {}: {}".format(spec, "removed" if request.operation is
                                             Operation.REMOVE else "installed",
                                             broken(cache, "")))


def package_for(cache, change: PackageChange, missing_ok: bool = False):
    """The cache entry for a change's name and architecture."""
    candidates = [change.name, "{}:{}".format(change.name, change.arch)]
    for key in candidates:
        try:
            pkg = cache[key]
        except KeyError:
            continue
        version = pkg.installed if change.action is Action.REMOVE else pkg.candidate
        if version is None or version.architecture == change.arch or missing_ok:
            return pkg
    if missing_ok:
        return None
    raise errors.PackageNotFound("{}:{} is no longer known to apt".format(change.name, change.arch))


def broken(cache, resolver_message: str) -> str:
    """Explain why the marked changes cannot be installed, in apt's words."""
    lines = []   # type: List[str]
    depcache = cache._depcache
    for pkg in cache:
        if not (pkg.marked_install or pkg.marked_upgrade or pkg.marked_downgrade
                or depcache.is_inst_broken(pkg._pkg)):
            continue
        version = pkg.candidate
        if version is None:
            continue
        for reason in _unmet(version):
            lines.append("{} {}: {}".format(pkg.shortname, version.version, reason))
    if not lines:
        lines.append(resolver_message or "apt could not find a consistent set of packages")
    return "; ".join(sorted(set(lines)))


def _unmet(version) -> List[str]:
    reasons = []
    for group in version.get_dependencies(*_DEPENDS):
        targets = [t for dep in group.or_dependencies for t in dep.target_versions]
        if not targets:
            reasons.append("{}: {} but it is not installable".format(
                group.rawtype, _describe(group)))
        elif not any(_will_be_installed(t.package, t) for t in targets):
            reasons.append("{}: {} but it is not going to be installed".format(
                group.rawtype, _describe(group)))
    for group in version.get_dependencies(*_CONFLICTS):
        for dep in group.or_dependencies:
            for target in dep.target_versions:
                if _will_be_installed(target.package, target):
                    reasons.append("{}: {}".format(group.rawtype, _describe(group)))
    return reasons


def _will_be_installed(pkg, version) -> bool:
    if pkg.marked_delete:
        return False
    if pkg.marked_install or pkg.marked_upgrade or pkg.marked_downgrade:
        return pkg.candidate == version
    return pkg.installed == version


def _describe(group) -> str:
    parts = []
    for dep in group.or_dependencies:
        text = dep.name
        if dep.relation:
            text += " ({} {})".format(dep.relation, dep.version)
        parts.append(text)
    return " | ".join(parts)


def fetch_error(message: str, failures: List[str]) -> errors.PatchdError:
    """Classify an ``apt-get update`` failure from apt's message and the
    error texts of the items that failed."""
    parts = [message.replace("E:", "").replace("W:", "").strip()] + failures
    text = "; ".join(part for part in parts if part) or "apt could not fetch the indexes"
    if any(marker in text for marker in _UNSIGNED_MARKERS):
        return errors.RepositoryUnsigned(text)
    return errors.RepositoryUnavailable(text)
