"""The effect runner: performs the engine's effects with real adapters.

Rules:
- A ``Record`` effect is made durable by the journal before the next effect
  runs; that is what makes every later crash recoverable.
- Work runs while the backend holds the package database lock, taken before
  the first work effect and released when the transaction is final. Recovery
  takes the same lock, so it waits for an orphaned dpkg to exit.
- Adapter errors (``PatchdError``) become ``Failed`` outcomes; any other
  exception is a bug, reported as ``InternalError`` and handled the same way,
  so a bug while applying still rolls back.
- The output of dpkg and its scripts goes to ``<log_dir>/<tx>.log``, kept for
  diagnosis with the failed snapshot.
"""

import contextlib
import datetime
import os
import sys
import time
import uuid
from typing import Callable, Iterator, List, Optional

import structlog

from patchd.core import engine as eng
from patchd.core import errors
from patchd.core.model import Request, State, Transaction
from patchd.core.ports import Journal, PackageBackend, Snapshotter
from patchd.core.states import TERMINAL
from patchd.daemon import logsetup
from patchd.daemon.failpoints import Failpoints

log = structlog.get_logger(__name__)

# (transaction, intent) after each durable state change.
StateListener = Callable[[Transaction, str], None]
# (transaction id, effect name, fraction, message).
ProgressListener = Callable[[str, str, float, str], None]


def new_transaction_id() -> str:
    """Sortable and readable: ``20261121-232425-3fa9c1``."""
    now = datetime.datetime.utcnow().strftime("%Y%m%d-%H%M%S")
    return "{}-{}".format(now, uuid.uuid4().hex[:6])


class TransactionRunner:
    def __init__(self, backend: PackageBackend, snapshotter: Snapshotter, journal: Journal,
                 log_dir: str, snapshot_keep: int,
                 on_state: Optional[StateListener] = None,
                 on_progress: Optional[ProgressListener] = None,
                 failpoints: Optional[Failpoints] = None):
        self.backend = backend
        self.snapshotter = snapshotter
        self.journal = journal
        self.log_dir = log_dir
        self.snapshot_keep = snapshot_keep
        self.on_state = on_state or (lambda tx, intent: None)
        self.on_progress = on_progress or (lambda tx_id, effect, fraction, message: None)
        self.failpoints = failpoints or Failpoints()

    def run(self, request: Request, tx_id: Optional[str] = None) -> Transaction:
        engine = eng.Engine(Transaction(tx_id or new_transaction_id(), request))
        return self._drive(engine, engine.start())

    def recover(self) -> List[Transaction]:
        """Converge every transaction the journal shows unfinished.

        The package database lock is taken first, even for transactions that
        touched nothing: it waits for a package tool orphaned by the crash
        (dpkg, rpm) to exit, and takes over dnf's lock from the dead process.
        """
        unfinished = self.journal.unfinished()
        if not unfinished:
            return []
        finished = []
        with self.backend.locked():
            for tx in unfinished:
                log.warning("recovering interrupted transaction", tx=tx.id,
                            state=tx.state.value)
                engine = eng.Engine(tx)
                finished.append(self._drive(engine, engine.recover()))
        return finished

    def _drive(self, engine: eng.Engine, effects: List[eng.Effect]) -> Transaction:
        with contextlib.ExitStack() as stack:
            stack.enter_context(logsetup.transaction_context(engine.tx.id))
            locked = False
            while effects:
                effect = effects.pop(0)
                if isinstance(effect, eng.Record):
                    self._record(effect)
                    continue
                if not locked and isinstance(effect, eng.WORK_EFFECTS):
                    try:
                        stack.enter_context(self.backend.locked())
                    except errors.PatchdError as exc:
                        if engine.tx.state is State.ROLLING_BACK:
                            raise   # recovery must not give up: retry on next start
                        effects = engine.feed(eng.Failed(exc))
                        continue
                    locked = True
                started = time.monotonic()
                outcome = self._perform(effect, engine.tx)
                log.info("step finished", step=type(effect).__name__,
                            ms=round((time.monotonic() - started) * 1000, 1),
                            outcome=type(outcome).__name__ if outcome else None)
                if outcome is not None:
                    self.failpoints.hit("after:" + type(effect).__name__)
                    effects = engine.feed(outcome) + effects
        return engine.tx

    def _record(self, effect: eng.Record) -> None:
        self.journal.record(effect.tx, effect.intent, effect.report)
        log.info("state", state=effect.tx.state.value, intent=effect.intent,
                    error=effect.tx.error.code if effect.tx.error else None)
        self.failpoints.hit("after-record:" + effect.tx.state.value)
        if effect.tx.state in TERMINAL:
            self.failpoints.hit("after-record:terminal")
        self.on_state(effect.tx, effect.intent)

    def _perform(self, effect: eng.Effect, tx: Transaction) -> Optional[object]:
        """Do one effect; return its outcome (None for effects without one)."""
        name = type(effect).__name__

        def progress(fraction: float, message: str) -> None:
            self.failpoints.progress(name, fraction)
            self.on_progress(tx.id, name, fraction, message)

        if isinstance(effect, eng.DiscardSnapshot):
            self._quietly("discard snapshot", self.snapshotter.delete, effect.snapshot)
            return None
        if isinstance(effect, eng.Prune):
            protect = [t.id for t in self.journal.unfinished()]
            self._quietly("prune snapshots", self.snapshotter.prune,
                          self.snapshot_keep, protect)
            return None
        try:
            with self._output_to(tx.id):
                if isinstance(effect, eng.Resolve):
                    return eng.Resolved(self.backend.plan(effect.request))
                if isinstance(effect, eng.Download):
                    self.backend.download(effect.plan, progress)
                    return eng.Downloaded()
                if isinstance(effect, eng.TakeSnapshot):
                    return eng.SnapshotTaken(self.snapshotter.take(effect.snapshot))
                if isinstance(effect, eng.Apply):
                    self.backend.apply(effect.plan, progress)
                    return eng.Applied()
                if isinstance(effect, eng.Check):
                    self.backend.check(effect.plan)
                    return eng.Checked()
                if isinstance(effect, eng.Rollback):
                    self.snapshotter.restore(effect.snapshot, progress)
                    return eng.RolledBack()
        except errors.PatchdError as exc:
            log.warning("step failed", step=name, code=exc.code, message=exc.message)
            return eng.Failed(exc)
        except Exception as exc:   # a bug: still fail safely (and roll back)
            log.exception("step crashed", step=name)
            return eng.Failed(errors.InternalError("{} crashed: {!r}".format(name, exc)))
        raise TypeError("unknown effect {!r}".format(effect))

    @staticmethod
    def _quietly(what: str, func, *args) -> None:
        """Housekeeping after a final record: failures are logged, not fatal."""
        try:
            func(*args)
        except Exception:
            log.exception(what + " failed")

    @contextlib.contextmanager
    def _output_to(self, tx_id: str) -> Iterator[None]:
        """Send fd 1 and 2 (dpkg and its scripts inherit them) to the tx log."""
        os.makedirs(self.log_dir, mode=0o750, exist_ok=True)
        path = os.path.join(self.log_dir, tx_id + ".log")
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for handle in saved + [fd]:
                os.close(handle)
