"""The HTTP transport: the same ``Memos`` client, talking to ``memos serve`` (memos.server.http).

    from memos.client import Memos
    from memos.transports.http import HttpTransport
    mem = Memos(HttpTransport("https://memos.internal:8765", os.environ["MEMOS_API_KEY"]))

The server decides the principal from the API key: a client built without ``principal`` asks ``GET /v1/whoami``
once. A principal given explicitly travels only as ``X-Memos-Principal``, which the server compares with the key's:
a client for one principal holding another's key fails with ``PermissionDenied`` instead of quietly acting as
someone else. Syscalls go to ``POST /v1/execute`` in
their wire form; an error response carries ``{"code", "message", "details"}``, so ``unwrap`` raises the same typed
error as in-process. TLS certificates are always verified (give ``ca_file`` for a private CA).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from memos.errors import BackendError, error_from_wire


class HttpTransport:
    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0, ca_file: str | Path | None = None) -> None:
        """A transport to the API at ``url`` (e.g. ``https://host:8765``) acting with ``api_key``."""
        self.url = url.rstrip("/")
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            verify=verify,
            follow_redirects=False,  # a redirect could carry the key elsewhere
        )

    def _post(self, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        try:
            return self._http.post(path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise BackendError(f"memos API at {self.url} unreachable: {exc}", url=self.url) from exc

    def _error(self, response: httpx.Response) -> dict[str, Any]:
        """The error a non-2xx response carries, or a ``backend`` error when it is not a memos error body
        (a proxy's page, a truncated reply)."""
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return error
        return BackendError(
            f"HTTP {response.status_code} from {self.url} without a memos error: {response.text[:200]}",
            status=response.status_code,
        ).to_wire()

    def whoami(self) -> str:
        """The principal the API key acts as.

        Raises:
            PermissionDenied: the key is not valid (401). BackendError: the API cannot be reached or answered
                something that is not a memos reply.
        """
        try:
            response = self._http.get("/v1/whoami")
        except httpx.HTTPError as exc:
            raise BackendError(f"memos API at {self.url} unreachable: {exc}", url=self.url) from exc
        if not response.is_success:
            raise error_from_wire(self._error(response))
        try:
            return str(response.json()["principal"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"memos API at {self.url} answered whoami without a principal", url=self.url) from exc

    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        """Execute one syscall; return the envelope.

        Raises:
            BackendError: the API cannot be reached, or answered 2xx with something that is not JSON.
        """
        headers = {"X-Memos-Principal": principal}
        if trace_id:
            headers["X-Trace-Id"] = trace_id
        response = self._post("/v1/execute", syscall, headers)
        if not response.is_success:
            return {"error": self._error(response)}
        try:
            return {"ok": response.json()}
        except ValueError as exc:
            raise BackendError(f"memos API at {self.url} answered with invalid JSON", url=self.url) from exc

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Execute syscalls in order, each alone; return one envelope per syscall.

        Raises:
            MemosError: the batch as a whole was refused (bad key, too large, more than 256 syscalls), typed.
            BackendError: the API cannot be reached.
        """
        response = self._post("/v1/batch", {"syscalls": syscalls}, {"X-Memos-Principal": principal})
        if not response.is_success:
            raise error_from_wire(self._error(response))
        try:
            return list(response.json()["results"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"memos API at {self.url} answered a batch without results", url=self.url) from exc

    def close(self) -> None:
        self._http.close()

