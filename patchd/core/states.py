"""The transaction state table, kept as data.

Every transaction follows the same life on every brand (ARCHITECTURE.md §1)::

    queued → resolving → resolved → downloading → verified → snapshotting
           → applying → checking → done
    any failure before applying            → failed        (system untouched)
    applying/checking failure              → rolling_back → rolled_back
                                                           ↘ rollback_failed

Rules:
- ``TRANSITIONS`` maps ``(state, event)`` to the next state. Nothing else in
  patchd moves a transaction; the engine looks moves up here and raises on
  anything missing, so a hidden state cannot appear.
- States before ``applying`` have not touched the root (``UNTOUCHED``): a
  failure there ends in ``failed``; from ``applying`` on the root may differ
  from its snapshot (``TOUCHED``) and a failure must roll back.
- ``CANCELLABLE`` states (queued, and the working states before
  ``applying``) accept a cancel; once ``applying`` starts the native tool
  runs to its end and its result decides.
- ``RECOVERY`` says what a restart does with a transaction whose last journal
  row is in that state: ``fail`` (nothing changed), ``rollback`` (restore the
  snapshot) or ``none`` (terminal).
"""

from patchd.core.model import State

# Events: outcomes of the work done in a state, plus the admin's cancel.
START = "start"
RESOLVED = "resolved"
NOTHING_TO_DO = "nothing_to_do"
DOWNLOAD_STARTED = "download_started"
DOWNLOADED = "downloaded"
SNAPSHOT_STARTED = "snapshot_started"
SNAPSHOTTED = "snapshotted"
APPLIED = "applied"
CHECKED = "checked"
FAILED = "failed"
CANCEL = "cancel"
ROLLED_BACK = "rolled_back"
INTERRUPTED = "interrupted"

UNTOUCHED = frozenset({
    State.QUEUED, State.RESOLVING, State.RESOLVED, State.DOWNLOADING,
    State.VERIFIED, State.SNAPSHOTTING,
})
TOUCHED = frozenset({State.APPLYING, State.CHECKING})
TERMINAL = frozenset({State.DONE, State.FAILED, State.ROLLED_BACK, State.ROLLBACK_FAILED})
# States in which work is done; ``resolved`` and ``verified`` are milestones
# the engine passes through within one step, so only a crash can leave a
# transaction there.
WORKING = frozenset({State.RESOLVING, State.DOWNLOADING, State.SNAPSHOTTING})
CANCELLABLE = WORKING | {State.QUEUED}

TRANSITIONS = {
    (State.QUEUED, START): State.RESOLVING,
    (State.RESOLVING, RESOLVED): State.RESOLVED,
    (State.RESOLVING, NOTHING_TO_DO): State.DONE,
    (State.RESOLVED, DOWNLOAD_STARTED): State.DOWNLOADING,
    (State.DOWNLOADING, DOWNLOADED): State.VERIFIED,
    (State.VERIFIED, SNAPSHOT_STARTED): State.SNAPSHOTTING,
    (State.SNAPSHOTTING, SNAPSHOTTED): State.APPLYING,
    (State.APPLYING, APPLIED): State.CHECKING,
    (State.CHECKING, CHECKED): State.DONE,
    (State.APPLYING, FAILED): State.ROLLING_BACK,
    (State.CHECKING, FAILED): State.ROLLING_BACK,
    (State.APPLYING, INTERRUPTED): State.ROLLING_BACK,
    (State.CHECKING, INTERRUPTED): State.ROLLING_BACK,
    (State.ROLLING_BACK, ROLLED_BACK): State.ROLLED_BACK,
    (State.ROLLING_BACK, FAILED): State.ROLLBACK_FAILED,
}
for _state in WORKING:
    TRANSITIONS[(_state, FAILED)] = State.FAILED
for _state in CANCELLABLE:
    TRANSITIONS[(_state, CANCEL)] = State.FAILED
for _state in UNTOUCHED:
    TRANSITIONS[(_state, INTERRUPTED)] = State.FAILED
del _state

RECOVERY = {}
for _state in State:
    if _state in TERMINAL:
        RECOVERY[_state] = "none"
    elif _state in UNTOUCHED:
        RECOVERY[_state] = "fail"
    else:
        RECOVERY[_state] = "rollback"   # applying, checking, rolling_back
del _state


class IllegalTransition(Exception):
    """A move that is not in the table: always a bug in the caller."""


def next_state(state: State, event: str) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            "no transition from {} on {!r}".format(state.value, event)) from None
