"""The one exception tree of memos.

Every error a syscall can raise is a :class:`MemosError` with a stable ``code`` (used on the wire, in the audit log
and by HTTP/MCP front ends). Each class also refines the builtin it resembles, so ``except KeyError`` keeps working
for callers that do not know memos::

    MemosError
    ├── InvalidSyscall (ValueError)        code "invalid"        bad arguments, unknown fields, wrong types
    │   └── PayloadTooLarge                code "too_large"      content/metadata above the documented limits
    ├── NotFound (KeyError)                code "not_found"      unknown cube, memory or version
    ├── AlreadyExists (ValueError)         code "exists"         create of a cube that exists
    ├── PermissionDenied (PermissionError) code "denied"         principal lacks a right on a cube
    ├── VersionConflict (RuntimeError)     code "conflict"       expected_version is not the current version
    ├── InvalidState (RuntimeError)        code "invalid_state"  e.g. update of a deleted memory
    ├── CapacityExceeded (RuntimeError)    code "capacity"       a budget cannot be met
    ├── FingerprintMismatch (ValueError)   code "fingerprint"    payload built for another model
    ├── CorruptPayload (ValueError)        code "corrupt"        blob missing, truncated or altered
    ├── PolicyError (ValueError)           code "policy"         a policy file is invalid (file, line, key)
    ├── ModelUnavailable (RuntimeError)    code "model"          weights missing or model host not running
    ├── Cancelled (RuntimeError)           code "cancelled"      a long operation was cancelled (``cancel``)
    └── BackendError (RuntimeError)        code "backend"        a storage/index/transport failure (translated)
        └── DataDirInUse                   code "in_use"         another process owns the data dir (names it)

Third-party exceptions are translated once, at the backend edge, with ``raise ... from exc``. ``error_from_wire``
rebuilds the right class from a ``{"code", "message", "details"}`` dict, which is how errors cross Ray and HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MemosError(Exception):
    """Base of every memos error. ``details`` is JSON-safe context (cube, right, versions...)."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidSyscall(MemosError, ValueError):
    code = "invalid"


class PayloadTooLarge(InvalidSyscall):
    code = "too_large"


class NotFound(MemosError, KeyError):
    code = "not_found"

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class AlreadyExists(MemosError, ValueError):
    code = "exists"


class PermissionDenied(MemosError, PermissionError):
    code = "denied"


class VersionConflict(MemosError, RuntimeError):
    code = "conflict"


class InvalidState(MemosError, RuntimeError):
    code = "invalid_state"


class CapacityExceeded(MemosError, RuntimeError):
    code = "capacity"


class FingerprintMismatch(MemosError, ValueError):
    code = "fingerprint"


class CorruptPayload(MemosError, ValueError):
    code = "corrupt"


class PolicyError(MemosError, ValueError):
    code = "policy"


class ModelUnavailable(MemosError, RuntimeError):
    code = "model"


class Cancelled(MemosError, RuntimeError):
    code = "cancelled"


class BackendError(MemosError, RuntimeError):
    code = "backend"


class DataDirInUse(BackendError):
    """Another process owns the data dir (``memos.storage.owner``); ``details`` name its owner, pid and endpoint."""

    code = "in_use"


_BY_CODE: dict[str, type[MemosError]] = {
    cls.code: cls
    for cls in (
        MemosError,
        InvalidSyscall,
        PayloadTooLarge,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        VersionConflict,
        InvalidState,
        CapacityExceeded,
        FingerprintMismatch,
        CorruptPayload,
        PolicyError,
        ModelUnavailable,
        Cancelled,
        BackendError,
        DataDirInUse,
    )
}


def error_from_wire(data: dict[str, Any]) -> MemosError:
    """Rebuild the typed error that ``MemosError.to_wire`` produced (unknown codes become ``MemosError``)."""
    cls = _BY_CODE.get(str(data.get("code")), MemosError)
    return cls(str(data.get("message", "")), **dict(data.get("details") or {}))
