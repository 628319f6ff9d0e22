"""structlog set-up: ``key=value`` lines on stderr, for journald.

Built on stdlib logging so it works with the structlog the fleet's
distributions ship (Debian 10 has 18.1). The stream is a duplicate of the
original stderr taken at set-up, so log lines stay on the daemon's stderr
while the runner points fd 2 at a transaction's dpkg log.
"""

import logging
import os
import sys

import structlog


def configure(verbose: bool = False, stream=None) -> None:
    if stream is None:
        sys.stderr.flush()
        stream = os.fdopen(os.dup(2), "w", buffering=1)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(
                key_order=["level", "event", "tx"], drop_missing=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
