"""The journal's schema, as numbered migrations, and the code that applies them.

Rules:
- ``MIGRATIONS`` is append-only: ``(version, script)`` pairs numbered 1, 2, 3…
  A released script is never edited; a schema change is a new entry.
- The version lives in ``PRAGMA user_version``. Each migration runs in its own
  ``BEGIN IMMEDIATE`` transaction together with its ``user_version`` bump, so a
  crash leaves the database at the old version or the new one, never between.
- A database whose version is newer than ``LATEST`` was written by a newer
  patchd: it is refused (``JournalUnavailable``) and not modified, because
  this code cannot know what the newer schema means.
- ``PRAGMA application_id`` marks the file as a patchd journal, so a path that
  points at some other SQLite database is refused instead of "migrated".
- SQL stays within SQLite 3.8 (partial indexes) and uses no UPSERT, RETURNING
  or JSON functions: vendors' SQLite builds differ (package __init__).
"""

import sqlite3
from typing import List, Sequence, Tuple

import structlog

from patchd.core.errors import JournalUnavailable

__all__ = ["APPLICATION_ID", "MIGRATIONS", "LATEST", "check", "migrate",
           "split_statements", "user_version"]

log = structlog.get_logger(__name__)

# "ptch" in ASCII; stored at offset 68 of the file header (sqlite.org/fileformat2.html).
APPLICATION_ID = 0x70746368

Migrations = Sequence[Tuple[int, str]]

MIGRATIONS = (
    (1, """
PRAGMA application_id = 1886675816;

-- One row per transaction: its last recorded state. ``data`` is
-- Transaction.to_dict() as JSON; the other columns exist to be queried.
CREATE TABLE transactions (
    id          TEXT PRIMARY KEY,
    operation   TEXT NOT NULL,
    state       TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    finished_at REAL            -- set when state is terminal, else NULL
);
-- Restart looks up unfinished transactions; the index holds only those.
CREATE INDEX transactions_unfinished
    ON transactions (created_at) WHERE finished_at IS NULL;
CREATE INDEX transactions_created ON transactions (created_at);

-- The journal of intents: one row per record(), append-only.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id      TEXT NOT NULL REFERENCES transactions (id),
    at         REAL NOT NULL,
    state      TEXT NOT NULL,
    intent     TEXT NOT NULL,
    error_code TEXT
);
CREATE INDEX events_tx ON events (tx_id, seq);

-- Messages for the central platform (outbox pattern). AUTOINCREMENT keeps
-- seq increasing even after rows are deleted, so it can serve as the
-- report sequence number the platform deduplicates on.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id        TEXT,          -- NULL for messages about no transaction
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL, -- JSON object
    created_at   REAL NOT NULL,
    delivered_at REAL,
    attempts     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL;
"""),
)

LATEST = MIGRATIONS[-1][0]


def split_statements(script: str) -> List[str]:
    """Split an SQL script into statements, each ending with ``;``.

    ``Connection.executescript`` would be simpler, but it COMMITs any open
    transaction before running (Python's sqlite3 docs), so a script and its
    ``user_version`` bump could not share one transaction. SQLite's own
    ``complete_statement`` decides where a statement ends, so semicolons in
    strings, comments and trigger bodies are handled.
    """
    statements = []   # type: List[str]
    pending = ""
    pieces = script.split(";")
    for piece in pieces[:-1]:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    pending += pieces[-1]
    if pending.strip():
        raise ValueError("SQL script does not end with a complete statement: {!r}"
                         .format(pending.strip()[:80]))
    return statements


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check(conn: sqlite3.Connection, path: str, migrations: Migrations = MIGRATIONS) -> int:
    """Return the database's schema version, or raise if this code must not touch it.

    Only reads. Raises ``JournalUnavailable`` for a file that is not an SQLite
    database, belongs to another program, or has a schema newer than
    ``migrations`` knows.
    """
    latest = _validate(migrations)
    try:
        version = user_version(conn)
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        has_tables = conn.execute(
            "SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    except sqlite3.Error as exc:
        raise JournalUnavailable(
            "journal {} cannot be read: {}".format(path, exc)) from exc
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and (version or has_tables)):
        raise JournalUnavailable(
            "{} is an SQLite database but not a patchd journal "
            "(application_id {:#x}, user_version {})".format(path, app_id, version),
            hint="Check the journal path in patchd's configuration; the file "
                 "was not modified.")
    if version > latest:
        raise JournalUnavailable(
            "journal {} has schema version {}, but this patchd knows versions "
            "up to {} only".format(path, version, latest),
            hint="A newer patchd wrote this journal and it was not modified. "
                 "Reinstall that patchd, or move the journal aside to start "
                 "an empty one.")
    return version


def migrate(conn: sqlite3.Connection, path: str, migrations: Migrations = MIGRATIONS) -> int:
    """Bring the database up to the newest version; return that version.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so that the
    BEGIN/COMMIT here are the only transaction boundaries.
    """
    if conn.isolation_level is not None:
        raise ValueError("migrate() needs a connection with isolation_level=None")
    latest = _validate(migrations)
    if check(conn, path, migrations) == latest:
        return latest
    for version, script in migrations:
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Checked again under the write lock: another process (a second
            # patchd, a patchctl run as root) may have migrated meanwhile.
            current = check(conn, path, migrations)
            if current >= version:
                conn.execute("ROLLBACK")
                continue
            for statement in split_statements(script):
                conn.execute(statement)
            # PRAGMA takes no bound parameters; version is an int from code.
            conn.execute("PRAGMA user_version = {:d}".format(version))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise JournalUnavailable(
                    "journal {}: migration to schema version {} failed: {}"
                    .format(path, version, exc)) from exc
            raise
        log.info("journal schema migrated", path=path, version=version)
    return latest


def _validate(migrations: Migrations) -> int:
    """Versions must run 1, 2, 3… so that "newer than known" is well defined."""
    versions = [version for version, _ in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError("migrations must be numbered 1..N in order, got {}".format(versions))
    return len(versions)
