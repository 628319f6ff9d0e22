"""The apt/dpkg backend (python-apt) for one managed root.

Rules:
- One root per process. python-apt keeps its configuration in process-global
  state that cannot be reset, and the host's ``/etc/apt/apt.conf.d`` hooks
  (needrestart, PackageKit) would leak into a managed root if it were read
  first. So ``APT_CONFIG`` names a file with ``Dir`` set to the root *before*
  python-apt is imported, and the backend refuses a process whose python-apt
  already points elsewhere. The status file is checked to lie inside the root.
- dpkg runs chrooted into a managed root (``DPkg::Chroot-Directory``), so
  maintainer scripts act on the root, never on the host.
- Every step holds the dpkg lock, waited for up to ``lock_timeout`` seconds;
  a holder that does not let go gives ``LockTimeout`` naming the process.
- ``apply`` marks exactly the plan's versions with ``auto_fix=False`` and
  refuses to commit when apt's change set differs from the plan.
- Any maintainer-script error fails ``apply``; ``check`` runs
  ``dpkg --audit`` so a half-configured package can never pass.
"""

import hashlib
import os
import subprocess
import sys
from typing import ContextManager, Dict, List, Optional

import structlog

from patchd.backends import apt_explain
from patchd.backends.diskspace import require_space
from patchd.backends.locks import ReentrantHold, wait_for
from patchd.backends.plancheck import refuse_drift
from patchd.core import errors
from patchd.core.model import Action, Family, Operation, PackageChange, Plan, Request
from patchd.core.names import DEFAULT_LOCK_TIMEOUT_S
from patchd.core.ports import PackageBackend, Progress, no_progress

log = structlog.get_logger(__name__)



def _init_python_apt(root: str, config_dir: str):
    """Import python-apt configured for ``root`` and return ``(apt, apt_pkg)``."""
    if root != "/":
        os.makedirs(config_dir, mode=0o700, exist_ok=True)
        digest = hashlib.sha256(root.encode()).hexdigest()[:12]
        path = os.path.join(config_dir, "apt-{}.conf".format(digest))
        with open(path, "w") as f:
            f.write('Dir "{0}/";\nDPkg::Chroot-Directory "{0}/";\n'.format(root))
        if "apt_pkg" in sys.modules and os.environ.get("APT_CONFIG") != path:
            raise errors.InternalError(
                "python-apt is already initialised for another root in this "
                "process; run one managed root per process")
        os.environ["APT_CONFIG"] = path
    # Maintainer scripts must never wait for a person.
    os.environ["DEBIAN_FRONTEND"] = "noninteractive"
    os.environ["APT_LISTCHANGES_FRONTEND"] = "none"
    import apt
    import apt_pkg
    apt_pkg.init_config()
    apt_pkg.init_system()
    config = apt_pkg.config
    config.set("DPkg::Use-Pty", "0")
    config.set("Acquire::AllowInsecureRepositories", "false")
    config.set("APT::Get::AllowUnauthenticated", "false")
    options = config.value_list("DPkg::Options")
    for option in ("--force-confdef", "--force-confold"):
        if option not in options:
            config.set("DPkg::Options::", option)
    status = os.path.realpath(config.find_file("Dir::State::status"))
    if root != "/" and not status.startswith(root + os.sep):
        raise errors.InternalError(
            "python-apt points at {} instead of the managed root {}".format(status, root))
    return apt, apt_pkg


class AptBackend(PackageBackend):
    """``PackageBackend`` over python-apt for the root ``root``."""

    family = Family.DEB.value
    lock_files = ("var/lib/dpkg/lock", "var/lib/dpkg/lock-frontend",
                  "var/lib/dpkg/triggers/Lock", "var/cache/apt/archives/lock",
                  "var/lib/apt/lists/lock")

    def __init__(self, root: str = "/", config_dir: str = "/var/lib/patchd",
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S):
        self.root = os.path.realpath(root)
        self.lock_timeout = lock_timeout
        self._apt, self._apt_pkg = _init_python_apt(self.root, config_dir)
        self._cache = None
        self._hold = ReentrantHold(self._acquire, self._apt_pkg.pkgsystem_unlock, lock_timeout)
        # (plan, lock generation) whose marks the open cache holds: apply can
        # reuse download's marks when the lock was held in between, because
        # then nothing can have changed the database.
        self._marked = None

    # -- locking --

    def locked(self, timeout: Optional[float] = None) -> ContextManager[None]:
        """Hold dpkg's frontend lock; re-entrant within this backend."""
        return self._hold(timeout)

    def _acquire(self, timeout: float) -> None:
        holder = []   # type: List[str]

        def try_once() -> bool:
            try:
                self._apt_pkg.pkgsystem_lock()
                return True
            except SystemError as exc:   # apt names the holder in its message
                holder[:] = [_first_error(exc)]
                return False

        wait_for(try_once, timeout, "the package database of " + self.root,
                 lambda: "".join(holder))

    # -- reading --

    def _open(self, fresh: bool = False):
        """The package cache, reopened when the database may have changed."""
        self._marked = None
        if self._cache is None:
            self._cache = self._apt.Cache()
        elif fresh:
            self._cache.open()
        self._cache.clear()
        return self._cache

    def refresh(self, progress: Progress = no_progress) -> None:
        with self.locked():
            cache = self._open()
            fetch = _FetchProgress(progress)
            try:
                cache.update(fetch, raise_on_error=True)
            except self._apt.cache.FetchFailedException as exc:
                raise apt_explain.fetch_error(str(exc), fetch.failures) from exc
            self._open(fresh=True)

    def installed(self) -> List[Dict[str, str]]:
        cache = self._open(fresh=True)
        return [{"name": pkg.shortname, "arch": pkg.installed.architecture,
                 "version": pkg.installed.version}
                for pkg in cache if pkg.is_installed]

    def updates(self) -> Plan:
        return self.plan(Request(Operation.UPGRADE))

    # -- planning --

    def plan(self, request: Request) -> Plan:
        with self.locked():
            cache = self._open(fresh=True)
            apt_pkg = self._apt_pkg
            resolver = apt_pkg.ProblemResolver(cache._depcache)
            try:
                with cache.actiongroup():
                    self._mark_request(cache, resolver, request)
                    if request.operation is not Operation.UPGRADE or request.packages:
                        resolver.resolve()
            except SystemError as exc:
                explanation = apt_explain.broken(cache, _first_error(exc))
                raise errors.DependencyProblem(explanation) from exc
            if cache.broken_count:
                raise errors.DependencyProblem(apt_explain.broken(cache, ""))
            plan = self._plan_from_marks(cache)
            apt_explain.refuse_held_changes(cache, plan, request)
            apt_explain.refuse_unmet_request(cache, request)
            return plan

    def _mark_request(self, cache, resolver, request: Request) -> None:
        op = request.operation
        if op is Operation.UPGRADE and not request.packages:
            cache.upgrade(dist_upgrade=False)
            return
        targets = [apt_explain.lookup(cache, spec, op) for spec in request.packages]
        for pkg, version in targets:
            apt_explain.refuse_if_held(pkg, version, op)
            resolver.clear(pkg._pkg)
            resolver.protect(pkg._pkg)
            if op is Operation.REMOVE:
                resolver.remove(pkg._pkg)
            elif version is not None:
                pkg.candidate = version
        # Mark after protecting every target, as apt-get does: marking one by
        # one lets a later mark silently undo an earlier conflicting one.
        # Installs are marked twice, like apt-get: first without dependencies
        # (apt >= 2 refuses to mark at all, silently, a package whose
        # dependencies cannot be met, which would turn into an empty plan),
        # then with them.
        for auto_inst in (False, True):
            for pkg, _version in targets:
                if op is Operation.REMOVE:
                    pkg.mark_delete(auto_fix=False)
                else:
                    pkg.mark_install(auto_fix=False, auto_inst=auto_inst, from_user=True)

    def _plan_from_marks(self, cache) -> Plan:
        depcache = cache._depcache
        changes = []
        for pkg in cache.get_changes():
            old = pkg.installed.version if pkg.installed else None
            if pkg.marked_delete:
                action, new, arch = Action.REMOVE, None, pkg.installed.architecture
            else:
                new, arch = pkg.candidate.version, pkg.candidate.architecture
                if pkg.marked_install:
                    action = Action.INSTALL
                elif pkg.marked_upgrade:
                    action = Action.UPGRADE
                elif pkg.marked_downgrade:
                    action = Action.DOWNGRADE
                else:
                    action = Action.REINSTALL
            auto = bool(pkg.marked_install and depcache.is_auto_installed(pkg._pkg))
            changes.append(PackageChange(pkg.shortname, arch, old, new, action, auto))
        return Plan(tuple(changes), int(cache.required_download), int(cache.required_space))

    # -- executing --

    def _mark_plan(self, plan: Plan):
        """Mark exactly ``plan`` on a fresh cache; refuse when apt disagrees."""
        if self._cache is not None and self._marked == (plan, self._hold.generation):
            return self._cache
        cache = self._open(fresh=True)
        with cache.actiongroup():
            for change in plan.changes:
                pkg = apt_explain.package_for(cache, change)
                if change.action is Action.REMOVE:
                    pkg.mark_delete(auto_fix=False)
                    continue
                version = pkg.versions.get(change.new)
                if version is None:
                    raise errors.PackageNotFound(
                        "{} {} is no longer in any configured repository".format(
                            change.name, change.new))
                pkg.candidate = version
                if change.action is Action.REINSTALL:
                    pkg.mark_reinstall()
                else:
                    pkg.mark_install(auto_fix=False, auto_inst=False, from_user=not change.auto)
        marked = self._plan_from_marks(cache)
        refuse_drift(marked, plan, broken=bool(cache.broken_count))
        self._marked = (plan, self._hold.generation)
        return cache

    def download(self, plan: Plan, progress: Progress = no_progress) -> None:
        with self.locked():
            cache = self._mark_plan(plan)
            for pkg in cache.get_changes():
                if pkg.marked_delete:
                    continue
                if not any(origin.trusted for origin in pkg.candidate.origins):
                    raise errors.VerificationFailed(
                        "{} {} comes from a repository without a valid signature".format(
                            pkg.shortname, pkg.candidate.version))
            require_space(self.root, plan)
            try:
                # apt checks every archive's size and hash against the
                # signed index while fetching; a mismatch fails the fetch.
                cache.fetch_archives(_FetchProgress(progress))
            except self._apt.cache.FetchFailedException as exc:
                raise errors.DownloadFailed(_first_error(exc)) from exc
            except SystemError as exc:
                raise errors.VerificationFailed(_first_error(exc)) from exc

    def apply(self, plan: Plan, progress: Progress = no_progress) -> None:
        with self.locked():
            cache = self._mark_plan(plan)
            install_progress = _InstallProgress(self._apt, progress)
            try:
                ok = cache.commit(_FetchProgress(no_progress), install_progress)
            except SystemError as exc:
                ok = False
                log.warning("dpkg failed", error=_first_error(exc))
            finally:
                self._cache = self._marked = None   # dpkg changed the database
            if install_progress.script_errors:
                raise errors.ScriptFailed("; ".join(install_progress.script_errors))
            if not ok:
                raise errors.ApplyFailed("dpkg did not complete the plan")

    def check(self, plan: Plan) -> None:
        audit = subprocess.run(
            ["dpkg", "--root=" + self.root, "--audit"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if audit.returncode != 0 or audit.stdout.strip():
            raise errors.CheckFailed("dpkg --audit reports: " + audit.stdout.strip())
        cache = self._open(fresh=True)
        for change in plan.changes:
            pkg = apt_explain.package_for(cache, change, missing_ok=True)
            have = pkg.installed.version if pkg is not None and pkg.installed else None
            if have != change.new:
                raise errors.CheckFailed("{} is at {} instead of {}".format(
                    change.name, have or "(not installed)", change.new or "(removed)"))


def _first_error(exc: Exception) -> str:
    """apt's messages look like ``E:text, W:text``; keep them readable."""
    return str(exc).replace("E:", "").replace("W:", "").strip()


class _FetchProgress:
    """Adapts apt's acquire progress to a ``Progress`` callback and keeps each
    failed item's error text (python-apt's exception often has none)."""

    def __new__(cls, progress: Progress):
        import apt.progress.base

        class Adapter(apt.progress.base.AcquireProgress):
            failures = []   # type: List[str]

            def pulse(self, owner):
                if self.total_bytes:
                    progress(self.current_bytes / self.total_bytes, "downloading")
                return True

            def fail(self, item):
                text = item.owner.error_text
                if text and item.owner.status != item.owner.STAT_IDLE:
                    self.failures.append("{}: {}".format(item.description, text))

        adapter = Adapter()
        adapter.failures = []
        return adapter


class _InstallProgress:
    """Adapts dpkg's status pipe; collects every maintainer-script error."""

    def __new__(cls, apt_module, progress: Progress):
        class Adapter(apt_module.progress.base.InstallProgress):
            script_errors = []   # type: List[str]

            def status_change(self, pkg, percent, status):
                progress(percent / 100.0, "{}: {}".format(pkg, status))

            def error(self, pkg, errormsg):
                self.script_errors.append("{}: {}".format(pkg, errormsg.strip()))

        adapter = Adapter()
        adapter.script_errors = []
        return adapter
