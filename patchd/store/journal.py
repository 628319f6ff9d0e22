"""``SqliteJournal``: the transaction journal, history and outbox in one SQLite file.

Rules:
- Journal first (ARCHITECTURE.md §1): ``record`` returns only after its
  SQLite transaction is committed and fsynced (WAL + ``synchronous=FULL``),
  so the runner may start the side effect the record announces.
- One ``record`` is one SQLite transaction (``BEGIN IMMEDIATE`` … ``COMMIT``):
  the transaction row, its event and, for a finished transaction, its report
  in the outbox commit together or not at all. A report can't be lost (it
  commits with the final state) or invented (it commits only with it).
- The connection runs in autocommit mode (``isolation_level=None``); every
  transaction boundary is explicit here, never implied by Python's module.
- A journal that cannot be opened or read raises ``JournalUnavailable``
  naming the file (or the row); the file is never deleted, recreated or
  rewritten to "repair" it: it is evidence of what happened to the system.
- Calls are serialised by a lock, so the daemon may call from worker threads.
"""

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

import structlog

from patchd.core import errors
from patchd.core.errors import JournalUnavailable
from patchd.core.model import Report, State, Transaction
from patchd.core.ports import Journal
from patchd.core.states import TERMINAL
from patchd.store import migrations

__all__ = ["SqliteJournal", "HistoryEntry", "JournalEvent", "OutboxItem",
           "REPORT_KIND"]

log = structlog.get_logger(__name__)

REPORT_KIND = "transaction-report"
DEFAULT_BUSY_TIMEOUT_S = 10.0

_WRITE_HINT = ("patchd could not write its journal, so it did not go on with "
               "the change. Check free space and permissions of the journal's "
               "directory, then retry.")


@dataclass(frozen=True)
class HistoryEntry:
    """A transaction's last recorded state with its timestamps (Unix seconds)."""

    transaction: Transaction
    created_at: float
    updated_at: float
    finished_at: Optional[float]


@dataclass(frozen=True)
class JournalEvent:
    """One ``record`` call: the state reached and the intent announced."""

    seq: int
    at: float
    state: State
    intent: str
    error_code: Optional[str]


@dataclass(frozen=True)
class OutboxItem:
    """A message waiting for (or past) delivery to the central platform."""

    seq: int
    tx_id: Optional[str]
    kind: str
    payload: Dict[str, Any] = field(hash=False)
    created_at: float
    attempts: int


class SqliteJournal(Journal):
    """The ``Journal`` port on one SQLite database file."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT_S):
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = None   # type: Optional[sqlite3.Connection]
        new_entries = self._prepare_directory()
        # isolation_level=None: the module must not BEGIN or COMMIT behind our
        # back. check_same_thread=False: self._lock serialises instead.
        try:
            conn = sqlite3.connect(self.path, timeout=busy_timeout,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalUnavailable(
                "journal {} cannot be opened: {}".format(self.path, exc)) from exc
        try:
            # Read-only checks first: a corrupt, foreign or too-new file must
            # be refused before any PRAGMA below writes to it.
            migrations.check(conn, self.path)
            self._configure(conn)
            migrations.migrate(conn, self.path)
            # SQLite fsyncs file contents, not the directory entry of a new
            # file (or of a new directory); without this a power cut after
            # the first record could lose the whole journal.
            for directory in new_entries:
                _fsync_directory(directory)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # -- the Journal port --

    def record(self, tx: Transaction, intent: str, report: Optional[Report] = None) -> None:
        """Store ``tx`` and ``intent`` durably; ``report`` goes to the outbox atomically."""
        terminal = tx.state in TERMINAL
        if report is not None and (not terminal or report.transaction.id != tx.id):
            # The engine only reports finished transactions; anything else is
            # a runner bug that would put an invented report in the outbox.
            raise ValueError("a report belongs with the terminal record of its own "
                             "transaction (tx {} in state {})".format(tx.id, tx.state.value))
        # Serialise before BEGIN so a bad value cannot hold the write lock.
        data = _dumps(tx.to_dict())
        payload = _dumps(report.to_dict()) if report is not None else None
        error_code = tx.error.code if tx.error is not None else None
        with self._write("record transaction {}".format(tx.id)) as conn:
            now = self._clock()
            finished = now if terminal else None
            # UPDATE, then INSERT if there was no row: plain SQL instead of
            # UPSERT (SQLite 3.24+); race-free because BEGIN IMMEDIATE holds
            # the write lock. A repeated terminal record keeps finished_at.
            cursor = conn.execute(
                "UPDATE transactions SET operation = ?, state = ?, data = ?, "
                "updated_at = ?, finished_at = CASE WHEN ? THEN "
                "coalesce(finished_at, ?) ELSE NULL END WHERE id = ?",
                (tx.request.operation.value, tx.state.value, data, now,
                 terminal, finished, tx.id))
            if cursor.rowcount == 0:
                conn.execute(
                    "INSERT INTO transactions (id, operation, state, data, "
                    "created_at, updated_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (tx.id, tx.request.operation.value, tx.state.value, data,
                     now, now, finished))
            conn.execute(
                "INSERT INTO events (tx_id, at, state, intent, error_code) "
                "VALUES (?, ?, ?, ?, ?)",
                (tx.id, now, tx.state.value, intent, error_code))
            if payload is not None:
                conn.execute(
                    "INSERT INTO outbox (tx_id, kind, payload, created_at) "
                    "VALUES (?, ?, ?, ?)", (tx.id, REPORT_KIND, payload, now))
        log.bind(tx=tx.id).debug("journal record", state=tx.state.value,
                                 intent=intent, error_code=error_code,
                                 report=payload is not None)

    def unfinished(self) -> List[Transaction]:
        """Transactions whose last record is not terminal, oldest first."""
        with self._read("list unfinished transactions") as conn:
            rows = conn.execute(
                "SELECT id, data FROM transactions WHERE finished_at IS NULL "
                "ORDER BY created_at, rowid").fetchall()
        return [self._decode_tx(row_id, data) for row_id, data in rows]

    def get(self, tx_id: str) -> Optional[Transaction]:
        """One transaction's last recorded state, or None if never recorded."""
        with self._read("read transaction {}".format(tx_id)) as conn:
            row = conn.execute("SELECT id, data FROM transactions WHERE id = ?",
                               (tx_id,)).fetchone()
        return self._decode_tx(row[0], row[1]) if row is not None else None

    # -- history and events --

    def history(self, limit: int = 50, offset: int = 0) -> List[HistoryEntry]:
        """Recorded transactions, newest first."""
        _check_window(limit, offset)
        with self._read("read history") as conn:
            rows = conn.execute(
                "SELECT id, data, created_at, updated_at, finished_at FROM transactions "
                "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                (limit, offset)).fetchall()
        return [HistoryEntry(self._decode_tx(row_id, data), created, updated, finished)
                for row_id, data, created, updated, finished in rows]

    def events(self, tx_id: str) -> List[JournalEvent]:
        """Every record made for ``tx_id``, in the order they were made."""
        with self._read("read events of transaction {}".format(tx_id)) as conn:
            rows = conn.execute(
                "SELECT seq, at, state, intent, error_code FROM events "
                "WHERE tx_id = ? ORDER BY seq", (tx_id,)).fetchall()
        return [JournalEvent(seq, at, self._decode_state("events", seq, state),
                             intent, error_code)
                for seq, at, state, intent, error_code in rows]

    # -- outbox --

    def outbox_pending(self, limit: int = 100) -> List[OutboxItem]:
        """Undelivered outbox messages, oldest first."""
        _check_window(limit, 0)
        with self._read("read the outbox") as conn:
            rows = conn.execute(
                "SELECT seq, tx_id, kind, payload, created_at, attempts FROM outbox "
                "WHERE delivered_at IS NULL ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [OutboxItem(seq, tx_id, kind, self._decode_payload(seq, payload),
                           created, attempts)
                for seq, tx_id, kind, payload, created, attempts in rows]

    def outbox_mark_delivered(self, seq: int) -> bool:
        """Mark message ``seq`` delivered; False if it was not pending (idempotent)."""
        with self._write("mark outbox message {} delivered".format(seq)) as conn:
            cursor = conn.execute(
                "UPDATE outbox SET delivered_at = ? WHERE seq = ? AND delivered_at IS NULL",
                (self._clock(), seq))
        return cursor.rowcount == 1

    def outbox_mark_attempt(self, seq: int) -> bool:
        """Count a failed delivery attempt of ``seq``; False if it was not pending."""
        with self._write("count a delivery attempt of outbox message {}".format(seq)) as conn:
            cursor = conn.execute(
                "UPDATE outbox SET attempts = attempts + 1 "
                "WHERE seq = ? AND delivered_at IS NULL", (seq,))
        return cursor.rowcount == 1

    # -- diagnostics and lifetime --

    def pragmas(self) -> Dict[str, Any]:
        """The settings durability depends on, as this connection has them."""
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        with self._read("read settings") as conn:
            return {name: conn.execute("PRAGMA " + name).fetchone()[0] for name in names}

    def close(self) -> None:
        """Close the database; closing twice is allowed."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "SqliteJournal":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- helpers --

    def _prepare_directory(self) -> List[str]:
        """Create the journal's directory (0700) if missing.

        Returns the directories whose entries are new (the file's directory if
        the file is new, its parent too if the directory is new): they need an
        fsync once the database exists.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        new_entries = []   # type: List[str]
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                os.chmod(directory, 0o700)   # makedirs' mode is filtered by the umask
            except OSError as exc:
                raise JournalUnavailable("cannot create the journal directory {}: {}"
                                         .format(directory, exc)) from exc
            new_entries.append(os.path.dirname(directory))
        if not os.path.exists(self.path):
            new_entries.append(directory)
        return new_entries

    def _configure(self, conn: sqlite3.Connection) -> None:
        # WAL: readers (patchctl history) never block the writer, and a commit
        # is one append + fsync. journal_mode is stored in the file; the
        # others are per connection.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalUnavailable(
                "journal {} cannot use write-ahead logging (journal_mode is {})"
                .format(self.path, mode),
                hint="Keep the journal on a local filesystem (not NFS or tmpfs "
                     "without shared memory).")
        # FULL: in WAL mode NORMAL may lose the last commits on power loss,
        # and journal-first needs every commit to survive (sqlite.org/pragma.html).
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._open_conn(what)
            try:
                yield conn
            except sqlite3.Error as exc:
                raise JournalUnavailable("journal {}: cannot {}: {}"
                                         .format(self.path, what, exc)) from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back otherwise."""
        with self._lock:
            conn = self._open_conn(what)
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                # SQLite rolls some errors back by itself (e.g. SQLITE_FULL).
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise JournalUnavailable(
                        "journal {}: cannot {}: {}".format(self.path, what, exc),
                        hint=_WRITE_HINT) from exc
                raise

    def _open_conn(self, what: str) -> sqlite3.Connection:
        if self._conn is None:
            # Using a closed journal is a bug in the caller, hence the default hint.
            raise JournalUnavailable(
                "journal {} is closed; cannot {}".format(self.path, what),
                hint=errors.InternalError.default_hint)
        return self._conn

    def _decode_tx(self, row_id: str, data: str) -> Transaction:
        try:
            tx = Transaction.from_dict(json.loads(data))
        except KeyError as exc:
            raise self._damaged("transactions", row_id, "missing key {}".format(exc)) from exc
        except (ValueError, TypeError, AttributeError) as exc:
            raise self._damaged("transactions", row_id, exc) from exc
        if tx.id != row_id:
            raise self._damaged("transactions", row_id, "its data names transaction {!r}"
                                .format(tx.id))
        return tx

    def _decode_state(self, table: str, row_id: Any, value: str) -> State:
        try:
            return State(value)
        except ValueError as exc:
            raise self._damaged(table, row_id, exc) from exc

    def _decode_payload(self, seq: int, payload: str) -> Dict[str, Any]:
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise self._damaged("outbox", seq, exc) from exc
        if not isinstance(value, dict):
            raise self._damaged("outbox", seq, "payload is not a JSON object")
        return value

    def _damaged(self, table: str, row_id: Any, why: Any) -> JournalUnavailable:
        return JournalUnavailable(
            "journal {}: row {!r} of table {} cannot be decoded: {}"
            .format(self.path, row_id, table, why))


def _dumps(value: Dict[str, Any]) -> str:
    # ensure_ascii=False keeps Chinese package descriptions and messages
    # readable with the sqlite3 shell; SQLite stores TEXT as UTF-8.
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _check_window(limit: int, offset: int) -> None:
    # SQLite reads LIMIT -1 as "no limit"; refuse it rather than return everything.
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must be >= 0, got {} and {}".format(limit, offset))


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
