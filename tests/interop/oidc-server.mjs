// A real OAuth 2.1 / OIDC authorization server (npm oidc-provider) for Scopegate's interop
// tests, on 127.0.0.1 only. PKCE is required for every client, refresh tokens rotate (reuse is
// detected by the library), revocation and introspection are on, RFC 9207 `iss` is sent.
//
// The login and consent interactions are completed by this script as the test directs:
//   POST /test/mode {"grant": ["files.read"]}  grant only these scopes
//   POST /test/mode {"deny": true}            the user denies
//   POST /test/mode {"token_unavailable": true}  the token endpoint answers 503 (Retry-After: 1)
//   POST /test/revoke-grants                  the user revokes the app at the provider
// DPOP=1 turns on DPoP (RFC 9449) with nonces required at the token endpoint; the stats then
// count token requests carrying a proof, `use_dpop_nonce` answers, DPoP-bound tokens issued,
// and authorization requests that carried `dpop_jkt`.
// and GET /test/stats counts token-endpoint requests, so tests can prove none was made, and
// names the scopes the last consent prompt asked for.
//
// env: PORT, REDIRECT_URI, CLIENT_SECRET, ACCESS_TTL (seconds), NO_S256 (unused here).
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const mode = { grant: null, deny: false, token_unavailable: false };
const grants = [];
const stats = {
  token_requests: 0, revocations: 0, introspections: 0, consent_asked: [], unavailable_answers: 0,
  dpop_token_requests: 0, dpop_nonce_errors: 0, dpop_bound_tokens: 0, auth_with_dpop_jkt: 0, grant_errors: [],
};
const dpop = process.env.DPOP === '1';

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'scopegate',
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: [process.env.REDIRECT_URI],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'files.read', 'files.write'],
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: true },
    // v9 enables DPoP by default; the tests choose.
    dPoP: dpop
      ? { enabled: true, nonceSecret: crypto.randomBytes(32), requireNonce: () => true }
      : { enabled: false },
  },
  rotateRefreshToken: true,
  issueRefreshToken: async () => true,
  ttl: { AccessToken: Number(process.env.ACCESS_TTL || 3600), AuthorizationCode: 60, Interaction: 600, Grant: 3600, Session: 3600, RefreshToken: 86400 },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  cookies: { keys: ['interop-cookie-key-not-secret'] },
});
provider.proxy = false;
provider.on('grant.error', (ctx, err) => {
  stats.grant_errors.push(err.error);
  if (err.error === 'use_dpop_nonce') stats.dpop_nonce_errors += 1;
});
provider.on('access_token.saved', (token) => {
  if (token['x5t#S256'] === undefined && token.jkt) stats.dpop_bound_tokens += 1;
});

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;
  if (prompt.name === 'login') {
    return provider.interactionFinished(req, res, { login: { accountId: 'alice' } }, { mergeWithLastSubmission: false });
  }
  if (mode.deny) {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'The user <b>denied</b> access' }, { mergeWithLastSubmission: false });
  }
  const asked = String(params.scope || '').split(' ').filter(Boolean);
  stats.consent_asked = asked; // what the consent prompt asked the user for
  const granted = mode.grant ? asked.filter((s) => mode.grant.includes(s)) : asked;
  const grant = details.grantId ? await provider.Grant.find(details.grantId) : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
  grant.addOIDCScope(granted.join(' '));
  const rejected = asked.filter((s) => !granted.includes(s));
  if (rejected.length) grant.rejectOIDCScope(rejected.join(' '));
  const grantId = await grant.save();
  grants.push(grantId);
  return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    if (req.url === '/test/stats') {
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify(stats));
    }
    if (req.url === '/test/mode' && req.method === 'POST') {
      let body = '';
      for await (const chunk of req) body += chunk;
      const m = JSON.parse(body || '{}');
      mode.grant = m.grant ?? null;
      mode.deny = Boolean(m.deny);
      mode.token_unavailable = Boolean(m.token_unavailable);
      return res.end('ok');
    }
    if (req.url === '/test/revoke-grants' && req.method === 'POST') {
      for (const id of grants.splice(0)) {
        const g = await provider.Grant.find(id);
        if (g) await g.destroy();
      }
      return res.end('ok');
    }
    if (req.url.startsWith('/interaction/')) return await interaction(req, res);
    const path = req.url.split('?')[0];
    if (path === '/auth') stats.consent_asked = null; // each authorization request starts afresh
    if (path === '/token') stats.token_requests += 1;
    if (path === '/token' && req.headers.dpop) stats.dpop_token_requests += 1;
    if (path === '/auth' && new URL(req.url, issuer).searchParams.get('dpop_jkt')) stats.auth_with_dpop_jkt += 1;
    if (path === '/token' && mode.token_unavailable) {
      stats.unavailable_answers += 1;
      res.statusCode = 503;
      res.setHeader('retry-after', '1');
      return res.end('{"error":"temporarily_unavailable"}');
    }
    if (path === '/token/revocation') stats.revocations += 1;
    if (path === '/token/introspection') stats.introspections += 1;
    return callback(req, res);
  } catch (e) {
    res.statusCode = 500;
    res.end(String(e && e.message));
  }
});
server.listen(port, '127.0.0.1', () => console.log(`oidc-provider ready on ${issuer}`));
