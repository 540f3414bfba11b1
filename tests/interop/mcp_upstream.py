"""An MCP server built with the official Python SDK, behind Scopegate in the interop tests.

It is a resource server that accepts only the user's credential (EXPECTED_KEY in X-API-Key),
and its tools report who arrived and which headers reached it, so tests can prove the agent's
token never did.  env: PORT, EXPECTED_KEY.
"""
import json
import os

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.context import Context

EXPECTED = os.environ["EXPECTED_KEY"]
server = MCPServer("scopegate-interop-upstream")


@server.tool()
async def whoami(ctx: Context) -> str:
    """Which user's credential arrived."""
    return "alice" if (ctx.headers or {}).get("x-api-key") == EXPECTED else "nobody"


@server.tool()
async def headers(ctx: Context) -> str:
    """Every request header that reached this server."""
    return json.dumps({k.lower(): v for k, v in (ctx.headers or {}).items()})


@server.tool()
async def write_file(path: str) -> str:
    """A tool profiles can deny."""
    return f"wrote {path}"


app = server.streamable_http_app(host="127.0.0.1")


async def require_key(scope, receive, send):
    """Refuse anything without the user's key, as a real resource server would."""
    if scope["type"] == "http":
        sent = dict(scope["headers"]).get(b"x-api-key", b"").decode()
        if sent != EXPECTED:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
    await app(scope, receive, send)


if __name__ == "__main__":
    print("ready", flush=True)
    uvicorn.run(require_key, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", lifespan="on")
