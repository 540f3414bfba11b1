"""The official Python SDK client in front of Scopegate: lists tools and calls them with an
agent token, then prints what it saw as JSON.  usage: mcp_client.py URL TOKEN MODE
(MODE: legacy = initialize handshake, auto = the current stateless revision when offered)."""
import asyncio
import json
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def main(url, token, mode):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with Client(streamable_http_client(url, http_client=http), mode=mode) as c:
        tools = await c.list_tools()
        who = await c.call_tool("whoami", {})
        hdrs = await c.call_tool("headers", {})
        try:
            denied = await c.call_tool("write_file", {"path": "/tmp/x"})
            refused = {"is_error": bool(getattr(denied, "is_error", False) or getattr(denied, "isError", False)), "text": text(denied)}
        except Exception as e:  # a JSON-RPC error from the gateway
            refused = {"is_error": True, "text": str(e)}
        print(json.dumps({
            "protocol": c.protocol_version,
            "tools": sorted(t.name for t in tools.tools),
            "whoami": text(who),
            "headers": json.loads(text(hdrs)),
            "write_file": refused,
        }))


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except Exception as e:  # report, for the test's message
        print(json.dumps({"error": repr(e)}))
        sys.exit(1)
