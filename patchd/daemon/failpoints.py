"""Fault injection for crash tests: kill this process at a named point.

Inert unless ``PATCHD_FAILPOINT`` is set. Its value names one point:

- ``after-record:<state>``: right after the journal row for ``<state>`` is
  durable, before the work of that state starts;
- ``after:<Effect>``: right after an effect's work finished, before its
  outcome is journaled (e.g. ``after:TakeSnapshot``);
- ``during:<Effect>:<fraction>``: when that effect reports progress at or
  past ``fraction`` (e.g. ``during:Apply:0.5`` kills mid-dpkg,
  ``during:Rollback:0.5`` mid-restore).

The process kills itself with SIGKILL, so nothing runs after the point: no
``finally``, no atexit, no flush — exactly what ``kill -9`` does.
"""

import os
import signal
from typing import Optional

ENV = "PATCHD_FAILPOINT"


class Failpoints:
    def __init__(self, spec: Optional[str] = None):
        self.spec = spec if spec is not None else os.environ.get(ENV, "")

    def hit(self, point: str) -> None:
        if self.spec and self.spec == point:
            _die()

    def progress(self, effect: str, fraction: float) -> None:
        prefix = "during:{}:".format(effect)
        if self.spec.startswith(prefix) and fraction >= float(self.spec[len(prefix):]):
            _die()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
