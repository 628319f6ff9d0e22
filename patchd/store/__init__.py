"""The store adapter: patchd's SQLite journal, outbox, history and migrations.

``journal.SqliteJournal`` implements ``patchd.core.ports.Journal``: every state
change of a transaction is one durable SQLite transaction (WAL, fsync), and a
finished transaction's report is committed to the outbox in the same SQLite
transaction as its final state (ARCHITECTURE.md §1, outbox pattern).
``migrations`` owns the schema and its versions.

Rules:
- This package imports only ``patchd.core``, the standard library and
  structlog (ARCHITECTURE.md §2); only ``patchd.daemon`` names it.
- Only the standard ``sqlite3`` module, as Python 3.7 has it, and SQL that
  SQLite 3.8 understands (no UPSERT, RETURNING or JSON functions), so every
  vendor's SQLite build runs it.
- A journal that cannot be read is reported (``JournalUnavailable``) and left
  in place for inspection: the store never deletes, recreates or "repairs" it.
"""
