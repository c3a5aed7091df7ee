"""memos as an MCP server: remember, recall, update, forget, history, list_cubes and ingest as tools.

Built on the official SDK (``mcp.server.mcpserver.MCPServer``). Each tool is a syscall through the ``Memos``
client, acting as the caller's principal, which comes from an API key (memos.server.keys) and from nothing else:

- stdio (``memos mcp``): the principal of the key given at start (``MEMOS_API_KEY``), for the process's life;
- streamable HTTP (``memos serve --mcp``, at ``/mcp``): the SDK's bearer-token authentication asks ``KeyVerifier``
  on every request, and a tool reads the principal from the request's access token. The SDK also binds each MCP
  session to the principal that opened it, so another key cannot ride on a session id.

A failed syscall is a tool error (``is_error``) whose text carries the memos error code (``denied: ...``), so a
model can read it; a memory in a cube the caller cannot read is ``not_found``, as everywhere. Results are compact
views for a model to read (text, tags, version, author, source, trust), not full headers; trust is in them so a
model can weigh what a tool or a document wrote.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field
from starlette.applications import Starlette

from memos import __version__
from memos.client import Memos
from memos.errors import MemosError, PermissionDenied
from memos.server.keys import Keys, hash_key
from memos.transports import Transport
from memos.types import CubeInfo, IngestResult, Memory

INSTRUCTIONS = (
    "Long-term memory shared with other agents. Use recall before answering from memory, remember for facts worth "
    "keeping (one fact per memory), update to correct one (pass expected_version to avoid overwriting a change you "
    "have not seen), forget to delete one, history to see how it changed and who changed it."
)

_F = TypeVar("_F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------------------------------ results


class MemoryView(BaseModel):
    """One version of a memory, as a model needs it."""

    id: str
    cube: str
    version: int
    state: str
    content: str
    tags: list[str]
    metadata: dict[str, Any]
    author: str
    source: str
    trust: str
    updated_at: datetime

    @classmethod
    def of(cls, m: Memory) -> MemoryView:
        return cls(
            id=m.id, cube=m.cube, version=m.version, state=m.state, content=m.content, tags=list(m.tags),
            metadata=m.metadata, author=m.provenance.author, source=m.provenance.source, trust=m.provenance.trust,
            updated_at=m.updated_at,
        )


class Recalled(BaseModel):
    memory: MemoryView
    score: float


class RecallResult(BaseModel):
    hits: list[Recalled]


class RememberedMany(BaseModel):
    written: int
    results: list[str] = Field(description="per content, in order: the new memory's id, or '<code>: <reason>'")


class HistoryResult(BaseModel):
    versions: list[MemoryView] = Field(description="oldest first")


class CubeView(BaseModel):
    name: str
    description: str
    owner: str

    @classmethod
    def of(cls, c: CubeInfo) -> CubeView:
        return cls(name=c.name, description=c.description, owner=c.owner)


class CubesResult(BaseModel):
    cubes: list[CubeView]


# ------------------------------------------------------------------------------------------------------ identity


class KeyVerifier:
    """The SDK's ``TokenVerifier`` over memos API keys: a known key is an access token for its principal."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    async def verify_token(self, token: str) -> AccessToken | None:
        principal = self.keys.principal_for(token)
        if principal is None:
            return None
        # The token field holds the key's hash: the raw key need not outlive this call.
        return AccessToken(token=hash_key(token), client_id=principal, scopes=[])


def _request_principal() -> str:
    token = get_access_token()
    if token is None:  # the SDK's RequireAuthMiddleware lets no such request through; refuse rather than guess
        raise ToolError("denied: this request carries no API key")
    return token.client_id


def stdio_principal(keys: Keys, api_key: str | None) -> str:
    """The principal a stdio server acts as: the one of ``api_key``.

    Raises:
        PermissionDenied: no key, or a key that is not in ``keys``.
    """
    principal = keys.principal_for(api_key)
    if principal is None:
        raise PermissionDenied("set MEMOS_API_KEY to an API key from the keys file", reason="unauthenticated")
    return principal


def _tool_errors(fn: _F) -> _F:
    """Report a memos error as a tool error the model can read: ``<code>: <message>``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MemosError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from exc

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------------ the server


def build_server(
    transport: Transport,
    *,
    principal: str | None = None,
    keys: Keys | None = None,
    default_cube: str | None = None,
) -> MCPServer:
    """The MCP server over ``transport``, acting as ``principal`` (stdio) or as each HTTP request's key (``keys``).

    ``default_cube`` is where ``remember`` writes and ``recall`` searches when no cube is named; without it
    ``remember`` needs a cube and ``recall`` searches every cube the caller may read. The tools run on the SDK's
    worker threads; the kernel behind the transport is thread-safe.

    Raises:
        ValueError: not exactly one of ``principal`` and ``keys``.
    """
    if (principal is None) == (keys is None):
        raise ValueError("give either principal (stdio) or keys (HTTP)")
    auth: dict[str, Any] = {}
    if keys is not None:
        # API keys are not OAuth: no authorization server exists. issuer_url is required by the settings model but
        # published nowhere while resource_server_url is None; only the bearer check (KeyVerifier) is used.
        auth = {
            "token_verifier": KeyVerifier(keys),
            "auth": AuthSettings(issuer_url="http://127.0.0.1", resource_server_url=None),
        }
    server = MCPServer(
        "memos", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING", **auth
    )

    def client() -> Memos:
        return Memos(transport, principal if principal is not None else _request_principal())

    def target(cube: str | None) -> str:
        if cube or default_cube:
            return cube or default_cube  # type: ignore[return-value]
        raise ToolError("invalid: name a cube (this server has no default cube); list_cubes shows yours")

    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False))
    @_tool_errors
    def remember(
        content: Annotated[str, Field(description="one self-contained fact or note, at most 32 KiB")],
        cube: Annotated[str | None, Field(description="the cube to write to; the server's default if omitted")] = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        source: Annotated[
            Literal["conversation", "tool", "document"],
            Field(description="where the content came from; tool and document content is stored as untrusted"),
        ] = "conversation",
    ) -> MemoryView:
        """Store a new memory (version 1). You are recorded as its author."""
        return MemoryView.of(client().write(target(cube), content, tags=tags or (), metadata=metadata, source=source))

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False))
    @_tool_errors
    def remember_many(
        contents: Annotated[list[str], Field(min_length=1, max_length=1000,
                                             description="self-contained facts or notes, each at most 32 KiB")],
        cube: Annotated[str | None, Field(description="the cube to write to; the server's default if omitted")] = None,
        tags: Annotated[list[str] | None, Field(description="tags given to every one of them")] = None,
        source: Annotated[
            Literal["conversation", "tool", "document"],
            Field(description="where the contents came from; tool and document content is stored as untrusted"),
        ] = "conversation",
    ) -> RememberedMany:
        """Store many memories at once (one transaction). Each is written or refused alone: ``results[i]`` is the
        id of ``contents[i]`` or why it was refused."""
        where = target(cube)
        result = client().write_many(
            [{"content": c, "tags": list(tags or ()), "source": source} for c in contents], cube=where
        )
        return RememberedMany(
            written=result.written,
            results=[o.id if o.ok else f"{o.error['code']}: {o.error['message']}" for o in result.results],  # type: ignore[index]
        )

    @server.tool(annotations=read_only)
    @_tool_errors
    def recall(
        query: Annotated[str, Field(description="what you want to remember, in words")],
        cubes: Annotated[list[str] | None, Field(description="cubes to search; default: the server's default "
                                                 "cube, else every cube you may read")] = None,
        k: Annotated[int, Field(ge=1, le=50, description="how many memories to return")] = 5,
    ) -> RecallResult:
        """Search memory (by meaning and by words); best matches first."""
        mem = client()
        names = cubes or ([default_cube] if default_cube else [c.name for c in mem.cubes()])
        if not names:
            return RecallResult(hits=[])
        hits = mem.search(query, names, k=k)
        return RecallResult(hits=[Recalled(memory=MemoryView.of(h.memory), score=h.score) for h in hits])

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False))
    @_tool_errors
    def update(
        id: Annotated[str, Field(description="the memory's id (m_...)")],
        content: str | None = None,
        tags: Annotated[list[str] | None, Field(description="replaces the tags")] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="replaces the metadata")] = None,
        expected_version: Annotated[int | None, Field(ge=1, description="fail with conflict unless this is still "
                                                      "the current version")] = None,
    ) -> MemoryView:
        """Correct a memory: writes a new version; earlier versions stay in its history."""
        return MemoryView.of(
            client().update(id, content=content, tags=tags, metadata=metadata, expected_version=expected_version)
        )

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False))
    @_tool_errors
    def forget(
        id: Annotated[str, Field(description="the memory's id (m_...)")],
        expected_version: Annotated[int | None, Field(ge=1)] = None,
    ) -> MemoryView:
        """Delete a memory (a tombstone version: search no longer finds it; its history is kept)."""
        return MemoryView.of(client().delete(id, expected_version=expected_version))

    @server.tool(annotations=read_only)
    @_tool_errors
    def history(id: Annotated[str, Field(description="the memory's id (m_...)")]) -> HistoryResult:
        """Every version of a memory, oldest first, with who wrote each and from what source."""
        return HistoryResult(versions=[MemoryView.of(v) for v in client().history(id)])

    @server.tool(annotations=read_only)
    @_tool_errors
    def list_cubes() -> CubesResult:
        """The cubes (memory namespaces) you may read."""
        return CubesResult(cubes=[CubeView.of(c) for c in client().cubes()])

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False))
    @_tool_errors
    def ingest(
        messages: Annotated[list[dict[str, Any]], Field(
            description="conversation messages, each {content, speaker?, id?, at? (ISO time), session?}")],
        cube: Annotated[str | None, Field(description="the cube to maintain; the server's default if omitted")] = None,
        dry_run: Annotated[bool, Field(description="decide and report, write nothing")] = False,
    ) -> IngestResult:
        """Extract facts from a conversation into memory: each is added, updates a memory, supersedes one it
        contradicts, or is skipped as already known; every decision says why and which messages it came from."""
        return client().ingest(target(cube), messages, dry_run=dry_run)

    return server


def streamable_http_app(
    transport: Transport, keys: Keys, *, default_cube: str | None = None
) -> tuple[MCPServer, Starlette]:
    """The MCP server over streamable HTTP at path ``/mcp``, each request acting as its bearer key's principal.

    The caller runs ``server.session_manager.run()`` for the app's lifetime (memos.server.http does).
    """
    server = build_server(transport, keys=keys, default_cube=default_cube)
    # DNS-rebinding checks guard servers that trust whoever can reach them; every request here must carry an API
    # key, which a rebinding page cannot have, and Host checks belong to the deployment's proxy.
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return server, app


def run_stdio(transport: Transport, principal: str, *, default_cube: str | None = None) -> None:
    """Serve MCP on this process's stdin/stdout as ``principal`` until the client closes the stream."""
    build_server(transport, principal=principal, default_cube=default_cube).run("stdio")
