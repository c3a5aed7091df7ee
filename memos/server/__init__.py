"""The service surface: memos over HTTP (``memos serve``) and over MCP (``memos mcp``, ``memos serve --mcp``).

- ``keys``: API keys (bearer tokens) mapped to principals, stored only as hashes;
- ``http``: the REST API (FastAPI, uvicorn): one route per syscall, OpenAPI, size limits, TLS;
- ``mcp``: remember/recall/update/forget/history as MCP tools (the official ``mcp`` SDK), stdio and HTTP.

The client side of HTTP is ``memos.transports.http.HttpTransport`` (a transport, below the client).
See docs/service.md.
"""
