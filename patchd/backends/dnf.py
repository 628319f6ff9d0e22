"""The dnf/rpm backend (python3-dnf) for one managed root (``installroot``).

The same guarantees as the apt backend, through dnf's own API:

Rules:
- The root's own configuration is used: ``etc/dnf/dnf.conf`` (with its
  ``exclude=``), ``etc/yum.repos.d``, the cache under the root, and the
  release version read from the root's rpm database (or os-release).
- Repository GPG checking follows the repository files and is on by
  default; a package whose signature does not verify is refused before
  anything is installed. Only ``gpgcheck=0``, the admin's explicit marking
  of a repository as trusted, turns it off.
- Version locks (``etc/dnf/plugins/versionlock.list``, the versionlock
  plugin's file) are honoured like apt holds: locked packages are never
  changed, and asking to change one is refused with ``PackageHeld``.
- Every scriptlet error is a failure. rpm reports a failing ``%post``,
  ``%preun``, ``%postun`` or ``%posttrans`` only as a warning (the
  transaction "succeeds"); dnf passes it to ``TransactionDisplay.error()``,
  which is collected here and turned into ``ScriptFailed``.
- The rpm database lock (``var/lib/rpm/.rpm.lock``) and dnf's rpmdb lock are
  waited for, up to ``lock_timeout`` seconds.
- ``apply`` builds a goal from exactly the plan's NEVRAs and refuses to run
  when dnf's resolution differs from the plan.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
from typing import ContextManager, Dict, List, Optional

import structlog

from patchd.backends import dnf_explain
from patchd.backends.diskspace import require_space
from patchd.backends.locks import FcntlLock, ReentrantHold, wait_for
from patchd.backends.plancheck import refuse_drift
from patchd.core import errors
from patchd.core.model import Action, Family, Operation, PackageChange, Plan, Request
from patchd.core.names import DEFAULT_LOCK_TIMEOUT_S
from patchd.core.ports import PackageBackend, Progress, no_progress

log = structlog.get_logger(__name__)

RPM_LOCK = "var/lib/rpm/.rpm.lock"


class DnfBackend(PackageBackend):
    """``PackageBackend`` over python3-dnf for the root ``root``."""

    family = Family.RPM.value
    lock_files = (RPM_LOCK, "var/lib/dnf/rpmdb_lock.pid")

    def __init__(self, root: str = "/", config_dir: str = "/var/lib/patchd",
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S):
        import dnf
        self._dnf = dnf
        self.root = os.path.realpath(root)
        self.log_dir = os.path.join(config_dir, "logs", "dnf")
        self.tmp_dir = os.path.join(config_dir, "tmp", "rpm-transaction")
        self.lock_timeout = lock_timeout
        self._locks = []   # type: List[object]
        self._hold = ReentrantHold(self._acquire, self._release, lock_timeout)
        self._base = None
        self._marked = None   # (plan, lock generation) the open base's goal holds

    # -- dnf set-up --

    def _new_base(self, load_repos: bool = True, expire: bool = False):
        dnf = self._dnf
        # Conf first, Base(conf) after: a bare Base() opens (and creates) the
        # *host's* rpm database to guess the release version.
        conf = dnf.conf.Conf()
        conf.installroot = self.root
        conf_path = os.path.join(self.root, "etc/dnf/dnf.conf")
        if os.path.exists(conf_path):
            conf.config_file_path = conf_path
            conf.read(priority=dnf.conf.PRIO_MAINCONFIG)
        conf.reposdir = [os.path.join(self.root, "etc/yum.repos.d")]
        # dnf.Base, unlike the dnf CLI, does not prefix these with the
        # installroot: left at their defaults, the host's /var/lib/dnf
        # (history, rpmdb lock) and /var/log would be written.
        conf.cachedir = os.path.join(self.root, "var/cache/dnf")
        conf.persistdir = os.path.join(self.root, "var/lib/dnf")
        # dnf's own logs (hawkey.log...) go with patchd's logs: a refused
        # request then leaves the root byte for byte as it was, and a
        # rollback does not erase the log of what failed.
        os.makedirs(self.log_dir, mode=0o750, exist_ok=True)
        conf.logdir = self.log_dir
        conf.assumeyes = True          # imports only keys the repo files name
        conf.substitutions["releasever"] = dnf_explain.releasever(self.root)
        base = dnf.Base(conf)
        base.read_all_repos()
        if expire:
            for repo in base.repos.iter_enabled():
                repo._repo.expire()   # as ``dnf --refresh``: download anew
        try:
            base.fill_sack(load_system_repo=True, load_available_repos=load_repos)
        except dnf.exceptions.RepoError as exc:
            base.close()
            raise dnf_explain.repo_error(str(exc)) from exc
        self._locked_versions = dnf_explain.apply_versionlock(base, self.root)
        return base

    def _fresh_base(self, expire: bool = False):
        """A base with an empty goal; the last one is closed first."""
        self._close_base()
        self._base = self._new_base(expire=expire)
        return self._base

    def _close_base(self) -> None:
        if self._base is not None:
            self._base.close()
        self._base = self._marked = None

    # -- locking --

    def locked(self, timeout: Optional[float] = None) -> ContextManager[None]:
        """Hold rpm's and dnf's database locks; re-entrant within this backend."""
        return self._hold(timeout)

    def _acquire(self, timeout: float) -> None:
        dnf = self._dnf
        what = "the rpm database of {}".format(self.root)
        rpm_lock = FcntlLock(os.path.join(self.root, RPM_LOCK))
        rpm_lock.acquire(timeout, what)
        dnf_lock = dnf.lock.build_rpmdb_lock(os.path.join(self.root, "var/lib/dnf"), True)
        holder = []   # type: List[str]

        def try_dnf() -> bool:
            nonlocal dnf_lock
            try:
                dnf_lock.__enter__()
                return True
            except dnf.exceptions.ProcessLockError as exc:
                holder[:] = [dnf_explain.process(exc.pid)]
                return False
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # dnf's lock is a pid written into a file; on a full disk it
                # cannot be written. rpm's lock, held above, is the one that
                # guards the database: go on, so a rollback can free space.
                log.warning("dnf's lock file cannot be written (disk full); "
                            "holding rpm's lock only", root=self.root)
                dnf_lock = None
                return True
        try:
            wait_for(try_dnf, timeout, "dnf's lock on " + what,
                     lambda: "held by " + "".join(holder) if holder else "")
        except errors.LockTimeout:
            rpm_lock.release()
            raise
        self._locks = [rpm_lock, dnf_lock]

    def _release(self) -> None:
        rpm_lock, dnf_lock = self._locks
        try:
            if dnf_lock is not None:
                dnf_lock.__exit__(None, None, None)
        except FileNotFoundError:
            pass   # dnf's own inner lock of the same file removed it already
        rpm_lock.release()
        self._locks = []

    # -- reading --

    def refresh(self, progress: Progress = no_progress) -> None:
        with self.locked():
            self._fresh_base(expire=True)

    def installed(self) -> List[Dict[str, str]]:
        base = self._fresh_base()
        return [{"name": p.name, "arch": p.arch, "version": dnf_explain.evr(p)}
                for p in base.sack.query().installed()]

    def updates(self) -> Plan:
        return self.plan(Request(Operation.UPGRADE))

    # -- planning --

    def plan(self, request: Request) -> Plan:
        with self.locked():
            base = self._fresh_base()
            dnf_explain.mark_request(base, request, self._locked_versions)
            self._resolve(base, allow_erasing=request.operation is Operation.REMOVE)
            plan = self._plan_from_goal(base)
            dnf_explain.refuse_locked_changes(plan, self._locked_versions)
            return plan

    def _resolve(self, base, allow_erasing: bool) -> None:
        try:
            base.resolve(allow_erasing=allow_erasing)
        except self._dnf.exceptions.DepsolveError as exc:
            raise errors.DependencyProblem(dnf_explain.depsolve_message(str(exc))) from exc

    def _plan_from_goal(self, base) -> Plan:
        transaction = base.transaction
        if transaction is None:
            return Plan()
        new = {(p.name, p.arch): p for p in transaction.install_set}
        old = {(p.name, p.arch): p for p in transaction.remove_set}
        dependencies = dnf_explain.dependency_keys(base)
        changes = []
        download = 0
        delta = 0
        for key in set(new) | set(old):
            before, after = old.get(key), new.get(key)
            if after is None:
                action = Action.REMOVE
            elif before is None:
                action = Action.INSTALL
            else:
                order = after.evr_cmp(before)
                action = (Action.UPGRADE if order > 0 else Action.DOWNGRADE if order < 0
                          else Action.REINSTALL)
            auto = after is not None and key in dependencies
            changes.append(PackageChange(
                key[0], key[1], dnf_explain.evr(before) if before else None,
                dnf_explain.evr(after) if after else None, action, auto))
            if after is not None:
                download += after.downloadsize or 0
                delta += after.installsize or 0
            if before is not None:
                delta -= before.installsize or 0
        return Plan(tuple(changes), download, delta)

    # -- executing --

    def _mark_plan(self, plan: Plan):
        """A base whose goal is exactly ``plan``; refused when dnf disagrees."""
        if self._base is not None and self._marked == (plan, self._hold.generation):
            return self._base
        base = self._fresh_base()
        dnf_explain.mark_plan(base, plan)
        self._resolve(base, allow_erasing=True)
        marked = self._plan_from_goal(base)
        refuse_drift(marked, plan)
        self._marked = (plan, self._hold.generation)
        return base

    def download(self, plan: Plan, progress: Progress = no_progress) -> None:
        with self.locked():
            base = self._mark_plan(plan)
            require_space(self.root, plan)
            packages = list(base.transaction.install_set)
            try:
                # dnf checks each package's checksum against the repodata.
                base.download_packages(packages)
            except self._dnf.exceptions.DownloadError as exc:
                raise errors.DownloadFailed(str(exc)) from exc
            for pkg in packages:
                dnf_explain.verify_signature(base, pkg)

    def apply(self, plan: Plan, progress: Progress = no_progress) -> None:
        """Run the rpm transaction in a child process.

        librpm and libdnf write through memory maps (rpmdb, dnf history):
        on a full disk that is SIGBUS, which must kill a child, not patchd,
        so that the failure is reported and rolled back. The child builds
        its own base (no sqlite connection crosses the fork) and takes the
        database locks itself; this process lets go of its own meanwhile,
        since fcntl locks belong to a process, as python-apt does for dpkg.
        """
        with self.locked():
            self._mark_plan(plan)   # refuse here if the plan no longer applies
            self._close_base()
            self._release()
            try:
                script_errors, failure = self._transaction_in_child(plan, progress)
            finally:
                self._acquire(self.lock_timeout)
            if script_errors:
                raise errors.ScriptFailed("; ".join(script_errors))
            if failure is not None:
                raise errors.ApplyFailed("rpm did not complete the plan: " + failure)

    def _transaction_in_child(self, plan: Plan, progress: Progress):
        """(scriptlet errors, failure or None) of the child's transaction."""
        # dnf keeps rpm's scriptlet output in temporary files that only its
        # finalizers remove; a child ending in os._exit (or a signal) never
        # runs them, so the child's temporary files go to a directory of
        # patchd's that is removed afterwards.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.makedirs(self.tmp_dir, mode=0o700)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: never returns
            os.close(read_fd)
            tempfile.tempdir = self.tmp_dir
            self._child_transaction(plan, os.fdopen(write_fd, "w", buffering=1))
        os.close(write_fd)
        script_errors = []   # type: List[str]
        failure = None   # type: Optional[str]
        with os.fdopen(read_fd) as reports:
            for line in reports:
                kind, value, message = json.loads(line)
                if kind == "progress":
                    progress(value, message)
                elif kind == "error":
                    script_errors.append(message)
                else:
                    failure = message
        _, status = os.waitpid(pid, 0)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            failure = "rpm's transaction process was killed by signal {} ({})".format(
                number, signal.Signals(number).name)
        elif os.WEXITSTATUS(status) and failure is None:
            failure = "rpm's transaction process exited with status {}".format(
                os.WEXITSTATUS(status))
        return script_errors, failure

    def _child_transaction(self, plan: Plan, reports) -> None:
        def send(kind: str, value: float, message: str) -> None:
            try:
                reports.write(json.dumps([kind, value, message]) + "\n")
            except OSError:
                pass   # patchd died: let rpm finish; recovery waits for its lock

        status = 0
        try:
            base = self._new_base()
            dnf_explain.mark_plan(base, plan)
            self._resolve(base, allow_erasing=True)
            refuse_drift(self._plan_from_goal(base), plan)
            base.do_transaction(display=dnf_explain.transaction_display(
                lambda fraction, message: send("progress", fraction, message),
                lambda message: send("error", 0.0, message)))
            base.close()
        except BaseException as exc:   # reported to the parent, which decides
            send("failure", 0.0, " ".join(str(exc).split()) or repr(exc))
            status = 1
        finally:
            os._exit(status)   # no atexit handlers, no parent state flushed

    def check(self, plan: Plan) -> None:
        names = [c.name for c in plan.changes if c.action is not Action.REMOVE]
        if names:
            verify = subprocess.run(
                ["rpm", "--root", self.root, "-V", "--nomtime"] + names,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            problems = dnf_explain.verify_problems(verify.stdout)
            if problems:
                raise errors.CheckFailed("rpm -V reports: " + "; ".join(problems))
        base = self._fresh_base()
        installed = {}   # type: Dict[str, List[str]]
        for pkg in base.sack.query().installed():
            installed.setdefault(pkg.name, []).append(dnf_explain.evr(pkg))
        self._close_base()
        for change in plan.changes:
            have = installed.get(change.name, [])
            if (change.new is None and have) or (change.new is not None
                                                 and change.new not in have):
                raise errors.CheckFailed("{} is at {} instead of {}".format(
                    change.name, ", ".join(have) or "(not installed)",
                    change.new or "(removed)"))

