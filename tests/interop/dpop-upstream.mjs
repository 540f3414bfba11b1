// A DPoP-protected MCP resource server (RFC 9449 §7) for Scopegate's interop tests: the
// official TypeScript MCP SDK (stateless Streamable HTTP) behind a check that accepts only
// `Authorization: DPoP <token>` with a valid proof. The proof is verified with `jose` (the
// library oidc-provider itself uses): `typ` dpop+jwt, ES256, signature under the embedded
// public JWK, `htm`, `htu`, `ath`, `iat` within 60 s, `jti` never seen before, and a `nonce`
// this server issued (RFC 9449 §9: a missing or stale one gets 401 `use_dpop_nonce` with a
// fresh `DPoP-Nonce`). The token is introspected at the authorization server (RFC 7662) and
// its `cnf.jkt` must be the proof key's thumbprint. 127.0.0.1 only.
//
//   GET  /test/stats         counts: ok, nonce_challenges, bearer_refused, failures (reasons)
//   POST /test/rotate-nonce  issue a new nonce; the old one is refused from now on
//   POST /test/always-challenge  from now on every request gets a new nonce challenge
//
// env: PORT, ISSUER, CLIENT_ID, CLIENT_SECRET
import http from 'node:http';
import crypto from 'node:crypto';
import { calculateJwkThumbprint, EmbeddedJWK, jwtVerify } from 'jose';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const port = Number(process.env.PORT);
const issuer = process.env.ISSUER;
const basic = Buffer.from(`${process.env.CLIENT_ID}:${process.env.CLIENT_SECRET}`).toString('base64');
const stats = { requests: 0, ok: 0, nonce_challenges: 0, bearer_refused: 0, failures: [] };
let nonce = crypto.randomBytes(16).toString('base64url');
let alwaysChallenge = false;
const seenJti = new Set();

function refuse(res, error, description) {
  res.statusCode = 401;
  res.setHeader('www-authenticate', `DPoP error="${error}", algs="ES256"`);
  if (error === 'use_dpop_nonce') res.setHeader('dpop-nonce', nonce);
  res.end(JSON.stringify({ error, error_description: description }));
}

// Returns the introspection result, or answers the request itself and returns null.
async function authenticate(req, res) {
  const auth = req.headers.authorization || '';
  if (!auth.startsWith('DPoP ')) {
    // A DPoP-bound token presented as Bearer (or anything else) is refused (RFC 9449 §7.2).
    stats.bearer_refused += 1;
    res.statusCode = 401;
    res.setHeader('www-authenticate', 'DPoP algs="ES256"');
    res.end('{"error":"invalid_token"}');
    return null;
  }
  const token = auth.slice(5);
  const proof = req.headers.dpop;
  try {
    if (typeof proof !== 'string') throw new Error('no DPoP header');
    const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, {
      typ: 'dpop+jwt',
      algorithms: ['ES256'],
    });
    if (protectedHeader.jwk.d !== undefined) throw new Error('private key in the proof');
    if (payload.htm !== req.method) throw new Error(`htm ${payload.htm}`);
    const expected = `http://127.0.0.1:${port}${req.url.split('?')[0]}`;
    if (payload.htu !== expected) throw new Error(`htu ${payload.htu} != ${expected}`);
    const ath = crypto.createHash('sha256').update(token).digest('base64url');
    if (payload.ath !== ath) throw new Error('ath mismatch');
    if (typeof payload.iat !== 'number' || Math.abs(Date.now() / 1000 - payload.iat) > 60) throw new Error('iat');
    if (typeof payload.jti !== 'string' || seenJti.has(payload.jti)) throw new Error('jti replayed');
    seenJti.add(payload.jti);
    if (alwaysChallenge) nonce = crypto.randomBytes(16).toString('base64url');
    if (payload.nonce !== nonce) {
      stats.nonce_challenges += 1;
      refuse(res, 'use_dpop_nonce', 'Resource server requires a current nonce in the DPoP proof');
      return null;
    }
    const r = await fetch(`${issuer}/token/introspection`, {
      method: 'POST',
      headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    const info = await r.json();
    if (!info.active) throw new Error('token inactive');
    const jkt = await calculateJwkThumbprint(protectedHeader.jwk);
    if (!info.cnf || info.cnf.jkt !== jkt) throw new Error(`cnf.jkt ${info.cnf && info.cnf.jkt} != ${jkt}`);
    return { ...info, jkt };
  } catch (e) {
    stats.failures.push(String(e && e.message));
    refuse(res, 'invalid_dpop_proof', 'the DPoP proof was not accepted');
    return null;
  }
}

function mcpServer(who) {
  const server = new Server({ name: 'dpop-upstream', version: '1.0.0' }, { capabilities: { tools: {} } });
  server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: [{ name: 'whoami', description: 'Who the token belongs to', inputSchema: { type: 'object', properties: {} } }],
  }));
  server.setRequestHandler(CallToolRequestSchema, async () => ({
    content: [{ type: 'text', text: `${who.sub} jkt=${who.jkt} token_type=${who.token_type}` }],
  }));
  return server;
}

const httpServer = http.createServer(async (req, res) => {
  try {
    if (req.url === '/test/stats') {
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify(stats));
    }
    if (req.url === '/test/always-challenge' && req.method === 'POST') {
      alwaysChallenge = true;
      return res.end('ok');
    }
    if (req.url === '/test/rotate-nonce' && req.method === 'POST') {
      nonce = crypto.randomBytes(16).toString('base64url');
      return res.end('ok');
    }
    stats.requests += 1;
    let body = '';
    for await (const chunk of req) body += chunk;
    const who = await authenticate(req, res);
    if (!who) return;
    stats.ok += 1;
    // RFC 9449 §9: a server may hand out the next nonce with any answer.
    res.setHeader('dpop-nonce', nonce);
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    await mcpServer(who).connect(transport);
    await transport.handleRequest(req, res, body ? JSON.parse(body) : undefined);
  } catch (e) {
    res.statusCode = 500;
    res.end(String(e && e.message));
  }
});
httpServer.listen(port, '127.0.0.1', () => console.log(`dpop upstream ready on ${port}`));
