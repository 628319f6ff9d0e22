"""SqliteJournal against a real SQLite file, driven by the real engine.

The engine's ``Record`` effects are written exactly as the runner will write
them, so these tests check the journal on the paths transactions really take.
No mocks: faults are injected with SQLite itself (a trigger that refuses
inserts, bytes written over the file) and crashes with a real SIGKILL.
"""

import json
import os
import pathlib
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from patchd.core import errors
from patchd.core.engine import (
    Applied,
    CancelRequested,
    Checked,
    Downloaded,
    Engine,
    Failed,
    Record,
    Resolved,
    RolledBack,
    SnapshotTaken,
)
from patchd.core.model import (
    Action,
    Operation,
    PackageChange,
    Plan,
    Report,
    Request,
    SnapshotRef,
    State,
    Transaction,
)
from patchd.core.states import TERMINAL
from patchd.store.journal import REPORT_KIND, SqliteJournal

REPO = pathlib.Path(__file__).resolve().parents[2]

PLAN = Plan((PackageChange("libfoo", "amd64", "1.0-1", "1.0-2", Action.UPGRADE),
             PackageChange("libbar", "amd64", None, "2.0-1", Action.INSTALL, auto=True)),
            download_bytes=1000, install_delta_bytes=2048)
SNAPSHOT = SnapshotRef("patchd-{}-pre", path="/.snapshots/patchd/x")

# Outcomes for each way a transaction can end, and the state it ends in.
PATHS = {
    "done": ([Resolved(PLAN), Downloaded(), SnapshotTaken(SNAPSHOT), Applied(), Checked()],
             State.DONE),
    "nothing-to-do": ([Resolved(Plan())], State.DONE),
    "download-failed": ([Resolved(PLAN), Failed(errors.DownloadFailed("mirror down"))],
                        State.FAILED),
    "cancelled-while-snapshotting": ([Resolved(PLAN), Downloaded(), CancelRequested()],
                                     State.FAILED),
    "rolled-back": ([Resolved(PLAN), Downloaded(), SnapshotTaken(SNAPSHOT), Applied(),
                     Failed(errors.CheckFailed("dpkg --audit: libfoo half-configured")),
                     RolledBack()], State.ROLLED_BACK),
    "rollback-failed": ([Resolved(PLAN), Downloaded(), SnapshotTaken(SNAPSHOT),
                         Failed(errors.ScriptFailed("libfoo postinst exited 1")),
                         Failed(errors.SnapshotFailed("restore: no space"))],
                        State.ROLLBACK_FAILED),
}


class StepClock:
    """A deterministic clock: each reading is one second after the last."""

    def __init__(self, start=1000.0):
        self.now = start

    def __call__(self):
        self.now += 1.0
        return self.now


def new_tx(tx_id, operation=Operation.UPGRADE):
    return Transaction(tx_id, Request(operation, ("libfoo",)))


def pending_for(journal, tx_id):
    return [item for item in journal.outbox_pending() if item.tx_id == tx_id]


def drive(journal, tx, outcomes, check_each=True):
    """Run ``tx`` through the engine, recording every Record effect in ``journal``.

    With ``check_each``, after every record the stored state equals the
    recorded one and the outbox holds a report iff the state is terminal.
    """
    engine = Engine(tx)
    records = []

    def run(effects):
        for effect in effects:
            if not isinstance(effect, Record):
                continue
            journal.record(effect.tx, effect.intent, effect.report)
            records.append(effect)
            if check_each:
                assert journal.get(tx.id) == effect.tx
                reports = pending_for(journal, tx.id)
                if effect.tx.state in TERMINAL:
                    assert [item.payload for item in reports] == [effect.report.to_dict()]
                else:
                    assert reports == []

    run(engine.start())
    for outcome in outcomes:
        run(engine.feed(outcome))
    return engine, records


@pytest.fixture
def journal(tmp_path):
    with SqliteJournal(str(tmp_path / "state" / "journal.db"), clock=StepClock()) as journal:
        yield journal


@pytest.mark.parametrize("name", sorted(PATHS))
def test_engine_paths_round_trip(journal, name):
    outcomes, final = PATHS[name]
    engine, records = drive(journal, new_tx(name), outcomes)
    assert engine.tx.state is final

    assert journal.get(name) == engine.tx
    assert journal.unfinished() == []
    events = journal.events(name)
    assert [(e.state, e.intent) for e in events] == [(r.tx.state, r.intent) for r in records]
    assert [e.error_code for e in events] == [
        r.tx.error.code if r.tx.error else None for r in records]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    (entry,) = journal.history()
    assert entry.transaction == engine.tx
    assert entry.created_at < entry.updated_at == entry.finished_at
    (item,) = journal.outbox_pending()
    assert (item.tx_id, item.kind, item.attempts) == (name, REPORT_KIND, 0)
    assert item.payload == records[-1].report.to_dict()
    assert item.payload["state"] == final.value
    assert item.created_at == entry.finished_at   # committed in the same record


def test_every_state_round_trips(journal):
    seen = set()
    journal.record(new_tx("queued"), "queue")
    assert journal.get("queued") == new_tx("queued")
    seen.add(State.QUEUED)
    for name, (outcomes, _) in PATHS.items():
        _, records = drive(journal, new_tx(name), outcomes)
        seen.update(record.tx.state for record in records)
    assert seen == set(State)


def test_unfinished_is_oldest_first_and_history_newest_first(journal):
    drive(journal, new_tx("a"), [Resolved(PLAN)])
    drive(journal, new_tx("b"), [Resolved(Plan())])                 # finished
    drive(journal, new_tx("c", Operation.INSTALL), [Resolved(PLAN), Downloaded()])
    journal.record(journal.get("a"), "touch a again")               # order is by creation

    assert [tx.id for tx in journal.unfinished()] == ["a", "c"]
    assert journal.unfinished()[1].state is State.SNAPSHOTTING
    assert [e.transaction.id for e in journal.history()] == ["c", "b", "a"]
    assert [e.transaction.id for e in journal.history(limit=1, offset=1)] == ["b"]
    assert journal.history(limit=0) == []
    assert journal.get("missing") is None
    assert journal.events("missing") == []
    with pytest.raises(ValueError):
        journal.history(limit=-1)


def test_recovery_after_restart_resumes_from_the_journal(tmp_path):
    path = str(tmp_path / "journal.db")
    with SqliteJournal(path, clock=StepClock()) as first:
        engine, _ = drive(first, new_tx("t1"),
                          [Resolved(PLAN), Downloaded(), SnapshotTaken(SNAPSHOT)])
        assert engine.tx.state is State.APPLYING

    with SqliteJournal(path, clock=StepClock(2000.0)) as second:
        (found,) = second.unfinished()
        assert found == engine.tx
        restarted = Engine(found)
        for effect in restarted.recover() + restarted.feed(RolledBack()):
            if isinstance(effect, Record):
                second.record(effect.tx, effect.intent, effect.report)
        assert second.unfinished() == []
        events = second.events("t1")
        assert (events[-2].state, events[-2].intent, events[-2].error_code) == (
            State.ROLLING_BACK, "rollback", "interrupted")
        assert events[-1].state is State.ROLLED_BACK
        assert second.outbox_pending()[0].payload["error"]["code"] == "interrupted"


def test_report_and_final_state_commit_together_or_not_at_all(tmp_path):
    path = str(tmp_path / "journal.db")
    journal = SqliteJournal(path, clock=StepClock())
    engine, _ = drive(journal, new_tx("t1"),
                      [Resolved(PLAN), Downloaded(), SnapshotTaken(SNAPSHOT), Applied()])
    before = journal.get("t1")
    events_before = journal.events("t1")
    # Make the outbox insert fail inside SQLite, after the transaction row
    # and the event row of the same record were written.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TRIGGER outbox_refuses BEFORE INSERT ON outbox "
                 "BEGIN SELECT RAISE(ABORT, 'outbox refuses'); END")
    conn.close()

    (final,) = [e for e in engine.feed(Checked()) if isinstance(e, Record)]
    with pytest.raises(errors.JournalUnavailable, match="outbox refuses"):
        journal.record(final.tx, final.intent, final.report)

    assert journal.get("t1") == before
    assert journal.get("t1").state is State.CHECKING
    assert journal.events("t1") == events_before
    assert journal.outbox_pending() == []
    assert [tx.id for tx in journal.unfinished()] == ["t1"]
    journal.close()


def test_report_only_with_the_terminal_record(journal):
    tx = new_tx("t1")
    with pytest.raises(ValueError):
        journal.record(tx, "resolve", Report(tx, changed=False))
    done = Transaction("t1", tx.request, State.DONE)
    with pytest.raises(ValueError):
        journal.record(done, "finish", Report(new_tx("other"), changed=False))
    assert journal.get("t1") is None


def test_outbox_delivery_bookkeeping(journal):
    for name in ("a", "b", "c"):
        drive(journal, new_tx(name), [Resolved(Plan())])
    first, second, third = journal.outbox_pending()
    assert [first.tx_id, second.tx_id, third.tx_id] == ["a", "b", "c"]
    assert [item.tx_id for item in journal.outbox_pending(limit=2)] == ["a", "b"]

    assert journal.outbox_mark_attempt(first.seq)
    assert journal.outbox_mark_attempt(first.seq)
    assert journal.outbox_mark_delivered(second.seq)
    assert not journal.outbox_mark_delivered(second.seq)     # idempotent ack
    assert not journal.outbox_mark_attempt(second.seq)
    assert not journal.outbox_mark_delivered(10 ** 6)

    pending = journal.outbox_pending()
    assert [(item.tx_id, item.attempts) for item in pending] == [("a", 2), ("c", 0)]


def test_durability_pragmas_are_in_effect(journal):
    assert journal.pragmas() == {"journal_mode": "wal", "synchronous": 2,   # 2 = FULL
                                 "foreign_keys": 1, "busy_timeout": 10000}
    journal.record(new_tx("t1"), "resolve")
    assert os.path.exists(journal.path + "-wal")
    # journal_mode is a property of the file, seen by any other connection.
    other = sqlite3.connect(journal.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


def test_parent_directory_is_created_private(tmp_path):
    path = tmp_path / "var" / "lib" / "patchd" / "journal.db"
    SqliteJournal(str(path)).close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.is_file()


CHILD = """
import sys

import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

from patchd.core.engine import Engine, Record, Resolved
from patchd.core.model import Operation, Plan, Request, Transaction
from patchd.store.journal import SqliteJournal

def drive(journal, tx_id, plan):
    engine = Engine(Transaction(tx_id, Request(Operation.UPGRADE)))
    for effect in engine.start() + engine.feed(Resolved(plan)):
        if isinstance(effect, Record):
            journal.record(effect.tx, effect.intent, effect.report)

journal = SqliteJournal(sys.argv[1])
drive(journal, "first", Plan())
print("recorded", flush=True)
n = 0
while True:   # keep writing, so the kill lands while records are in flight
    n += 1
    drive(journal, "loop-{}".format(n), Plan())
"""


def test_records_survive_sigkill(tmp_path):
    path = str(tmp_path / "journal.db")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], cwd=str(REPO), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
    try:
        line = child.stdout.readline()
        assert line == "recorded\n", child.stderr.read()
        time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()

    with SqliteJournal(path) as journal:
        assert journal.get("first").state is State.DONE
        assert pending_for(journal, "first")[0].payload["id"] == "first"
        # Whatever the kill interrupted is absent or whole: a report exists
        # iff the final state does, and every row's last event is its state.
        outbox = {item.tx_id for item in journal.outbox_pending(limit=10 ** 6)}
        for entry in journal.history(limit=10 ** 6):
            tx = entry.transaction
            assert (tx.id in outbox) == (tx.state in TERMINAL)
            assert journal.events(tx.id)[-1].state is tx.state
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def _file_state(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_random_bytes_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "journal.db"
    path.write_bytes(bytes(random.Random(7).getrandbits(8) for _ in range(8192)))
    before = _file_state(tmp_path)

    with pytest.raises(errors.JournalUnavailable) as info:
        SqliteJournal(str(path))
    assert str(path) in str(info.value)
    assert info.value.code == "journal-unavailable"
    assert _file_state(tmp_path) == before      # no rewrite, no -wal/-shm left


def test_damaged_pages_are_reported_not_repaired(tmp_path):
    path = tmp_path / "journal.db"
    with SqliteJournal(str(path)) as journal:
        journal.record(new_tx("t1"), "resolve")
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size:] = b"\xa5" * (len(data) - page_size)     # every page after the first
    path.write_bytes(bytes(data))

    # Page 1 (the schema) is intact, so the damage shows when rows are read.
    with pytest.raises(errors.JournalUnavailable) as info, \
            SqliteJournal(str(path)) as journal:
        journal.get("t1")
    assert str(path) in str(info.value)
    assert path.read_bytes() == bytes(data)


def test_a_directory_in_place_of_the_file_is_refused(tmp_path):
    (tmp_path / "journal.db").mkdir()
    with pytest.raises(errors.JournalUnavailable, match=r"journal\.db"):
        SqliteJournal(str(tmp_path / "journal.db"))


def test_undecodable_rows_name_the_row(tmp_path):
    path = str(tmp_path / "journal.db")
    journal = SqliteJournal(path)
    drive(journal, new_tx("tx-bad"), [])                      # unfinished
    drive(journal, new_tx("tx-shape"), [])
    drive(journal, new_tx("tx-done"), [Resolved(Plan())])     # has a report
    (item,) = journal.outbox_pending()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE transactions SET data = '{not json' WHERE id = 'tx-bad'")
    conn.execute("UPDATE transactions SET data = ? WHERE id = 'tx-shape'",
                 (json.dumps({"id": "tx-shape", "state": "exploded"}),))
    conn.execute("UPDATE outbox SET payload = '[1, 2]' WHERE seq = ?", (item.seq,))
    conn.close()

    for read in (lambda: journal.get("tx-bad"), journal.unfinished, journal.history):
        with pytest.raises(errors.JournalUnavailable, match="'tx-(bad|shape)'") as info:
            read()
        assert path in str(info.value)
    with pytest.raises(errors.JournalUnavailable, match="'tx-shape'.*missing key 'request'"):
        journal.get("tx-shape")
    with pytest.raises(errors.JournalUnavailable, match="row {} of table outbox"
                       .format(item.seq)):
        journal.outbox_pending()
    journal.close()


def test_closed_journal_refuses_calls(tmp_path):
    journal = SqliteJournal(str(tmp_path / "journal.db"))
    journal.close()
    journal.close()
    with pytest.raises(errors.JournalUnavailable, match="closed"):
        journal.get("t1")
