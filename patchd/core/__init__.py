"""Sans-IO core: the transaction model, its state table, the engine and errors.

Rule: nothing in here performs I/O, reads a clock or logs. It imports only the
standard library and other ``patchd.core`` modules.
"""
