"""An MCP server built with the official Python SDK, behind Scopegate in the interop tests.

It is a resource server that accepts only the user's credential, and its tools report who
arrived and which headers reached it, so tests can prove the agent's token never did.
env: PORT, and either EXPECTED_KEY (an API key in X-API-Key) or INTROSPECT (OAuth: every bearer
token is validated by RFC 7662 introspection at that oidc-provider issuer, with
INTROSPECT_CLIENT / INTROSPECT_SECRET, through the SDK's own bearer-auth middleware).
"""
import json
import os

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.context import Context

EXPECTED = os.environ.get("EXPECTED_KEY")
ISSUER = os.environ.get("INTROSPECT")

if ISSUER:
    import httpx2 as httpx
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings

    class IntrospectionVerifier:
        """RFC 7662: ask the authorization server whether the token is active, and for whom."""

        async def verify_token(self, token: str) -> AccessToken | None:
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.post(
                    f"{ISSUER}/token/introspection",
                    data={"token": token},
                    auth=(os.environ["INTROSPECT_CLIENT"], os.environ["INTROSPECT_SECRET"]),
                )
            v = r.json()
            if r.status_code != 200 or not v.get("active"):
                return None
            return AccessToken(token=token, client_id=v.get("client_id", ""), scopes=str(v.get("scope", "")).split(), expires_at=v.get("exp"), subject=v.get("sub"))

    port = os.environ["PORT"]
    server = MCPServer(
        "scopegate-interop-upstream",
        token_verifier=IntrospectionVerifier(),
        auth=AuthSettings(issuer_url=ISSUER, resource_server_url=f"http://127.0.0.1:{port}/mcp", validate_token_resource=False),
    )
else:
    server = MCPServer("scopegate-interop-upstream")


@server.tool()
async def whoami(ctx: Context) -> str:
    """Which user's credential arrived."""
    if ISSUER:
        t = get_access_token()
        return t.subject if t and t.subject else "nobody"
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
    """Refuse anything without the user's key, as a real resource server would (OAuth: the
    SDK's bearer middleware inside `app` does it)."""
    if scope["type"] == "http" and not ISSUER:
        sent = dict(scope["headers"]).get(b"x-api-key", b"").decode()
        if sent != EXPECTED:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
    await app(scope, receive, send)


if __name__ == "__main__":
    print("ready", flush=True)
    uvicorn.run(require_key, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", lifespan="on")
