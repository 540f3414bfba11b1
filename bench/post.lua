-- The request every proxy benchmark sends with wrk: an MCP tools/call of the bench upstream's
-- echo tool. The credential header is HDR_NAME: HDR_VALUE (default Authorization: $AUTH).
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers[os.getenv("HDR_NAME") or "Authorization"] = os.getenv("HDR_VALUE") or os.getenv("AUTH")
