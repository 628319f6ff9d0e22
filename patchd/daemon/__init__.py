"""The composition root: wires adapters to the engine and runs transactions.

Only this package names concrete adapters (AptBackend, BtrfsSnapshotter,
SqliteJournal). The D-Bus service lands here too.
"""
