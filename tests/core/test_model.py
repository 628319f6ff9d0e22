"""Model serialisation, names and the error tree."""

from patchd.core import errors, names, states
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


def test_transaction_round_trips_through_dict():
    tx = Transaction(
        "20261121-000000-abcdef", Request(Operation.INSTALL, ("demo-app=1.1",)),
        State.ROLLED_BACK,
        Plan((PackageChange("b", "amd64", None, "2", Action.INSTALL, auto=True),
              PackageChange("a", "all", "1", "2", Action.UPGRADE)), 10, -5),
        SnapshotRef("patchd-x-pre", "btrfs", "/s/patchd-x-pre"),
        errors.ScriptFailed("postinst failed"))
    again = Transaction.from_dict(tx.to_dict())
    assert again == tx
    assert [c.name for c in again.plan.changes] == ["a", "b"]   # sorted


def test_error_codes_are_unique_and_round_trip():
    classes = list(errors._all_subclasses(errors.PatchdError))
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        err = cls("message")
        assert errors.from_dict(err.to_dict()) == err
        assert err.dbus_name == "org.patchd.Patchd1.Error." + cls.__name__
        assert err.hint, cls
    assert isinstance(errors.from_dict({"code": "no-such"}), errors.InternalError)


def test_transaction_ids_are_safe_for_file_names():
    import pytest
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(errors.InvalidRequest):
            Transaction(bad, Request(Operation.UPGRADE))


def test_snapshot_names_parse_back():
    name = names.snapshot_name("20261121-000000-abcdef", names.SNAPSHOT_PRE)
    assert names.parse_snapshot_name(name) == ("20261121-000000-abcdef", "pre")
    assert names.parse_snapshot_name("other") is None
    assert names.parse_snapshot_name("patchd-x-weird") is None


def test_state_table_partitions_states():
    assert states.UNTOUCHED | states.TOUCHED | states.TERMINAL | {State.ROLLING_BACK} == set(State)
    for (state, _event), target in states.TRANSITIONS.items():
        assert state not in states.TERMINAL
        if state in states.UNTOUCHED:
            assert target not in (State.ROLLING_BACK, State.ROLLED_BACK)
