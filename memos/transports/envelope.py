"""The wire envelope every transport speaks.

On the wire a call is ``(principal, syscall as a JSON dict, trace_id)`` and the answer an envelope:
``{"ok": <result as JSON>}`` or ``{"error": {"code", "message", "details"}}``. Every transport (in-process, Ray
actor, HTTP) speaks this envelope, so the client is the same over all of them and errors keep their types.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel

from memos.errors import MemosError, error_from_wire


class Transport(Protocol):
    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        """Execute one syscall; return the envelope. Never raises MemosError (it travels in the envelope)."""
        ...

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def envelope(execute: Any, principal: str, syscall: dict[str, Any], trace_id: str | None) -> dict[str, Any]:
    """Run ``execute`` and wrap its result or typed error."""
    try:
        result: BaseModel = execute(principal, syscall, trace_id=trace_id)
    except MemosError as exc:
        return {"error": exc.to_wire()}
    return {"ok": result.model_dump(mode="json")}


def unwrap(answer: dict[str, Any]) -> Any:
    """The ``ok`` payload of an envelope, or raise the typed error it carries."""
    if "error" in answer:
        raise error_from_wire(answer["error"])
    return answer["ok"]
