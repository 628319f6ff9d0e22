"""The one error tree of patchd.

Rules:
- Every error that can reach a person or a central platform is a subclass of
  ``PatchdError`` with a stable ``code`` (kebab-case, never renumbered or
  reused) and a D-Bus name ``org.patchd.Patchd1.Error.<ClassName>``.
- ``message`` says what happened, ``hint`` says what to do about it.
- Errors serialise to a plain dict (journal, reports) and back, so an error
  raised before a crash is reported unchanged after recovery.
"""

from typing import Dict, Optional, Type

from patchd.core import names


class PatchdError(Exception):
    """Base of all patchd errors. Subclasses set ``code`` and ``default_hint``."""

    code = "internal-error"
    default_hint = "This is a bug in patchd; the daemon log has the details."

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    @property
    def dbus_name(self) -> str:
        return names.ERROR_PREFIX + type(self).__name__

    def to_dict(self) -> Dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return "{} ({})".format(self.message, self.hint) if self.hint else self.message

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class InternalError(PatchdError):
    code = "internal-error"


class InvalidRequest(PatchdError):
    code = "invalid-request"
    default_hint = "Check the package names and versions in the request."


class PackageNotFound(PatchdError):
    code = "package-not-found"
    default_hint = "Refresh the repositories, or check the name and version."


class DependencyProblem(PatchdError):
    code = "dependency-problem"
    default_hint = ("Add the missing packages to the repository mirror, or "
                    "change the request; nothing was changed.")


class PackageHeld(PatchdError):
    code = "package-held"
    default_hint = ("Release the hold (apt-mark unhold / dnf versionlock delete) "
                    "if the change is intended; nothing was changed.")


class RepositoryUnsigned(PatchdError):
    code = "repository-unsigned"
    default_hint = ("Sign the repository and install its key (signed-by=), or "
                    "mark it trusted explicitly if that is intended.")


class RepositoryUnavailable(PatchdError):
    code = "repository-unavailable"
    default_hint = "Check the mirror address and the network, then refresh."


class DownloadFailed(PatchdError):
    code = "download-failed"
    default_hint = "Check the mirror and retry; nothing was changed."


class VerificationFailed(PatchdError):
    code = "verification-failed"
    default_hint = ("A package failed its checksum or signature check; fix the "
                    "mirror before retrying. Nothing was changed.")


class InsufficientSpace(PatchdError):
    code = "insufficient-space"
    default_hint = "Free disk space or delete old snapshots, then retry."


class LockTimeout(PatchdError):
    code = "lock-timeout"
    default_hint = ("Another package tool is running; wait for it to finish, "
                    "then retry. Nothing was changed.")


class SnapshotFailed(PatchdError):
    code = "snapshot-failed"
    default_hint = ("The root must be a btrfs subvolume with room for a "
                    "snapshot; nothing was changed.")


class ApplyFailed(PatchdError):
    code = "apply-failed"
    default_hint = "The system was rolled back to its snapshot; see the log."


class ScriptFailed(ApplyFailed):
    code = "script-failed"
    default_hint = ("A package's maintainer script failed; the system was "
                    "rolled back. Report the package to its vendor.")


class CheckFailed(PatchdError):
    code = "check-failed"
    default_hint = "The post-update check failed and the system was rolled back."


class RollbackFailed(PatchdError):
    code = "rollback-failed"
    default_hint = ("The system could not be restored automatically and needs "
                    "an administrator: the snapshot is kept, see the log.")


class JournalUnavailable(PatchdError):
    code = "journal-unavailable"
    default_hint = ("patchd's journal cannot be opened; it was left in place "
                    "for inspection. Restore it from backup or move it aside.")


class Interrupted(PatchdError):
    code = "interrupted"
    default_hint = "patchd was stopped mid-transaction and recovered on restart."


class Cancelled(PatchdError):
    code = "cancelled"
    default_hint = "The transaction was cancelled before any change."


def _all_subclasses(cls: Type[PatchdError]):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


BY_CODE = {cls.code: cls for cls in _all_subclasses(PatchdError)}


def from_dict(data: Dict[str, str]) -> PatchdError:
    """Rebuild an error from ``to_dict`` output; unknown codes become internal."""
    cls = BY_CODE.get(data.get("code", ""), InternalError)
    return cls(data.get("message", ""), data.get("hint"))
