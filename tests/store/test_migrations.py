"""Schema migrations: versions in user_version, one transaction each, refusals.

Databases here are real SQLite files in tmp_path; a refused file must keep
its exact bytes, because the journal is evidence and is never rewritten.
"""

import sqlite3

import pytest

from patchd.core.errors import JournalUnavailable
from patchd.store import migrations
from patchd.store.journal import SqliteJournal

SPEC_COLUMNS = {
    "transactions": ["id", "operation", "state", "data", "created_at",
                     "updated_at", "finished_at"],
    "events": ["seq", "tx_id", "at", "state", "intent", "error_code"],
    "outbox": ["seq", "tx_id", "kind", "payload", "created_at", "delivered_at",
               "attempts"],
}


def raw(path):
    return sqlite3.connect(str(path), isolation_level=None)


def test_versions_run_from_one_without_gaps():
    versions = [version for version, _ in migrations.MIGRATIONS]
    assert versions == list(range(1, migrations.LATEST + 1))


def test_empty_file_is_migrated_to_latest(tmp_path):
    path = tmp_path / "journal.db"
    path.write_bytes(b"")
    SqliteJournal(str(path)).close()

    conn = raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST
    assert conn.execute("PRAGMA application_id").fetchone()[0] == migrations.APPLICATION_ID
    for table, columns in SPEC_COLUMNS.items():
        found = [row[1] for row in conn.execute("PRAGMA table_info({})".format(table))]
        assert found == columns
    indexes = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert {"transactions_unfinished", "outbox_pending"} <= indexes
    conn.close()


def test_reopening_keeps_version_and_data(tmp_path):
    path = str(tmp_path / "journal.db")
    SqliteJournal(path).close()
    conn = raw(path)
    conn.execute("INSERT INTO outbox (kind, payload, created_at) VALUES ('x', '{}', 1)")
    conn.close()

    with SqliteJournal(path) as journal:
        assert [item.kind for item in journal.outbox_pending()] == ["x"]
    conn = raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST
    conn.close()


def test_too_new_schema_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "journal.db"
    SqliteJournal(str(path)).close()
    conn = raw(path)
    conn.execute("PRAGMA user_version = {}".format(migrations.LATEST + 1))
    conn.close()
    before = path.read_bytes()

    with pytest.raises(JournalUnavailable) as info:
        SqliteJournal(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "schema version {}".format(migrations.LATEST + 1) in message
    assert "up to {}".format(migrations.LATEST) in message
    assert path.read_bytes() == before


def test_other_programs_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "someone-else.db"
    conn = raw(path)
    conn.execute("CREATE TABLE settings (key TEXT, value TEXT)")
    conn.close()
    before = path.read_bytes()

    with pytest.raises(JournalUnavailable, match="not a patchd journal"):
        SqliteJournal(str(path))
    assert path.read_bytes() == before


def test_a_new_migration_is_applied_once(tmp_path):
    path = str(tmp_path / "journal.db")
    SqliteJournal(path).close()
    newer = migrations.MIGRATIONS + ((2, "ALTER TABLE outbox ADD COLUMN note TEXT;"),)
    conn = raw(path)

    assert migrations.migrate(conn, path, newer) == 2
    assert migrations.migrate(conn, path, newer) == 2
    assert migrations.user_version(conn) == 2
    assert "note" in [row[1] for row in conn.execute("PRAGMA table_info(outbox)")]
    # ... and the released code now refuses the file.
    with pytest.raises(JournalUnavailable):
        migrations.check(conn, path)
    conn.close()


def test_failed_migration_leaves_previous_version_whole(tmp_path):
    path = str(tmp_path / "journal.db")
    SqliteJournal(path).close()
    broken = migrations.MIGRATIONS + (
        (2, "CREATE TABLE extra (a INTEGER); INSERT INTO missing VALUES (1);"),)
    conn = raw(path)

    with pytest.raises(JournalUnavailable, match="schema version 2"):
        migrations.migrate(conn, path, broken)
    assert not conn.in_transaction
    assert migrations.user_version(conn) == 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'"
                        ).fetchone()[0] == 0
    conn.close()


def test_migrate_needs_autocommit_connection(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "journal.db"))   # module's implicit BEGIN
    with pytest.raises(ValueError):
        migrations.migrate(conn, "journal.db")
    conn.close()


def test_versions_must_be_contiguous(tmp_path):
    conn = raw(tmp_path / "journal.db")
    with pytest.raises(ValueError):
        migrations.migrate(conn, "journal.db", ((1, "SELECT 1;"), (3, "SELECT 1;")))
    conn.close()


def test_split_statements_respects_strings_comments_and_triggers():
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (a TEXT DEFAULT 'x;y');
    CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
        UPDATE t SET a = 'z;' WHERE rowid = new.rowid;
        SELECT 1;
    END;
    """
    statements = migrations.split_statements(script)
    assert len(statements) == 2
    assert statements[0].endswith("DEFAULT 'x;y');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


def test_split_statements_rejects_an_unterminated_tail():
    with pytest.raises(ValueError):
        migrations.split_statements("CREATE TABLE t (a); SELECT 1")
