"""Log lines are key=value and carry the transaction id, whoever logs them."""

import io
import logging

import structlog

from patchd.daemon import logsetup


def test_lines_are_key_value_and_bound_to_the_transaction():
    stream = io.StringIO()
    logsetup.configure(stream=stream)
    structlog.get_logger("patchd.x").info("outside", n=1)
    with logsetup.transaction_context("20261121-000000-abcdef"):
        logging.getLogger("patchd.snapshot.btrfs").info("snapshot %s taken", "s1")
        structlog.get_logger("patchd.y").warning("step failed", code="script-failed")
    structlog.get_logger("patchd.x").info("after")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "level='info' event='outside' n=1 logger='patchd.x'"
    assert lines[1] == ("level='info' event='snapshot s1 taken' tx='20261121-000000-abcdef' "
                        "logger='patchd.snapshot.btrfs'")
    assert lines[2].startswith("level='warning' event='step failed' tx='20261121-000000-abcdef'")
    assert "tx=" not in lines[3]
