"""The transaction engine: feed it outcomes, it returns effects (sans-IO).

The engine owns the decision of what happens next; the runner in
``patchd.daemon`` owns doing it. Neither the engine nor its effects touch a
disk, a clock or a process, so every path, failures included, is unit-tested
without dpkg.

Rules:
- Journal first. Every state change is emitted as a ``Record`` effect *before*
  the effect that does the work of that state; the runner must make each
  ``Record`` durable before performing the next effect.
- Exactly one work effect is outstanding at a time; the runner feeds back its
  outcome (``Resolved``, ``Downloaded``, ... or ``Failed``).
- The first error is the one reported; a failed rollback wraps it.
- ``recover`` turns a journaled, unfinished transaction into the effects that
  converge the root: fail if nothing was touched, else roll back.
"""

from dataclasses import dataclass
from typing import List, Optional, Union

from patchd.core import errors, names, states
from patchd.core.model import Plan, Report, Request, SnapshotRef, State, Transaction, replace

# ---- effects: what the runner must do --------------------------------------

@dataclass(frozen=True)
class Record:
    """Durably journal ``tx``; ``report`` (terminal states only) goes to the outbox."""

    tx: Transaction
    intent: str
    report: Optional[Report] = None


@dataclass(frozen=True)
class Resolve:
    request: Request


@dataclass(frozen=True)
class Download:
    plan: Plan


@dataclass(frozen=True)
class TakeSnapshot:
    snapshot: SnapshotRef
    plan: Plan


@dataclass(frozen=True)
class Apply:
    plan: Plan


@dataclass(frozen=True)
class Check:
    plan: Plan


@dataclass(frozen=True)
class Rollback:
    snapshot: SnapshotRef


@dataclass(frozen=True)
class DiscardSnapshot:
    snapshot: SnapshotRef


@dataclass(frozen=True)
class Prune:
    """Apply snapshot retention; never removes the snapshot of a live transaction."""


Effect = Union[Record, Resolve, Download, TakeSnapshot, Apply, Check, Rollback,
               DiscardSnapshot, Prune]
WORK_EFFECTS = (Resolve, Download, TakeSnapshot, Apply, Check, Rollback)


# ---- outcomes: what the runner feeds back ----------------------------------

@dataclass(frozen=True)
class Resolved:
    plan: Plan


@dataclass(frozen=True)
class Downloaded:
    pass


@dataclass(frozen=True)
class SnapshotTaken:
    snapshot: SnapshotRef


@dataclass(frozen=True)
class Applied:
    pass


@dataclass(frozen=True)
class Checked:
    pass


@dataclass(frozen=True)
class RolledBack:
    pass


@dataclass(frozen=True)
class Failed:
    error: errors.PatchdError


@dataclass(frozen=True)
class CancelRequested:
    pass


Outcome = Union[Resolved, Downloaded, SnapshotTaken, Applied, Checked, RolledBack,
                Failed, CancelRequested]


class Engine:
    """Drives one transaction through ``patchd.core.states.TRANSITIONS``."""

    def __init__(self, tx: Transaction):
        self.tx = tx

    @property
    def finished(self) -> bool:
        return self.tx.state in states.TERMINAL

    @property
    def can_cancel(self) -> bool:
        return self.tx.state in states.CANCELLABLE

    # -- entry points --

    def start(self) -> List[Effect]:
        self._move(states.START)
        return [Record(self.tx, "resolve"), Resolve(self.tx.request)]

    def feed(self, outcome: Outcome) -> List[Effect]:
        handler = getattr(self, "_on_" + type(outcome).__name__, None)
        if handler is None:
            raise TypeError("not an outcome: {!r}".format(outcome))
        return handler(outcome)

    def recover(self) -> List[Effect]:
        """Effects that converge a transaction found unfinished in the journal."""
        state = self.tx.state
        action = states.RECOVERY[state]
        if action == "none":
            return []
        if action == "fail":
            error = errors.Interrupted(
                "patchd stopped while the transaction was {}; the system was "
                "not changed".format(state.value))
            return self._fail_untouched(error, states.INTERRUPTED)
        if self.tx.snapshot is None:   # cannot happen through the engine
            if state is not State.ROLLING_BACK:
                self._move(states.INTERRUPTED, errors.Interrupted(
                    "patchd stopped while the transaction was {}".format(state.value)))
            return self._rollback_failed(errors.RollbackFailed(
                "no snapshot is recorded for this transaction"))
        if state is State.ROLLING_BACK:
            return [Record(self.tx, "rollback (resumed after restart)"),
                    Rollback(self.tx.snapshot)]
        error = errors.Interrupted(
            "patchd stopped while the transaction was {}; the system is being "
            "restored from its snapshot".format(state.value))
        self._move(states.INTERRUPTED, error)
        return [Record(self.tx, "rollback"), Rollback(self.tx.snapshot)]

    # -- outcome handlers --

    def _on_Resolved(self, outcome: Resolved) -> List[Effect]:
        self._expect(State.RESOLVING)
        self.tx = replace(self.tx, plan=outcome.plan)
        if outcome.plan.empty:
            self._move(states.NOTHING_TO_DO)
            return [Record(self.tx, "finish", Report(self.tx, changed=False))]
        self._move(states.RESOLVED)
        effects = [Record(self.tx, "plan")]   # type: List[Effect]
        self._move(states.DOWNLOAD_STARTED)
        return effects + [Record(self.tx, "download"), Download(outcome.plan)]

    def _on_Downloaded(self, outcome: Downloaded) -> List[Effect]:
        self._expect(State.DOWNLOADING)
        self._move(states.DOWNLOADED)
        effects = [Record(self.tx, "verified")]   # type: List[Effect]
        planned = SnapshotRef(names.snapshot_name(self.tx.id, names.SNAPSHOT_PRE))
        self.tx = replace(self.tx, snapshot=planned)
        self._move(states.SNAPSHOT_STARTED)
        return effects + [Record(self.tx, "snapshot"), TakeSnapshot(planned, self._plan())]

    def _on_SnapshotTaken(self, outcome: SnapshotTaken) -> List[Effect]:
        self._expect(State.SNAPSHOTTING)
        self.tx = replace(self.tx, snapshot=outcome.snapshot)
        self._move(states.SNAPSHOTTED)
        return [Record(self.tx, "apply"), Apply(self._plan())]

    def _on_Applied(self, outcome: Applied) -> List[Effect]:
        self._expect(State.APPLYING)
        self._move(states.APPLIED)
        return [Record(self.tx, "check"), Check(self._plan())]

    def _on_Checked(self, outcome: Checked) -> List[Effect]:
        self._expect(State.CHECKING)
        self._move(states.CHECKED)
        return [Record(self.tx, "finish", Report(self.tx, changed=True)), Prune()]

    def _on_RolledBack(self, outcome: RolledBack) -> List[Effect]:
        self._expect(State.ROLLING_BACK)
        self._move(states.ROLLED_BACK)
        return [Record(self.tx, "finish", Report(self.tx, changed=False)), Prune()]

    def _on_Failed(self, outcome: Failed) -> List[Effect]:
        state = self.tx.state
        if state in states.UNTOUCHED:
            return self._fail_untouched(outcome.error, states.FAILED)
        if state in states.TOUCHED:
            self._move(states.FAILED, outcome.error)
            assert self.tx.snapshot is not None
            return [Record(self.tx, "rollback"), Rollback(self.tx.snapshot)]
        if state is State.ROLLING_BACK:
            return self._rollback_failed(outcome.error)
        raise states.IllegalTransition("failure reported in state {}".format(state.value))

    def _on_CancelRequested(self, outcome: CancelRequested) -> List[Effect]:
        if not self.can_cancel:
            raise states.IllegalTransition(
                "cannot cancel in state {}".format(self.tx.state.value))
        return self._fail_untouched(
            errors.Cancelled("cancelled by request while {}".format(self.tx.state.value)),
            states.CANCEL)

    # -- helpers --

    def _fail_untouched(self, error: errors.PatchdError, event: str) -> List[Effect]:
        snapshot = self.tx.snapshot if self.tx.state is State.SNAPSHOTTING else None
        self._move(event, error)
        if snapshot is not None:
            # Journal first, then drop the half-made (or whole) snapshot.
            self.tx = replace(self.tx, snapshot=None)
        effects = [Record(self.tx, "finish", Report(self.tx, changed=False))]   # type: List[Effect]
        if snapshot is not None:
            effects.append(DiscardSnapshot(snapshot))
        return effects

    def _rollback_failed(self, error: errors.PatchdError) -> List[Effect]:
        first = self.tx.error
        message = "rolling back failed: {}".format(error.message)
        if first is not None:
            message += "; the transaction had failed with: {}".format(first.message)
        self.tx = replace(self.tx, error=None)
        self._move(states.FAILED, errors.RollbackFailed(message))
        return [Record(self.tx, "finish", Report(self.tx, changed=True))]

    def _move(self, event: str, error: Optional[errors.PatchdError] = None) -> None:
        new_state = states.next_state(self.tx.state, event)
        self.tx = replace(self.tx, state=new_state, error=self.tx.error or error)

    def _expect(self, state: State) -> None:
        if self.tx.state is not state:
            raise states.IllegalTransition(
                "outcome for {} arrived in state {}".format(state.value, self.tx.state.value))

    def _plan(self) -> Plan:
        assert self.tx.plan is not None
        return self.tx.plan
