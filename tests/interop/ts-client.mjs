// The official TypeScript MCP SDK client in front of Scopegate: lists tools and calls them with
// an agent token, then prints what it saw as JSON.  usage: node ts-client.mjs URL TOKEN
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, token] = process.argv.slice(2);
const text = (r) => (r.content || []).map((c) => c.text || '').join('');
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: 'scopegate-interop', version: '1.0.0' });
try {
  await client.connect(transport);
  const tools = await client.listTools();
  const who = await client.callTool({ name: 'whoami', arguments: {} });
  const hdrs = await client.callTool({ name: 'headers', arguments: {} });
  let refused;
  try {
    const r = await client.callTool({ name: 'write_file', arguments: { path: '/tmp/x' } });
    refused = { is_error: Boolean(r.isError), text: text(r) };
  } catch (e) {
    refused = { is_error: true, text: String(e) };
  }
  console.log(JSON.stringify({
    protocol: transport.protocolVersion || null,
    session: Boolean(transport.sessionId),
    tools: tools.tools.map((t) => t.name).sort(),
    whoami: text(who),
    headers: JSON.parse(text(hdrs)),
    write_file: refused,
  }));
  await client.close();
} catch (e) {
  console.log(JSON.stringify({ error: String(e) }));
  process.exit(1);
}
