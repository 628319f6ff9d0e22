"""Logging set-up: ``key=value`` lines on stderr, for journald.

Rules:
- Every line, from structlog or from a stdlib logger (adapters may use
  either), is rendered by the same key=value renderer.
- Every line logged while a transaction runs carries ``tx=<id>``: the runner
  enters ``transaction_context`` and a processor adds the id, so adapters
  need not pass it around.
- The stream is a duplicate of the original stderr taken at set-up, so log
  lines stay on the daemon's stderr while the runner points fd 2 at a
  transaction's dpkg log.
- Built on stdlib logging and ``ProcessorFormatter``, which the structlog of
  the fleet's oldest distributions (18.1 in Debian 10) already has.
"""

import contextlib
import logging
import os
import sys
import threading
from typing import Iterator

import structlog

_current = threading.local()


@contextlib.contextmanager
def transaction_context(tx_id: str) -> Iterator[None]:
    """Bind ``tx_id`` to every log line of this thread until the block ends."""
    previous = getattr(_current, "tx", None)
    _current.tx = tx_id
    try:
        yield
    finally:
        _current.tx = previous


def _add_transaction(logger, method_name, event_dict):
    tx_id = getattr(_current, "tx", None)
    if tx_id is not None:
        event_dict.setdefault("tx", tx_id)
    return event_dict


def configure(verbose: bool = False, stream=None) -> None:
    if stream is None:
        sys.stderr.flush()
        stream = os.fdopen(os.dup(2), "w", buffering=1)
    shared = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_transaction,
    ]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.processors.KeyValueRenderer(
            key_order=["level", "event", "tx"], drop_missing=True),
        foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # dnf narrates every step at INFO ("Running transaction check"); its
    # warnings and errors (scriptlet failures) still come through.
    logging.getLogger("dnf").setLevel(logging.DEBUG if verbose else logging.WARNING)
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level] + shared + [
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
