"""The engine through every path of the state table, with no I/O."""

import pytest

from patchd.core import engine as eng
from patchd.core import errors, states
from patchd.core.model import (
    Action,
    Operation,
    PackageChange,
    Plan,
    Request,
    SnapshotRef,
    State,
    Transaction,
)

PLAN = Plan((PackageChange("demo-app", "all", "1.0", "1.1", Action.UPGRADE),))
SNAP = SnapshotRef("patchd-tx1-pre", "btrfs", "/snapshots/patchd-tx1-pre")
BOOM = errors.ApplyFailed("dpkg exploded")


def new_engine():
    return eng.Engine(Transaction("tx1", Request(Operation.UPGRADE)))


def records(effects):
    return [e.tx.state for e in effects if isinstance(e, eng.Record)]


def work(effects):
    return [e for e in effects if not isinstance(e, eng.Record)]


def drive_to(state):
    """Run the happy path until the engine is in ``state``."""
    engine = new_engine()
    steps = [
        (State.RESOLVING, engine.start),
        (State.DOWNLOADING, lambda: engine.feed(eng.Resolved(PLAN))),
        (State.SNAPSHOTTING, lambda: engine.feed(eng.Downloaded())),
        (State.APPLYING, lambda: engine.feed(eng.SnapshotTaken(SNAP))),
        (State.CHECKING, lambda: engine.feed(eng.Applied())),
    ]
    for reached, step in steps:
        step()
        if reached is state:
            return engine
    raise AssertionError(state)


def test_happy_path_records_each_state_before_its_work():
    engine = new_engine()
    effects = engine.start()
    assert records(effects) == [State.RESOLVING]
    assert isinstance(effects[-1], eng.Resolve)
    effects = engine.feed(eng.Resolved(PLAN))
    assert records(effects) == [State.RESOLVED, State.DOWNLOADING]
    assert effects[-1] == eng.Download(PLAN)
    effects = engine.feed(eng.Downloaded())
    assert records(effects) == [State.VERIFIED, State.SNAPSHOTTING]
    planned = effects[-1]
    assert isinstance(planned, eng.TakeSnapshot) and planned.snapshot.name == "patchd-tx1-pre"
    # The planned snapshot name is journaled before the snapshot exists.
    assert effects[-2].tx.snapshot == planned.snapshot
    effects = engine.feed(eng.SnapshotTaken(SNAP))
    assert records(effects) == [State.APPLYING] and effects[-1] == eng.Apply(PLAN)
    assert effects[0].tx.snapshot == SNAP
    effects = engine.feed(eng.Applied())
    assert records(effects) == [State.CHECKING] and effects[-1] == eng.Check(PLAN)
    effects = engine.feed(eng.Checked())
    assert records(effects) == [State.DONE]
    assert effects[0].report is not None and effects[0].report.changed
    assert isinstance(effects[-1], eng.Prune)
    assert engine.finished and engine.tx.error is None


def test_only_terminal_records_carry_a_report():
    engine = new_engine()
    seen = engine.start() + engine.feed(eng.Resolved(PLAN)) + engine.feed(eng.Downloaded())
    seen += engine.feed(eng.SnapshotTaken(SNAP)) + engine.feed(eng.Applied())
    seen += engine.feed(eng.Checked())
    for effect in seen:
        if isinstance(effect, eng.Record):
            assert (effect.report is not None) == (effect.tx.state in states.TERMINAL)


def test_empty_plan_is_done_without_snapshot():
    engine = new_engine()
    engine.start()
    effects = engine.feed(eng.Resolved(Plan()))
    assert records(effects) == [State.DONE] and work(effects) == []
    assert effects[0].report.changed is False


@pytest.mark.parametrize("state", [State.RESOLVING, State.DOWNLOADING])
def test_failure_before_snapshot_fails_untouched(state):
    engine = drive_to(state)
    err = errors.DependencyProblem("nothing provides libfoo")
    effects = engine.feed(eng.Failed(err))
    assert records(effects) == [State.FAILED] and work(effects) == []
    assert engine.tx.error == err and effects[0].report.changed is False


def test_snapshot_failure_fails_and_discards_partial_snapshot():
    engine = drive_to(State.SNAPSHOTTING)
    effects = engine.feed(eng.Failed(errors.SnapshotFailed("no space")))
    assert records(effects) == [State.FAILED]
    assert isinstance(effects[1], eng.DiscardSnapshot)
    assert effects[0].tx.snapshot is None   # the journal no longer claims it


@pytest.mark.parametrize("state", [State.APPLYING, State.CHECKING])
def test_failure_after_touching_rolls_back(state):
    engine = drive_to(state)
    effects = engine.feed(eng.Failed(BOOM))
    assert records(effects) == [State.ROLLING_BACK] and work(effects) == [eng.Rollback(SNAP)]
    effects = engine.feed(eng.RolledBack())
    assert records(effects) == [State.ROLLED_BACK]
    assert engine.tx.error == BOOM and effects[0].report.changed is False


def test_failed_rollback_is_loud_and_keeps_first_error():
    engine = drive_to(State.APPLYING)
    engine.feed(eng.Failed(BOOM))
    effects = engine.feed(eng.Failed(errors.InternalError("disk gone")))
    assert records(effects) == [State.ROLLBACK_FAILED]
    assert isinstance(engine.tx.error, errors.RollbackFailed)
    assert "dpkg exploded" in engine.tx.error.message and "disk gone" in engine.tx.error.message
    assert effects[0].report.changed is True


@pytest.mark.parametrize("state", [State.RESOLVING, State.DOWNLOADING, State.SNAPSHOTTING])
def test_cancel_before_applying(state):
    engine = drive_to(state)
    assert engine.can_cancel
    effects = engine.feed(eng.CancelRequested())
    assert records(effects) == [State.FAILED]
    assert isinstance(engine.tx.error, errors.Cancelled)


def test_cancel_while_queued():
    engine = new_engine()
    effects = engine.feed(eng.CancelRequested())
    assert records(effects) == [State.FAILED] and engine.finished


@pytest.mark.parametrize("state", [State.APPLYING, State.CHECKING])
def test_cancel_refused_once_applying(state):
    engine = drive_to(state)
    assert not engine.can_cancel
    with pytest.raises(states.IllegalTransition):
        engine.feed(eng.CancelRequested())


def test_outcome_in_wrong_state_is_a_bug():
    engine = drive_to(State.DOWNLOADING)
    with pytest.raises(states.IllegalTransition):
        engine.feed(eng.Applied())
    with pytest.raises(TypeError):
        engine.feed("applied")


@pytest.mark.parametrize("state", sorted(states.UNTOUCHED, key=str))
def test_recover_untouched_state_fails_without_rollback(state):
    tx = Transaction("tx1", Request(Operation.UPGRADE), state=state, plan=PLAN,
                     snapshot=SNAP if state is State.SNAPSHOTTING else None)
    engine = eng.Engine(tx)
    effects = engine.recover()
    assert records(effects) == [State.FAILED]
    assert isinstance(engine.tx.error, errors.Interrupted)
    discard = [e for e in effects if isinstance(e, eng.DiscardSnapshot)]
    assert discard == ([eng.DiscardSnapshot(SNAP)] if state is State.SNAPSHOTTING else [])


@pytest.mark.parametrize("state", [State.APPLYING, State.CHECKING])
def test_recover_touched_state_rolls_back(state):
    engine = eng.Engine(Transaction("tx1", Request(Operation.UPGRADE), state, PLAN, SNAP))
    effects = engine.recover()
    assert records(effects) == [State.ROLLING_BACK] and work(effects) == [eng.Rollback(SNAP)]
    assert isinstance(engine.tx.error, errors.Interrupted)
    engine.feed(eng.RolledBack())
    assert engine.tx.state is State.ROLLED_BACK


def test_recover_mid_rollback_resumes_and_keeps_original_error():
    tx = Transaction("tx1", Request(Operation.UPGRADE), State.ROLLING_BACK, PLAN, SNAP, BOOM)
    engine = eng.Engine(tx)
    effects = engine.recover()
    assert work(effects) == [eng.Rollback(SNAP)]
    engine.feed(eng.RolledBack())
    assert engine.tx.state is State.ROLLED_BACK and engine.tx.error == BOOM


def test_recover_touched_without_snapshot_needs_admin():
    engine = eng.Engine(Transaction("tx1", Request(Operation.UPGRADE), State.APPLYING, PLAN))
    effects = engine.recover()
    assert records(effects) == [State.ROLLBACK_FAILED]


@pytest.mark.parametrize("state", sorted(states.TERMINAL, key=str))
def test_recover_terminal_does_nothing(state):
    engine = eng.Engine(Transaction("tx1", Request(Operation.UPGRADE), state, PLAN, SNAP))
    assert engine.recover() == []


def test_every_table_entry_is_reachable():
    """Each transition in the table is exercised by the paths above."""
    reached = set()
    original = states.next_state

    def spy(state, event):
        reached.add((state, event))
        return original(state, event)

    states.next_state = spy
    try:
        for name, func in list(globals().items()):
            if name.startswith("test_") and func is not test_every_table_entry_is_reachable:
                marks = getattr(func, "pytestmark", [])
                params = [m for m in marks if m.name == "parametrize"]
                if params:
                    for value in params[0].args[1]:
                        func(value)
                else:
                    func()
    finally:
        states.next_state = original
    assert set(states.TRANSITIONS) - reached == set()
