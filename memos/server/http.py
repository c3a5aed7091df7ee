"""The HTTP API: every syscall over HTTP(S), authenticated by API keys, described by an OpenAPI spec.

| route | body | 200 |
|---|---|---|
| ``POST /v1/syscalls/{op}`` (one per syscall) | the syscall's fields (``op`` may be left out) | the syscall's ``result_type`` |
| ``POST /v1/execute`` | one syscall with its ``op`` (the wire form, ``memos.syscalls.to_wire``) | its result |
| ``POST /v1/batch`` | ``{"syscalls": [...]}``, at most 256 | ``{"results": [{"ok": ...} or {"error": ...}]}`` |
| ``GET /v1/whoami`` | | ``{"principal": ...}`` |
| ``GET /healthz``, ``GET /openapi.json`` | | liveness; the spec (the only routes without a key) |

Contract:
- every other route needs ``Authorization: Bearer <key>``; the caller's principal is the key's (``memos.server.keys``)
  and nothing in a request can change it: syscall bodies reject unknown fields, so a ``principal`` smuggled into a
  write is a 422 (``grant``/``revoke`` name the *grantee* in theirs). A client may send ``X-Memos-Principal`` to
  assert who it expects to be; a mismatch is a 403, never a switch of identity;
- authentication and the body-size limit are checked by a pure ASGI guard before any body is read: 401 for a
  missing or unknown key, 413 for a ``Content-Length`` over the limit or a stream that grows past it;
- errors are ``{"error": {"code", "message", "details"}}`` with the kernel's stable codes and the status of
  ``HTTP_STATUS``; a 500 (code ``error``) is a bug, never an expected failure;
- a batch runs each syscall in its own transaction, as every transport does: failures come back in place;
- the kernel is thread-safe (it holds one lock per syscall and releases it while the model host works); ``X-Trace-Id`` (given or made) is passed to it
  for its logs and returned on the response.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import operator
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import reduce
from typing import Annotated, Any

import uvicorn
from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memos import __version__
from memos import syscalls as sc
from memos.cubes.blobs import shown
from memos.errors import MemosError, PayloadTooLarge, PermissionDenied
from memos.logging import get_logger
from memos.server.keys import Keys
from memos.transports import Transport

#: Error code -> HTTP status. A code missing here (the base ``error``) is a 500.
HTTP_STATUS: dict[str, int] = {
    "invalid_state": 400,
    "denied": 403,
    "not_found": 404,
    "exists": 409,
    "conflict": 409,
    "cancelled": 409,  # the operation was cancelled (by its caller or an admin) before it committed
    "fingerprint": 409,  # the request is fine; the stored payload was built for another model
    "too_large": 413,
    "invalid": 422,
    "policy": 422,
    "corrupt": 500,  # stored data failed its checksum: the server's fault, not the caller's
    "model": 503,
    "backend": 503,
    "in_use": 503,  # the data dir is owned by another process (a deployment problem, not the caller's)
    "capacity": 507,
}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: A batch of 256 maximal writes does not fit; raise it for bulk loads. Single syscalls are far below it.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json"})
PRINCIPAL_SCOPE_KEY = "memos.principal"
TRACE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

_log = get_logger("memos.server.http")


# ------------------------------------------------------------------------------------------------------ wire models


class ErrorInfo(BaseModel):
    code: str = Field(description=f"a stable memos error code: error, {', '.join(sorted(HTTP_STATUS))}")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    """The body of every non-2xx response."""

    error: ErrorInfo


class OkEnvelope(BaseModel):
    ok: Any = Field(description="the syscall's result, as /v1/execute returns it")


_BatchItem = Annotated[
    dict[str, Any],
    WithJsonSchema({
        "type": "object",
        "description": "a syscall with its op, as for /v1/execute; checked when it runs, failing alone",
        "required": ["op"],
        "properties": {"op": {"type": "string", "enum": sorted(sc.SYSCALL_TYPES)}},
        "additionalProperties": True,
    }),
]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    syscalls: list[_BatchItem] = Field(max_length=sc.MAX_BATCH)


class BatchResponse(BaseModel):
    results: list[OkEnvelope | ErrorBody] = Field(description="one envelope per syscall, in order")


class AnySyscall(RootModel[sc.Syscall]):
    """One syscall, discriminated by ``op``."""


class Caller(BaseModel):
    principal: str


class Health(BaseModel):
    ok: bool = True


def _error_responses() -> dict[int | str, dict[str, Any]]:
    by_status: dict[int, list[str]] = {500: ["error"]}
    for code, status in HTTP_STATUS.items():
        by_status.setdefault(status, []).append(code)
    out: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": "codes: " + ", ".join(codes)} for status, codes in by_status.items()
    }
    out[401] = {"model": ErrorBody, "description": "no API key, or an unknown one (code denied)"}
    return out


_ERRORS = _error_responses()


# ------------------------------------------------------------------------------------------------------ responses


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate a client sent (e.g. echoed in a field path) has no UTF-8 form; escaping it is valid JSON.
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(exc: MemosError, *, status: int | None = None, headers: dict[str, str] | None = None) -> _JSON:
    """The response for a typed error: its wire form, with the status of its code unless ``status`` is given."""
    return _JSON({"error": exc.to_wire()}, status_code=status or HTTP_STATUS.get(exc.code, 500), headers=headers)


def without_server_paths(value: Any) -> Any:
    """``value`` with every payload reference (``{"payload": {"path": ...}}``, at any depth) naming its file from the
    data dir's ``blobs/`` on: a remote caller never learns the server's absolute paths. (In-process and Ray clients,
    on the server's machines, get the path the model host loads.)"""
    if isinstance(value, dict):
        out = {key: without_server_paths(item) for key, item in value.items()}
        ref = out.get("payload")
        if isinstance(ref, dict) and isinstance(ref.get("path"), str):
            out["payload"] = {**ref, "path": shown(ref["path"])}
        return out
    if isinstance(value, list):
        return [without_server_paths(item) for item in value]
    return value


def _answer(answer: dict[str, Any], headers: dict[str, str]) -> _JSON:
    if "error" in answer:
        return _JSON(answer, status_code=HTTP_STATUS.get(str(answer["error"].get("code")), 500), headers=headers)
    return _JSON(without_server_paths(answer["ok"]), headers=headers)


# ------------------------------------------------------------------------------------------------------ the guard


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``limit`` (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the already-read body once, then the connection's own messages (disconnects)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class _Guard:
    """Authenticates and bounds every request before the application reads a byte of it, and marks every
    response ``no-store`` (memories must not sit in shared caches) and ``nosniff``."""

    def __init__(self, app: ASGIApp, keys: Keys, max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no WebSocket routes exist: refuse the handshake rather than pass it on unchecked
            await send({"type": "websocket.close", "code": 1008})
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("cache-control", "no-store")
                headers.setdefault("x-content-type-options", "nosniff")
            await send(message)

        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send_hardened)
            return
        headers = Headers(scope=scope)
        authorizations = headers.getlist("authorization")
        # Two Authorization headers are ambiguous (which key acts?): refused like a missing key.
        principal = self.keys.principal_for(_bearer(authorizations[0])) if len(authorizations) == 1 else None
        if principal is None:
            denied = PermissionDenied("a valid API key is required: 'Authorization: Bearer <key>'", reason="unauthenticated")
            response = error_response(denied, status=401, headers={"WWW-Authenticate": 'Bearer realm="memos"'})
            await response(scope, receive, send_hardened)
            return
        length = headers.get("content-length", "")
        body = None
        if not (length.isdigit() and int(length) > self.max_body_bytes):
            body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            too_large = PayloadTooLarge(f"request body over {self.max_body_bytes} bytes", limit=self.max_body_bytes)
            await error_response(too_large)(scope, receive, send_hardened)
            return
        scope[PRINCIPAL_SCOPE_KEY] = principal
        await self.app(scope, _replay(body, receive), send_hardened)


# ------------------------------------------------------------------------------------------------------ dependencies

_BEARER = HTTPBearer(auto_error=False, scheme_name="apiKey", description="an API key from the server's keys file")


def _caller(
    request: Request,
    _key: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],  # declares the scheme in the spec
    asserted: Annotated[
        str | None,
        Header(alias="X-Memos-Principal", max_length=128, description="optional: the principal the client expects "
               "its key to act as; a mismatch is refused (403), it never changes who the caller is"),
    ] = None,
) -> str:
    """The principal the guard found for the request's key.

    Raises:
        PermissionDenied: ``X-Memos-Principal`` names someone else.
    """
    principal = request.scope[PRINCIPAL_SCOPE_KEY]
    # Every X-Memos-Principal header is checked, not just the first one FastAPI hands over: a second header naming
    # someone else must not pass because a proxy or a client library put the matching one first.
    for claimed in [asserted, *request.headers.getlist("x-memos-principal")]:
        if claimed is not None and claimed != principal:
            raise PermissionDenied(
                f"this API key acts as {principal!r}, not {claimed!r}", principal=principal, asserted=claimed
            )
    return principal


def _trace(
    trace_id: Annotated[
        str | None,
        Header(alias="X-Trace-Id", pattern=TRACE_ID_PATTERN, description="correlates this call in the kernel's logs"),
    ] = None,
) -> str:
    return trace_id or uuid.uuid4().hex[:16]


Principal = Annotated[str, Depends(_caller)]
TraceId = Annotated[str, Depends(_trace)]


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            parts.append("body: not valid JSON")
            continue
        loc = [str(p) for p in err.get("loc", ())]
        where = ".".join(loc[1:]) if loc[:1] == ["body"] and len(loc) > 1 else " ".join(loc)
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------------ the app


def create_app(
    transport: Transport,
    keys: Keys,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    mcp: bool = False,
    mcp_default_cube: str | None = None,
) -> FastAPI:
    """The API in front of ``transport`` (in-process kernel or Ray actor), for the principals of ``keys``.

    With ``mcp`` the MCP server (``memos.server.mcp``) answers at ``/mcp`` behind the same keys and limits.
    The transport is called from the server's threads (the kernel is thread-safe) and closed by its owner, not here.
    """
    lifespan = None
    mcp_app = None
    if mcp:
        from memos.server.mcp import streamable_http_app

        mcp_server, mcp_app = streamable_http_app(transport, keys, default_cube=mcp_default_cube)

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            # A mounted app's own lifespan never runs; the MCP session manager must run for the app's lifetime.
            async with mcp_server.session_manager.run():
                yield

    app = FastAPI(
        title="memos",
        version=__version__,
        summary="A memory operating system for LLM agents: every syscall over HTTP.",
        description="Authenticate with `Authorization: Bearer <key>`; the key decides the principal. "
        "Errors are `{\"error\": {\"code\", \"message\", \"details\"}}` with memos' stable codes. See docs/service.md.",
        lifespan=lifespan,
        docs_url=None,  # the interactive pages pull scripts from a CDN; the spec itself is at /openapi.json
        redoc_url=None,
        default_response_class=_JSON,
    )

    def run(principal: str, syscall: sc.SyscallBase, trace_id: str) -> _JSON:
        answer = transport.call(principal, sc.to_wire(syscall), trace_id)
        return _answer(answer, {"X-Trace-Id": trace_id})

    for op, cls in sc.SYSCALL_TYPES.items():
        app.add_api_route(
            f"/v1/syscalls/{op}", _syscall_endpoint(cls, run), methods=["POST"], name=op, operation_id=op,
            summary=op, description=inspect.getdoc(cls) or "", response_model=cls.result_type,
            responses=_ERRORS, tags=["syscalls"],
        )

    results = reduce(operator.or_, dict.fromkeys(cls.result_type for cls in sc.SYSCALL_TYPES.values()))

    @app.post("/v1/execute", response_model=results, responses=_ERRORS, tags=["generic"], operation_id="execute")
    def execute(syscall: Annotated[AnySyscall, Body()], principal: Principal, trace_id: TraceId) -> _JSON:
        """Run one syscall given in its wire form (with its ``op``); the HTTP transport's route."""
        return run(principal, syscall.root, trace_id)

    @app.post("/v1/batch", response_model=BatchResponse, responses=_ERRORS, tags=["generic"], operation_id="batch")
    def batch(body: BatchRequest, principal: Principal) -> _JSON:
        """Run syscalls in order, each in its own transaction; each result or error comes back in its place."""
        return _JSON({"results": without_server_paths(transport.call_batch(principal, body.syscalls))})

    @app.get("/v1/whoami", response_model=Caller, responses=_ERRORS, tags=["generic"], operation_id="whoami")
    def whoami(principal: Principal) -> _JSON:
        """The principal this API key acts as."""
        return _JSON({"principal": principal})

    @app.get("/healthz", response_model=Health, tags=["generic"], operation_id="healthz")
    def healthz() -> _JSON:
        """Liveness (no key needed; touches no memory)."""
        return _JSON({"ok": True})

    @app.exception_handler(MemosError)
    async def on_memos_error(_: Request, exc: MemosError) -> _JSON:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> _JSON:
        return _JSON({"error": {"code": "invalid", "message": _describe(exc), "details": {}}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> _JSON:
        code = "not_found" if exc.status_code == 404 else "invalid"
        body = {"error": {"code": code, "message": str(exc.detail), "details": {}}}
        return _JSON(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> _JSON:
        # Starlette re-raises after this, so the server logs the traceback; the client learns nothing internal.
        _log.error("unhandled error", path=request.url.path, error=repr(exc))
        return _JSON({"error": {"code": "error", "message": "internal error", "details": {}}}, status_code=500)

    if mcp_app is not None:
        # A route, not a mount: the MCP app answers at exactly /mcp (a mount would redirect /mcp to /mcp/).
        app.router.add_route("/mcp", mcp_app, include_in_schema=False)
    app.add_middleware(_Guard, keys=keys, max_body_bytes=max_body_bytes)
    return app


def _syscall_endpoint(cls: type[sc.SyscallBase], run: Any) -> Any:
    """The route function of one syscall: its body is the syscall model (optional when every field has a default).

    The signature is built explicitly because FastAPI reads the body type from it and ``cls`` varies per route.
    """
    required = any(field.is_required() for field in cls.model_fields.values())

    def endpoint(body: sc.SyscallBase | None, principal: str, trace_id: str) -> _JSON:
        # No body: the syscall with its defaults, which a model-level rule may still refuse (typed error, 422).
        return run(principal, body if body is not None else sc.build(cls), trace_id)

    keyword = inspect.Parameter.KEYWORD_ONLY
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("body", keyword, annotation=cls if required else cls | None,
                              default=Body() if required else Body(default=None)),
            inspect.Parameter("principal", keyword, annotation=Principal),
            inspect.Parameter("trace_id", keyword, annotation=TraceId),
        ],
        return_annotation=_JSON,
    )
    return endpoint


# ------------------------------------------------------------------------------------------------------ serving


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, *, tls_cert: str | None, tls_key: str | None, allow_insecure: bool) -> None:
    """Refuse a listening set-up that would leak API keys (cheap: call it before opening a kernel).

    Raises:
        ValueError: only one of ``tls_cert``/``tls_key``; or a non-loopback ``host`` without TLS and without
            ``allow_insecure`` (API keys would cross the network in clear text).
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    if tls_cert is None and not allow_insecure and not _is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host} without TLS: API keys would cross the network in clear text. "
            "Give --tls-cert/--tls-key, or --insecure when a TLS-terminating proxy is in front"
        )


def server_config(
    app: ASGIApp,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    allow_insecure: bool = False,
    log_level: str = "info",
) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` runs (also used to run the app in a thread).

    Raises:
        ValueError: see ``check_binding``.
    """
    check_binding(host, tls_cert=tls_cert, tls_key=tls_key, allow_insecure=allow_insecure)
    return uvicorn.Config(
        app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key, log_level=log_level,
        server_header=False,
    )


def serve(
    transport: Transport,
    keys: Keys,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    allow_insecure: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    mcp: bool = False,
    mcp_default_cube: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the API with uvicorn until interrupted (Ctrl-C / SIGTERM).

    Raises:
        ValueError: see ``check_binding``.
    """
    check_binding(host, tls_cert=tls_cert, tls_key=tls_key, allow_insecure=allow_insecure)
    app = create_app(transport, keys, max_body_bytes=max_body_bytes, mcp=mcp, mcp_default_cube=mcp_default_cube)
    config = server_config(
        app, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, allow_insecure=allow_insecure,
        log_level=log_level,
    )
    uvicorn.Server(config).run()
