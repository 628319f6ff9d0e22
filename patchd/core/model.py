"""The transaction model: small str enums and frozen dataclasses.

Rules:
- Values are immutable; the engine makes changed copies with ``replace``.
- Enum values are the wire format: they serialise unchanged to SQLite, JSON
  and D-Bus, so they are never renamed.
- ``to_dict``/``from_dict`` give the JSON shape stored in the journal and sent
  in reports; they round-trip exactly.
"""

import enum
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

from patchd.core import errors, names

__all__ = ["Family", "Operation", "Action", "State", "Request", "PackageChange",
           "Plan", "SnapshotRef", "Transaction", "Report", "replace"]


class StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return self.value


class Family(StrEnum):
    DEB = "deb"
    RPM = "rpm"


class Operation(StrEnum):
    """What the admin asked for."""

    UPGRADE = "upgrade"      # upgrade all (or the named) installed packages
    INSTALL = "install"      # install or change to named packages/versions
    REMOVE = "remove"


class Action(StrEnum):
    """What happens to one package."""

    INSTALL = "install"
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    REINSTALL = "reinstall"
    REMOVE = "remove"


class State(StrEnum):
    """Transaction states; the allowed moves are in ``patchd.core.states``."""

    QUEUED = "queued"
    RESOLVING = "resolving"
    RESOLVED = "resolved"
    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    SNAPSHOTTING = "snapshotting"
    APPLYING = "applying"
    CHECKING = "checking"
    DONE = "done"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


@dataclass(frozen=True)
class Request:
    """An admin's request. ``packages`` holds names or ``name=version`` specs."""

    operation: Operation
    packages: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        return {"operation": self.operation.value, "packages": list(self.packages)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Request":
        return cls(Operation(data["operation"]), tuple(data.get("packages", ())))


@dataclass(frozen=True)
class PackageChange:
    """One package's change; ``old``/``new`` are None when absent."""

    name: str
    arch: str
    old: Optional[str]
    new: Optional[str]
    action: Action
    auto: bool = False   # installed as a dependency, not asked for by name

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "old": self.old,
                "new": self.new, "action": self.action.value, "auto": self.auto}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PackageChange":
        return cls(data["name"], data["arch"], data.get("old"), data.get("new"),
                   Action(data["action"]), bool(data.get("auto", False)))

    def describe(self) -> str:
        if self.action is Action.INSTALL:
            return "install {} {}".format(self.name, self.new)
        if self.action is Action.REMOVE:
            return "remove {} {}".format(self.name, self.old)
        return "{} {} {} -> {}".format(self.action.value, self.name, self.old, self.new)


@dataclass(frozen=True)
class Plan:
    """The exact set of changes a transaction will make, sorted by name/arch."""

    changes: Tuple[PackageChange, ...] = ()
    download_bytes: int = 0
    install_delta_bytes: int = 0   # growth of installed size; may be negative

    def __post_init__(self):
        object.__setattr__(self, "changes", tuple(
            sorted(self.changes, key=lambda c: (c.name, c.arch))))

    @property
    def empty(self) -> bool:
        return not self.changes

    def to_dict(self) -> Dict[str, Any]:
        return {"changes": [c.to_dict() for c in self.changes],
                "download_bytes": self.download_bytes,
                "install_delta_bytes": self.install_delta_bytes}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Plan":
        return cls(tuple(PackageChange.from_dict(c) for c in data.get("changes", ())),
                   int(data.get("download_bytes", 0)),
                   int(data.get("install_delta_bytes", 0)))


@dataclass(frozen=True)
class SnapshotRef:
    """A snapshot the engine can name before it exists (see names.snapshot_name)."""

    name: str
    kind: str = "btrfs"
    path: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": self.path}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SnapshotRef":
        return cls(data["name"], data.get("kind", "btrfs"), data.get("path", ""))


@dataclass(frozen=True)
class Transaction:
    """One transaction's journaled state. ``error`` is the first failure."""

    id: str
    request: Request
    state: State = State.QUEUED
    plan: Optional[Plan] = None
    snapshot: Optional[SnapshotRef] = None
    error: Optional[errors.PatchdError] = None

    def __post_init__(self):
        if not names.is_valid_transaction_id(self.id):
            raise errors.InvalidRequest("{!r} is not a valid transaction id".format(self.id))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "request": self.request.to_dict(),
            "state": self.state.value,
            "plan": self.plan.to_dict() if self.plan else None,
            "snapshot": self.snapshot.to_dict() if self.snapshot else None,
            "error": self.error.to_dict() if self.error else None,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Transaction":
        return cls(
            id=data["id"],
            request=Request.from_dict(data["request"]),
            state=State(data["state"]),
            plan=Plan.from_dict(data["plan"]) if data.get("plan") else None,
            snapshot=SnapshotRef.from_dict(data["snapshot"]) if data.get("snapshot") else None,
            error=errors.from_dict(data["error"]) if data.get("error") else None,
        )


@dataclass(frozen=True)
class Report:
    """What the central platform learns about a finished transaction."""

    transaction: Transaction
    changed: bool         # does the root differ from before the transaction?

    def to_dict(self) -> Dict[str, Any]:
        data = self.transaction.to_dict()
        data["changed"] = self.changed
        return data
