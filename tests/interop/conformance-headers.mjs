// Preload for the @modelcontextprotocol/conformance CLI (`node --import ./conformance-headers.mjs
// node_modules/.bin/conformance server --url ...`): its `server` command has no option to send
// extra HTTP headers, and Scopegate needs the agent's `Authorization: Bearer sga_...` on every
// request. This adds the headers in $CONFORMANCE_HEADERS (a JSON object) to every HTTP request
// the process makes: through undici's global dispatcher, which both Node's built-in `fetch` (used
// by the SDK client) and the `undici` package (used by some raw-request scenarios) go through,
// and through `http.request` (used by the others). A header the request already carries is left
// as it is. Nothing else about the suite changes.
import http from 'node:http';
import { Agent, setGlobalDispatcher } from 'undici';

const extra = Object.entries(JSON.parse(process.env.CONFORMANCE_HEADERS || '{}'));

function withExtra(headers) {
  if (extra.length === 0) return headers;
  const missing = (has) => extra.filter(([k]) => !has(k.toLowerCase()));
  if (headers == null) return Object.fromEntries(extra);
  if (Array.isArray(headers)) {
    // Either [k, v, k, v, ...] or [[k, v], ...].
    const flat = headers.length > 0 && Array.isArray(headers[0]) ? headers.flat() : [...headers];
    const names = new Set(flat.filter((_, i) => i % 2 === 0).map((k) => String(k).toLowerCase()));
    return [...flat, ...missing((k) => names.has(k)).flat()];
  }
  if (typeof headers[Symbol.iterator] === 'function' && typeof headers !== 'string') {
    return withExtra([...headers]);
  }
  const names = new Set(Object.keys(headers).map((k) => k.toLowerCase()));
  return { ...headers, ...Object.fromEntries(missing((k) => names.has(k))) };
}

setGlobalDispatcher(
  new Agent().compose((dispatch) => (opts, handler) => dispatch({ ...opts, headers: withExtra(opts.headers) }, handler)),
);

// http.request(options[, cb]) and http.request(url, options[, cb]).
const request = http.request;
http.request = function (...args) {
  const i = args.findIndex((a) => a && typeof a === 'object' && !(a instanceof URL));
  if (i >= 0) {
    args[i] = { ...args[i], headers: withExtra(args[i].headers) };
  } else {
    const cb = typeof args[args.length - 1] === 'function' ? [args.pop()] : [];
    args.push({ headers: withExtra(undefined) }, ...cb);
  }
  return request.apply(this, args);
};
