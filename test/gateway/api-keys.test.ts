import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { ATTR, HEADER } from '../../otel/wire-names';
import { generateApiKey, hashApiKey } from '../../src/consumers';
import type { ProblemBody } from '../../src/middleware/errors';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { sendRaw as send, type RawReply as Reply, type RecordedRequest } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';
import { waitFor as waitUntil } from '../helpers/wait';


/** The request head written byte for byte (header values Node's client refuses to send), status line read back. */
function sendRaw(origin: string, head: Buffer): Promise<number> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => socket.write(head));
    const chunks: Buffer[] = [];
    socket.setTimeout(5000, () => socket.destroy(new Error('no response within 5 s')));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const status = /^HTTP\/1\.1 (\d{3})/.exec(text);
      if (status) resolve(Number(status[1]));
      else reject(new Error(`no HTTP response in ${JSON.stringify(text.slice(0, 100))}`));
    });
  });
}

const problemOf = (reply: Reply) => JSON.parse(reply.text) as ProblemBody;

const ACME_KEY = generateApiKey();
const ACME_SECOND_KEY = generateApiKey();
const REVOKED_KEY = generateApiKey();
const GLOBEX_KEY = generateApiKey();
const ROOT_KEY = generateApiKey();
const METERED_KEY = generateApiKey();
const BURST_KEY = generateApiKey();

const consumers = [
  { id: 'acme', role: 'partner', keys: [{ hash: hashApiKey(ACME_KEY) }, { hash: hashApiKey(ACME_SECOND_KEY), note: 'rotation' }, { hash: hashApiKey(REVOKED_KEY), revoked: true }] },
  { id: 'globex', role: 'partner', keys: [{ hash: hashApiKey(GLOBEX_KEY) }] },
  { id: 'root-ops', role: 'admin', keys: [{ hash: hashApiKey(ROOT_KEY) }] },
  { id: 'metered', role: 'partner', keys: [{ hash: hashApiKey(METERED_KEY) }], rateLimit: { max: 1, windowMs: 60_000 } },
  // A short window of its own, on a route whose per-consumer window is long.
  { id: 'burst', role: 'partner', keys: [{ hash: hashApiKey(BURST_KEY) }], rateLimit: { max: 1, windowMs: 1000 } },
];

/** Routes to user-service's `/health`, which answers 200 whoever calls: what matters is what reached it. */
const probe = (name: string, prefix: string, extra: Record<string, unknown> = {}) => ({ name, prefix, service: 'users', upstreamPath: '/health', ...extra });

const routes = [
  ...(shippedConfigFile().routes as unknown[]),
  probe('either', '/api/either'),
  probe('keys-only', '/api/keys-only', { auth: { methods: ['apiKey'] } }),
  probe('jwt-only', '/api/jwt-only', { auth: { methods: ['jwt'] } }),
  probe('open', '/api/open', { auth: 'public' }),
  probe('admin-only', '/api/admin-only', { roles: ['admin'] }),
  probe('passes-authorization', '/api/passes-authorization', { forwardAuthorization: true }),
  probe('open-passes-authorization', '/api/open-passes-authorization', { auth: 'public', forwardAuthorization: true }),
  probe('per-consumer', '/api/per-consumer', { rateLimit: { max: 2, windowMs: 60_000, by: 'consumer' } }),
  probe('per-user', '/api/per-user', { rateLimit: { max: 2, windowMs: 60_000, by: 'user' } }),
  probe('per-ip', '/api/per-ip', { rateLimit: { max: 2, windowMs: 60_000 } }),
  probe('per-consumer-long', '/api/per-consumer-long', { rateLimit: { max: 2, windowMs: 60_000, by: 'consumer' } }),
];

describe('API keys and consumers', () => {
  let stack: TestStack;
  let tracing: InMemoryTracing;
  let url: string;
  let bob: string;
  let rowCount = 0;
  const nextRequestId = () => `api-key-${++rowCount}`;
  const seenWithRequestId = (requestId: string): RecordedRequest[] => stack.serviceRequests().filter((request) => request.headers[HEADER.requestId] === requestId);

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    // Behind one trusted proxy, so a test can speak for several client addresses (X-Forwarded-For).
    stack = await startStack({ tracer: tracing.tracer, env: { RATE_LIMIT_MAX: '100000', TRUST_PROXY: 'true' }, overrides: { routes, consumers, trustedProxies: ['127.0.0.1'] } });
    url = stack.gateway.url;
    bob = await login(url, 'bob@example.com', 'builder');
  });
  afterAll(() => stack.close());

  // README, "API keys and consumers": the shipped order-service serves a consumer as it serves a user.
  it('serves the README example: GET /api/orders with X-API-Key is 200, the consumer\'s own orders', async () => {
    const created = await fetch(`${url}/api/orders`, { method: 'POST', headers: { 'X-API-Key': ACME_KEY, 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ sku: 'anvil', quantity: 1 }] }) });
    expect(created.status).toBe(201);
    const order = (await created.json()) as { id: string; consumerId: string };
    expect(order.consumerId).toBe('acme');
    const listed = await fetch(`${url}/api/orders`, { headers: { 'X-API-Key': ACME_KEY } });
    expect(listed.status).toBe(200);
    expect(((await listed.json()) as { id: string }[]).map((each) => each.id)).toContain(order.id);
    // Another consumer's key lists its own orders, not acme's.
    const other = await fetch(`${url}/api/orders`, { headers: { 'X-API-Key': GLOBEX_KEY } });
    expect(((await other.json()) as { id: string }[]).map((each) => each.id)).not.toContain(order.id);
  });

  describe('a valid key', () => {
    it.each([
      { desc: 'in X-API-Key', headers: () => ({ 'X-API-Key': ACME_KEY }) },
      { desc: 'as Authorization: ApiKey', headers: () => ({ authorization: `ApiKey ${ACME_KEY}` }) },
      { desc: 'as Authorization with the scheme in lower case (schemes are case-insensitive, RFC 9110 11.1)', headers: () => ({ authorization: `apikey ${ACME_KEY}` }) },
      { desc: 'as Authorization with the scheme in upper case', headers: () => ({ authorization: `APIKEY ${ACME_KEY}` }) },
      // It was refused: RFC 9110 11.4 allows any number of spaces (1*SP) after the scheme.
      { desc: 'as Authorization with two spaces after the scheme', headers: () => ({ authorization: `ApiKey  ${ACME_KEY}` }) },
      { desc: 'as Authorization with four spaces after a lower-case scheme', headers: () => ({ authorization: `apikey    ${ACME_KEY}` }) },
      { desc: 'the consumer’s second key (rotation)', headers: () => ({ 'X-API-Key': ACME_SECOND_KEY }) },
    ])('$desc reaches the service as X-Consumer-Id, the key itself never', async ({ headers }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/either', { ...headers(), [HEADER.requestId]: requestId });
      expect(reply.status).toBe(200);
      const [seen] = seenWithRequestId(requestId);
      expect(seen?.headers[HEADER.consumerId]).toBe('acme');
      expect(seen?.headers[HEADER.apiKey]).toBeUndefined();
      expect(seen?.headers.authorization).toBeUndefined();
      // A consumer is not a user: no user identity is invented for it.
      expect(seen?.headers[HEADER.userId]).toBeUndefined();
      expect(JSON.stringify(seen?.headers)).not.toContain(ACME_KEY);
    });

    it('is accepted on a route that takes API keys only', async () => {
      expect((await send(url, '/api/keys-only', { 'X-API-Key': GLOBEX_KEY })).status).toBe(200);
    });

    it('puts the consumer on the server span and in the access log line', async () => {
      const requestId = nextRequestId();
      await send(url, '/api/either', { 'X-API-Key': GLOBEX_KEY, [HEADER.requestId]: requestId });
      const line = await waitFor(() => stack.gatewayLogs.find((entry) => entry.request_id === requestId && entry.message === 'request completed'));
      expect(line).toMatchObject({ consumer_id: 'globex', user_id: null, route: 'either', status: 200 });
      const span = await waitFor(() => tracing.spans().find((candidate) => candidate.attributes[ATTR.requestId] === requestId));
      expect(span.attributes[ATTR.consumerId]).toBe('globex');
    });

    it('carries the consumer’s role into route roles: a partner gets 403, an admin consumer passes', async () => {
      const partner = await send(url, '/api/admin-only', { 'X-API-Key': ACME_KEY });
      expect(partner.status).toBe(403);
      expect(problemOf(partner).code).toBe('forbidden');
      // The credential's own scheme, with why: not a bad key, a key without the role (RFC 6750 3.1's insufficient_scope).
      expect(partner.headers['www-authenticate']).toMatch(/^ApiKey realm="koa-gateway", error="insufficient_scope", error_description="[^"]+"$/);
      expect((await send(url, '/api/admin-only', { 'X-API-Key': ROOT_KEY })).status).toBe(200);
    });

    // A 401 must carry a challenge (RFC 9110 11.6.1); the users-only services answered a consumer's request without one.
    it.each([
      { desc: 'user-service', path: '/api/users/1' },
      { desc: 'notification-service', path: '/api/notifications' },
    ])('reaches $desc, which serves users only, and is answered 401 missing_identity with a Bearer challenge', async ({ path }) => {
      const reply = await send(url, path, { 'X-API-Key': ACME_KEY });
      expect(reply.status).toBe(401);
      expect(problemOf(reply).code).toBe('missing_identity');
      expect(reply.headers['www-authenticate']).toBe('Bearer realm="koa-gateway"');
    });

    it('is not forwarded in Authorization even on a route that forwards Authorization (bearer tokens still are)', async () => {
      const withKey = nextRequestId();
      expect((await send(url, '/api/passes-authorization', { authorization: `ApiKey ${ACME_KEY}`, [HEADER.requestId]: withKey })).status).toBe(200);
      expect(seenWithRequestId(withKey)[0]?.headers.authorization).toBeUndefined();
      const withToken = nextRequestId();
      expect((await send(url, '/api/passes-authorization', { authorization: `Bearer ${bob}`, [HEADER.requestId]: withToken })).status).toBe(200);
      expect(seenWithRequestId(withToken)[0]?.headers.authorization).toBe(`Bearer ${bob}`);
    });

    // A public route authenticates nothing, and a key sent under another scheme (or none) went on as sent.
    it.each([
      { desc: 'under the Bearer scheme', authorization: () => `Bearer ${ACME_KEY}` },
      { desc: 'bare', authorization: () => ACME_KEY },
      { desc: 'under a made-up scheme', authorization: () => `Token ${GLOBEX_KEY}` },
    ])('is not forwarded $desc on a public route that forwards Authorization', async ({ authorization }) => {
      const requestId = nextRequestId();
      expect((await send(url, '/api/open-passes-authorization', { authorization: authorization(), [HEADER.requestId]: requestId })).status).toBe(200);
      const [seen] = seenWithRequestId(requestId);
      expect(seen).toBeDefined();
      expect(seen!.headers.authorization).toBeUndefined();
      expect(JSON.stringify(seen!.headers)).not.toMatch(/kgw_/);
      const tokenId = nextRequestId();
      expect((await send(url, '/api/open-passes-authorization', { authorization: `Bearer ${bob}`, [HEADER.requestId]: tokenId })).status).toBe(200);
      expect(seenWithRequestId(tokenId)[0]?.headers.authorization).toBe(`Bearer ${bob}`);
    });

    // Node keeps the first Authorization line: an empty one made the field look absent, so neither the one-field
    // rule nor the one-credential rule looked at the line after it, and the X-API-Key beside them was checked alone.
    it.each([
      { desc: 'another key in the ApiKey scheme', second: () => `ApiKey ${GLOBEX_KEY}` },
      { desc: 'a bearer token', second: () => `Bearer ${bob}` },
    ])('refuses an X-API-Key beside an empty Authorization line and $desc (400), reaching no service', async ({ second }) => {
      const requestId = nextRequestId();
      const head = Buffer.from(`GET /api/either HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\nAuthorization: \r\nAuthorization: ${second()}\r\nX-API-Key: ${ACME_KEY}\r\n\r\n`, 'latin1');
      expect(await sendRaw(url, head)).toBe(400);
      expect(seenWithRequestId(requestId)).toEqual([]);
    });
  });

  describe('refused keys', () => {
    it.each([
      { desc: 'an unknown key of the right shape', key: () => generateApiKey(), rejection: 'unknown' },
      { desc: 'a revoked key', key: () => REVOKED_KEY, rejection: 'revoked' },
      { desc: 'a valid key in another case', key: () => ACME_KEY.toUpperCase(), rejection: 'unknown' },
      { desc: 'a valid key with one character changed', key: () => ACME_KEY.slice(0, -1) + (ACME_KEY.endsWith('A') ? 'B' : 'A'), rejection: 'unknown' },
      { desc: 'the stored hash instead of the key', key: () => hashApiKey(ACME_KEY).slice('sha256:'.length), rejection: 'unknown' },
      { desc: 'a valid key with a suffix', key: () => `${ACME_KEY}x`, rejection: 'unknown' },
      { desc: 'a 10 KB key', key: () => 'k'.repeat(10 * 1024), rejection: 'malformed' },
      { desc: 'a key of spaces and commas (two X-API-Key headers joined)', key: () => `${ACME_KEY}, ${GLOBEX_KEY}`, rejection: 'malformed' },
      { desc: 'a short key', key: () => 'kgw_short', rejection: 'malformed' },
    ])('answers $desc with 401 invalid_api_key and an ApiKey challenge, reaching no service', async ({ key, rejection }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/either', { 'X-API-Key': key(), [HEADER.requestId]: requestId });
      expect(reply.status).toBe(401);
      expect(problemOf(reply)).toMatchObject({ code: 'invalid_api_key', detail: 'The API key is not valid.' });
      expect(reply.headers['www-authenticate']).toBe('Bearer realm="koa-gateway", ApiKey realm="koa-gateway", error="invalid_key", error_description="invalid key"');
      expect(seenWithRequestId(requestId)).toEqual([]);
      // The client hears one answer; the span says which refusal it was.
      const span = await waitFor(() => tracing.spans().find((candidate) => candidate.attributes[ATTR.requestId] === requestId));
      expect(span.attributes[ATTR.apiKeyRejection]).toBe(rejection);
    });

    it('answers a revoked key exactly as an unknown one (no oracle for which keys existed)', async () => {
      const revoked = await send(url, '/api/either', { 'X-API-Key': REVOKED_KEY });
      const unknown = await send(url, '/api/either', { 'X-API-Key': generateApiKey() });
      const comparable = (reply: Reply) => ({ ...problemOf(reply), requestId: undefined, challenge: reply.headers['www-authenticate'] });
      expect(comparable(revoked)).toEqual(comparable(unknown));
    });

    it.each([
      { desc: 'non-ASCII bytes', value: Buffer.from('kgw_ÄÖÜäöüß€漢字_0123456789abcdef', 'utf8'), status: 401 },
      { desc: 'latin-1 bytes', value: Buffer.from('kgw_\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9', 'latin1'), status: 401 },
      { desc: 'a bare CR inside the value', value: Buffer.from(`${ACME_KEY.slice(0, 10)}\r${ACME_KEY.slice(10)}`, 'latin1'), status: 400 },
      { desc: 'a NUL inside the value', value: Buffer.from(`${ACME_KEY.slice(0, 10)}\0${ACME_KEY.slice(10)}`, 'latin1'), status: 400 },
      { desc: 'a valid key folded onto a second line (obs-fold)', value: Buffer.from(`${ACME_KEY.slice(0, 10)}\r\n ${ACME_KEY.slice(10)}`, 'latin1'), status: 400 },
    ])('refuses an X-API-Key with $desc ($status), never as a valid key', async ({ value, status }) => {
      const requestId = nextRequestId();
      const head = Buffer.concat([Buffer.from(`GET /api/either HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\nX-API-Key: `), value, Buffer.from('\r\n\r\n')]);
      expect(await sendRaw(url, head)).toBe(status);
      expect(seenWithRequestId(requestId)).toEqual([]);
    });

    it.each([
      { desc: 'a tab', authorization: () => `ApiKey\t${ACME_KEY}` },
      { desc: 'a space and a tab', authorization: () => `ApiKey \t${ACME_KEY}` },
      { desc: 'nothing', authorization: () => `ApiKey${ACME_KEY}` },
    ])('refuses a valid key after $desc in place of the spaces (RFC 9110 11.4: 1*SP), reaching no service', async ({ authorization }) => {
      const requestId = nextRequestId();
      expect((await send(url, '/api/either', { authorization: authorization(), [HEADER.requestId]: requestId })).status).toBe(401);
      expect(seenWithRequestId(requestId)).toEqual([]);
    });

    it('answers a key on a JWT-only route with 401 and a Bearer challenge alone', async () => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/jwt-only', { 'X-API-Key': ACME_KEY, [HEADER.requestId]: requestId });
      expect(reply.status).toBe(401);
      expect(problemOf(reply).code).toBe('missing_token');
      expect(reply.headers['www-authenticate']).toBe('Bearer realm="koa-gateway"');
      expect(seenWithRequestId(requestId)).toEqual([]);
      // Bearer tokens still work there.
      expect((await send(url, '/api/jwt-only', { authorization: `Bearer ${bob}` })).status).toBe(200);
    });

    it('answers a bearer token on an API-key-only route with 401 and an ApiKey challenge alone', async () => {
      const reply = await send(url, '/api/keys-only', { authorization: `Bearer ${bob}` });
      expect(reply.status).toBe(401);
      expect(problemOf(reply).code).toBe('missing_token');
      expect(reply.headers['www-authenticate']).toBe('ApiKey realm="koa-gateway"');
    });

    it('challenges for both methods when no credential came, on a route that takes both', async () => {
      const reply = await send(url, '/api/either');
      expect(reply.status).toBe(401);
      expect(reply.headers['www-authenticate']).toBe('Bearer realm="koa-gateway", ApiKey realm="koa-gateway"');
    });

    it('refuses two credentials at once (400): the gateway and a service must never read different ones', async () => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/either', { 'X-API-Key': ACME_KEY, authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId });
      expect(reply.status).toBe(400);
      expect(seenWithRequestId(requestId)).toEqual([]);
    });
  });

  describe('forged consumer headers', () => {
    it.each([
      { desc: 'on a public route', path: '/api/open', credential: (): Record<string, string> => ({}), expected: undefined },
      { desc: 'with a bearer token', path: '/api/either', credential: (): Record<string, string> => ({ authorization: `Bearer ${bob}` }), expected: undefined },
      { desc: 'with another consumer’s key', path: '/api/either', credential: (): Record<string, string> => ({ 'X-API-Key': GLOBEX_KEY }), expected: 'globex' },
    ])('strips a client X-Consumer-Id (and x_consumer_id, X-Consumer-Role) $desc', async ({ path, credential, expected }) => {
      const requestId = nextRequestId();
      const reply = await send(url, path, { ...credential(), 'X-Consumer-Id': 'acme', x_consumer_id: 'acme', 'X-Consumer-Role': 'admin', [HEADER.requestId]: requestId });
      expect(reply.status).toBe(200);
      // The one request the service saw: with none recorded every "stripped" below held for nothing.
      expect(seenWithRequestId(requestId)).toHaveLength(1);
      const [seen] = seenWithRequestId(requestId);
      expect(seen!.headers[HEADER.consumerId]).toBe(expected);
      expect(seen!.headers['x-consumer-role']).toBeUndefined();
      expect(seen!.headers.x_consumer_id).toBeUndefined();
    });

    it('never forwards X-API-Key, even on a public route', async () => {
      const requestId = nextRequestId();
      expect((await send(url, '/api/open', { 'X-API-Key': ACME_KEY, [HEADER.requestId]: requestId })).status).toBe(200);
      expect(seenWithRequestId(requestId)).toHaveLength(1);
      expect(seenWithRequestId(requestId)[0]!.headers[HEADER.apiKey]).toBeUndefined();
    });
  });

  describe('rate limits by caller', () => {
    const from = (address: string, headers: Record<string, string>) => ({ ...headers, 'X-Forwarded-For': address });
    const statuses = async (path: string, requests: Record<string, string>[]) => {
      const result: number[] = [];
      for (const headers of requests) result.push((await send(url, path, headers)).status);
      return result;
    };

    it('by consumer: one consumer on two addresses is limited once, a neighbour on its address is not', async () => {
      const acme = { 'X-API-Key': ACME_KEY };
      expect(await statuses('/api/per-consumer', [from('198.51.100.1', acme), from('198.51.100.2', acme), from('198.51.100.3', acme)])).toEqual([200, 200, 429]);
      // Globex shares Acme's first address (one NAT): its own bucket.
      expect(await statuses('/api/per-consumer', [from('198.51.100.1', { 'X-API-Key': GLOBEX_KEY })])).toEqual([200]);
    });

    it('by user: one user on two addresses is limited once', async () => {
      const token = { authorization: `Bearer ${bob}` };
      expect(await statuses('/api/per-user', [from('203.0.113.1', token), from('203.0.113.2', token), from('203.0.113.3', token)])).toEqual([200, 200, 429]);
    });

    it('by ip (the default): two consumers behind one address share its bucket', async () => {
      expect(await statuses('/api/per-ip', [from('192.0.2.50', { 'X-API-Key': ACME_KEY }), from('192.0.2.50', { 'X-API-Key': GLOBEX_KEY }), from('192.0.2.50', { 'X-API-Key': ROOT_KEY })])).toEqual([200, 200, 429]);
    });

    it('counts failed authentications on a caller-limited route per address, so key guessing stays limited', async () => {
      const guess = () => from('192.0.2.77', { 'X-API-Key': generateApiKey() });
      expect(await statuses('/api/per-consumer', [guess(), guess(), guess()])).toEqual([401, 401, 429]);
      // Over its budget the address is refused before any key is checked, a right one too (a 200 would tell the
      // guesser it found one), until its window ends; consumers calling from other addresses are not limited.
      expect(await statuses('/api/per-consumer', [from('192.0.2.77', { 'X-API-Key': ROOT_KEY })])).toEqual([429]);
      expect(await statuses('/api/per-consumer', [from('192.0.2.78', { 'X-API-Key': ROOT_KEY })])).toEqual([200]);
    });

    // Counted first, the route's window was spent by requests the consumer's own limit refused: after its 1 s window
    // the consumer was refused for the route's minute.
    it("spends no route window on a request the consumer's own limit refuses", async () => {
      const burst = { 'X-API-Key': BURST_KEY };
      expect((await send(url, '/api/per-consumer-long', burst)).status).toBe(200);
      const refusals: string[] = [];
      // Until the consumer's 1 s window lets one more through (bounded by waitFor's 5 s).
      await waitUntil(async () => {
        const reply = await send(url, '/api/per-consumer-long', burst);
        if (reply.status === 429) refusals.push(String(reply.headers['ratelimit-policy']));
        return reply.status === 200;
      }, "the consumer's next window", 5000);
      expect(refusals.length).toBeGreaterThan(0);
      expect(refusals.every((policy) => policy.startsWith('"consumer-burst";q=1;w=1'))).toBe(true);
      // The route's two are spent now, by the two requests served.
      expect((await send(url, '/api/per-consumer-long', burst)).status).toBe(429);
    });

    it('applies a consumer’s own limit on every route, with RateLimit-Policy naming it', async () => {
      const first = await send(url, '/api/either', { 'X-API-Key': METERED_KEY });
      expect(first.status).toBe(200);
      // Listed first, before the address's default limit: the most restrictive of the two.
      expect(first.headers['ratelimit-policy']).toBe('"consumer-metered";q=1;w=60, "default";q=100000;w=60');
      const second = await send(url, '/api/keys-only', { 'X-API-Key': METERED_KEY });
      expect(second.status).toBe(429);
      expect(problemOf(second).code).toBe('rate_limited');
      // Others are not affected.
      expect((await send(url, '/api/keys-only', { 'X-API-Key': GLOBEX_KEY })).status).toBe(200);
    });
  });
});

describe('without consumers', () => {
  it('keeps the Bearer-only challenge and refuses API keys on auth "required" routes', async () => {
    const stack = await startStack();
    try {
      const none = await send(stack.gateway.url, '/api/orders');
      expect(none.headers['www-authenticate']).toBe('Bearer realm="koa-gateway"');
      const key = await send(stack.gateway.url, '/api/orders', { 'X-API-Key': generateApiKey() });
      expect(key.status).toBe(401);
      expect(problemOf(key).code).toBe('missing_token');
    } finally {
      await stack.close();
    }
  });
});

describe('npm run apikey (dist/src/tools/api-key.js, built by npm test)', () => {
  const tool = path.join(__dirname, '../../dist/src/tools/api-key.js');
  const run = promisify(execFile);
  const env = { PATH: process.env.PATH ?? '' };

  it('prints a new key and the hash of exactly that key, different each time', async () => {
    expect(existsSync(tool)).toBe(true);
    const outputs = await Promise.all([run(process.execPath, [tool], { env }), run(process.execPath, [tool], { env })]);
    const parsed = outputs.map(({ stdout }) => ({ key: /^key: +(\S+)$/m.exec(stdout)?.[1], hash: /^hash: +(\S+)$/m.exec(stdout)?.[1] }));
    for (const { key, hash } of parsed) {
      expect(key).toMatch(/^kgw_[A-Za-z0-9_-]{43}$/);
      expect(hash).toBe(hashApiKey(key!));
    }
    expect(parsed[0]!.key).not.toBe(parsed[1]!.key);
  });

  it('ends quietly (status 0, nothing on stderr) when its reader stops early, as `npm run apikey | head -2` does', async () => {
    const child = execFile(process.execPath, [tool], { env });
    // The read end closed before the tool writes: every line it prints meets a closed pipe (EPIPE).
    child.stdout!.destroy();
    const outcome = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      let stderr = '';
      child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('close', (code) => resolve({ code, stderr }));
    });
    expect(outcome).toEqual({ code: 0, stderr: '' });
  });

  it('with --hash, prints the hash of a key read from stdin', async () => {
    const key = generateApiKey();
    const child = execFile(process.execPath, [tool, '--hash'], { env });
    child.stdin!.end(`${key}\n`);
    const stdout = await new Promise<string>((resolve) => {
      let text = '';
      child.stdout!.on('data', (chunk: Buffer) => (text += chunk.toString()));
      child.on('close', () => resolve(text));
    });
    expect(stdout.trim()).toBe(hashApiKey(key));
  });

  it.each([
    { desc: 'too short', key: 'hunter2' },
    { desc: 'with a space', key: 'correct horse battery staple' },
  ])('with --hash, refuses a key the gateway would never accept ($desc), printing no hash', async ({ key }) => {
    const child = execFile(process.execPath, [tool, '--hash'], { env });
    child.stdin!.end(`${key}\n`);
    const outcome = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
    expect(outcome.code).toBe(1);
    expect(outcome.stdout).toBe('');
    expect(outcome.stderr).toContain('not a key the gateway accepts');
  });
});

/** Polls until `find` returns something (log lines and spans are written when the response is over). */
async function waitFor<T>(find: () => T | undefined, timeoutMs = 3000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = find();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
