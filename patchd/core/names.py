"""Every public name of patchd's contracts, in one greppable place.

D-Bus names, error-name prefix, polkit action ids, default paths and the
snapshot naming scheme. Other modules import these constants instead of
spelling the strings again, so a contract change is a one-line diff here.
"""

import re

BUS_NAME = "org.patchd.Patchd1"
OBJECT_PATH = "/org/patchd/Patchd1"
MANAGER_INTERFACE = "org.patchd.Patchd1.Manager"
TRANSACTION_INTERFACE = "org.patchd.Patchd1.Transaction"
TRANSACTION_PATH_PREFIX = OBJECT_PATH + "/Transaction/"
ERROR_PREFIX = "org.patchd.Patchd1.Error."

POLKIT_PREFIX = "org.patchd.patchd1."
ACTION_READ = POLKIT_PREFIX + "read"
ACTION_REFRESH = POLKIT_PREFIX + "refresh"
ACTION_UPGRADE = POLKIT_PREFIX + "upgrade"
ACTION_INSTALL = POLKIT_PREFIX + "install"
ACTION_REMOVE = POLKIT_PREFIX + "remove"
ACTION_ROLLBACK = POLKIT_PREFIX + "rollback"
ACTION_CONFIGURE = POLKIT_PREFIX + "configure"

DEFAULT_ROOT = "/"
DEFAULT_STATE_DIR = "/var/lib/patchd"
JOURNAL_FILENAME = "journal.db"
# Snapshots of the booted root live beside it on the same btrfs filesystem;
# a managed root names its own snapshot directory.
DEFAULT_SNAPSHOT_DIR = "/.snapshots/patchd"
DEFAULT_SNAPSHOT_KEEP = 5
DEFAULT_LOCK_TIMEOUT_S = 300.0

SNAPSHOT_PREFIX = "patchd-"
# Snapshot roles: "pre" is taken before applying; "failed" keeps the broken
# state of a failed transaction for diagnosis until retention removes it.
SNAPSHOT_PRE = "pre"
SNAPSHOT_FAILED = "failed"


_TX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_valid_transaction_id(tx_id: str) -> bool:
    """Ids end up in snapshot names and file names: no ``/``, no leading dot."""
    return bool(_TX_ID.match(tx_id))


def snapshot_name(tx_id: str, role: str) -> str:
    """Deterministic snapshot name, so the journal can name it before it exists."""
    return "{}{}-{}".format(SNAPSHOT_PREFIX, tx_id, role)


def parse_snapshot_name(name: str):
    """Return ``(tx_id, role)`` for a patchd snapshot name, else ``None``."""
    if not name.startswith(SNAPSHOT_PREFIX):
        return None
    tx_id, sep, role = name[len(SNAPSHOT_PREFIX):].rpartition("-")
    if not sep or not tx_id or role not in (SNAPSHOT_PRE, SNAPSHOT_FAILED):
        return None
    return tx_id, role
