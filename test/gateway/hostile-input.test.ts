import http from 'node:http';
import net from 'node:net';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import fc from 'fast-check';
import type { ProblemBody } from '../../src/middleware/errors';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { ACCESS_LINE_MESSAGE, HEADER, LOG_FIELD } from '../../otel/wire-names';
import { PUBLISHED_JWT_SECRETS } from '../../src/config';
import { createGateway } from '../../src/gateway';
import { verifyGatewaySignature } from '../../src/gateway-signature';
import { memoryLogger, type RecordedRequest } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';
import { spawnGateway } from '../helpers/process-stack';
import { shippedConfigFile, TEST_JWT_SECRET, TEST_SERVICE_KEYS } from '../helpers/test-config';
import { rs256Token, signToken, unsignedToken, unsupportedCritToken } from '../helpers/tokens';

/** What came back, from `http.request` or a raw socket alike. */
interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

type Problem = ProblemBody;

const MINTED_REQUEST_ID = /^[0-9a-f]{32}$/;

function headerOf(reply: Reply, name: string): string | undefined {
  const value = reply.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

/**
 * One request with the path sent byte for byte: fetch and curl normalise dot segments, `http.request` does not.
 * A fresh connection each time (`agent: false`), so one row's connection state cannot leak into the next.
 */
function send(origin: string, path: string, init: { method?: string; headers?: http.OutgoingHttpHeaders; body?: string | Buffer } = {}): Promise<Reply> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const request = http.request({ host: hostname, port: Number(port), path, method: init.method ?? 'GET', headers: init.headers, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, text: Buffer.concat(chunks).toString() }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(init.body);
  });
}

/** Writes `raw` on a new TCP connection and parses whatever HTTP/1.1 response comes back before the close. */
function sendRaw(origin: string, raw: string): Promise<Reply> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => socket.write(raw));
    const chunks: Buffer[] = [];
    socket.setTimeout(5000, () => socket.destroy(new Error('no response within 5 s')));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    // A server that answers a bad request and closes while the rest of it is still arriving may reset the
    // connection (RST) after its answer: what was received counts, so the error only matters without one.
    let failure: Error | undefined;
    socket.on('error', (error) => (failure = error));
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const headEnd = text.indexOf('\r\n\r\n');
      if (headEnd === -1) return reject(failure ?? new Error(`no HTTP response head in ${JSON.stringify(text.slice(0, 200))}`));
      const [statusLine = '', ...lines] = text.slice(0, headEnd).split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers, text: text.slice(headEnd + 4) });
    });
  });
}

/** The problem+json contract of every error the gateway answers: status, type, code, and one request id in header and body. */
function expectProblem(reply: Reply, status: number, code: string): Problem {
  expect(reply.status).toBe(status);
  expect(headerOf(reply, 'content-type')).toBe('application/problem+json');
  const problem = JSON.parse(reply.text) as Problem;
  expect(problem).toMatchObject({ status, code, type: `urn:koa-gateway:problem:${code}` });
  expect(problem.requestId).toEqual(expect.any(String));
  expect(problem.requestId).toBe(headerOf(reply, HEADER.requestId));
  return problem;
}

describe('hostile input at the gateway', () => {
  let stack: TestStack;
  let bob: string;
  let url: string;
  let rowCount = 0;
  /** A well-formed client request id, unique per row, to find what (if anything) reached a service. */
  const nextRequestId = () => `hostile-${++rowCount}`;

  beforeAll(async () => {
    // Limits raised so that the many rows below measure the guards, not the rate limiter (tested elsewhere).
    const shippedAuth = shippedConfigFile().auth as Record<string, unknown>;
    const routes = (shippedConfigFile().routes as { name: string }[]).map((route) => (route.name === 'register' ? { ...route, rateLimit: { max: 100_000, windowMs: 60_000 } } : route));
    stack = await startStack({ env: { RATE_LIMIT_MAX: '100000' }, overrides: { routes, auth: { ...shippedAuth, loginRateLimit: { max: 1000, windowMs: 60_000 } } } });
    url = stack.gateway.url;
    bob = await login(url, 'bob@example.com', 'builder');
  });
  afterAll(() => stack.close());

  const reached = () => stack.serviceRequests().length;
  const seenWithRequestId = (requestId: string): RecordedRequest[] => stack.serviceRequests().filter((request) => request.headers[HEADER.requestId] === requestId);

  /** After each hostile row: the gateway still routes, authenticates and proxies an ordinary request. */
  async function expectStillServing(origin = url): Promise<void> {
    const reply = await send(origin, '/api/users/2', { headers: { authorization: `Bearer ${bob}` } });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.text)).toMatchObject({ id: '2', email: 'bob@example.com' });
  }

  describe('forged and broken tokens', () => {
    it.each([
      { desc: 'no Authorization header', authorization: async () => undefined, code: 'missing_token' },
      { desc: 'an empty Authorization header', authorization: async () => '', code: 'missing_token' },
      // Another scheme is no bearer token at all: no error code in the challenge (RFC 6750 3.1), as with no credential.
      { desc: 'a Basic credential', authorization: async () => `Basic ${Buffer.from('alice@example.com:wonderland').toString('base64')}`, code: 'missing_token' },
      { desc: 'a Digest credential', authorization: async () => 'Digest username="alice", realm="koa-gateway", nonce="abc", uri="/api/orders", response="0123"', code: 'missing_token' },
      { desc: 'a token under another scheme', authorization: async () => `Token ${bob}`, code: 'missing_token' },
      { desc: 'Bearer with nothing after it', authorization: async () => 'Bearer ', code: 'invalid_token' },
      { desc: 'Bearer with garbage', authorization: async () => 'Bearer not-a-jwt', code: 'invalid_token' },
      { desc: 'Bearer with three garbage parts', authorization: async () => 'Bearer aaa.bbb.ccc', code: 'invalid_token' },
      // RFC 9110 11.4 and RFC 6750 2.1 allow spaces (1*SP) between scheme and token, nothing else.
      { desc: 'a real token after a tab', authorization: async () => `Bearer\t${bob}`, code: 'invalid_token' },
      { desc: 'a real token after a space and a tab', authorization: async () => `Bearer \t${bob}`, code: 'invalid_token' },
      { desc: 'a real token right after the scheme', authorization: async () => `Bearer${bob}`, code: 'invalid_token' },
      { desc: 'an unsigned alg: none token', authorization: async () => `Bearer ${unsignedToken()}`, code: 'invalid_token' },
      { desc: 'an HS256 token signed with the wrong secret', authorization: async () => `Bearer ${await signToken({ secret: 'not-the-gateway-secret-but-just-as-long' })}`, code: 'invalid_token' },
      { desc: 'an expired token', authorization: async () => `Bearer ${await signToken({ expiresInSeconds: -3600 })}`, code: 'invalid_token' },
      { desc: 'a token issued a year from now (iat past the clock tolerance)', authorization: async () => `Bearer ${await signToken({ issuedAtSeconds: 365 * 24 * 3600, expiresInSeconds: 366 * 24 * 3600 })}`, code: 'invalid_token' },
      { desc: 'a token from another issuer', authorization: async () => `Bearer ${await signToken({ issuer: 'evil-issuer' })}`, code: 'invalid_token' },
      { desc: 'a token for another audience', authorization: async () => `Bearer ${await signToken({ audience: 'another-api' })}`, code: 'invalid_token' },
      { desc: 'a token without sub', authorization: async () => `Bearer ${await signToken({ subject: null })}`, code: 'invalid_token' },
      { desc: 'an HS512 token with the right secret (algorithm not allowed)', authorization: async () => `Bearer ${await signToken({ alg: 'HS512', secret: TEST_JWT_SECRET })}`, code: 'invalid_token' },
      { desc: 'an RS256 token (algorithm confusion)', authorization: async () => `Bearer ${await rs256Token()}`, code: 'invalid_token' },
      // Its own reason: it was "algorithm not allowed", of a token in the allowed algorithm.
      { desc: 'a token whose crit names a parameter the gateway does not support', authorization: async () => `Bearer ${unsupportedCritToken()}`, code: 'invalid_token', description: 'unsupported critical header' },
      {
        desc: 'an admin token signed with the formerly published development secret',
        authorization: async () => `Bearer ${await signToken({ secret: PUBLISHED_JWT_SECRETS[0]!, subject: '666', claims: { role: 'admin' } })}`,
        code: 'invalid_token',
      },
    ] as { desc: string; authorization: () => Promise<string | undefined>; code: string; description?: string }[])('answers $desc with 401 $code, reaching no service', async ({ authorization, code, description }) => {
      const value = await authorization();
      const before = reached();
      const reply = await send(url, '/api/orders', { headers: value === undefined ? {} : { authorization: value } });
      expectProblem(reply, 401, code);
      const challenge = headerOf(reply, HEADER.wwwAuthenticate);
      if (code === 'missing_token') {
        expect(challenge).toBe('Bearer realm="koa-gateway"');
      } else {
        expect(challenge).toMatch(/^Bearer realm="koa-gateway", /);
        expect(challenge).toContain('error="invalid_token"');
        if (description) expect(challenge).toContain(`error_description="${description}"`);
      }
      expect(reached()).toBe(before);
      await expectStillServing();
    });
  });

  // Node keeps the first Authorization line and drops the rest: the gateway judged one credential where a proxy in
  // front (or its log) went by the last. Either order, a real token first or last, is refused before any check.
  it.each([
    { desc: 'a real token, then junk', lines: () => [`Bearer ${bob}`, 'Bearer junk'] },
    { desc: 'junk, then a real token', lines: () => ['Bearer junk', `Bearer ${bob}`] },
    { desc: 'the same real token twice', lines: () => [`Bearer ${bob}`, `Bearer ${bob}`] },
    { desc: 'a real token and an API key scheme', lines: () => [`Bearer ${bob}`, 'ApiKey kgw_x'] },
    // An empty first line made the field look absent, and the line after it went unchecked against this rule.
    { desc: 'an empty line, then a real token', lines: () => ['', `Bearer ${bob}`] },
  ])('answers two Authorization field lines ($desc) with 400, reaching no service', async ({ lines }) => {
    const before = reached();
    const reply = await send(url, '/api/users/2', { headers: { authorization: lines() } as unknown as http.OutgoingHttpHeaders });
    expectProblem(reply, 400, 'bad_request');
    expect(reached()).toBe(before);
    await expectStillServing();
  });

  // It was refused with one space more: RFC 9110 11.4 (`auth-scheme 1*SP token68`) and RFC 6750 2.1 allow any number.
  it.each([
    { desc: 'two spaces after the scheme', authorization: () => `Bearer  ${bob}` },
    { desc: 'five spaces after the scheme', authorization: () => `Bearer     ${bob}` },
    { desc: 'two spaces after the scheme in lower case', authorization: () => `bearer  ${bob}` },
  ])('accepts a real token with $desc', async ({ authorization }) => {
    const reply = await send(url, '/api/users/2', { headers: { authorization: authorization() } });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.text)).toMatchObject({ id: '2', email: 'bob@example.com' });
  });

  describe('forged identity headers', () => {
    const forgeries: { desc: string; headers: Record<string, string> }[] = [
      { desc: 'X-User-Id: 1', headers: { 'X-User-Id': '1' } },
      { desc: 'X-User-Role: admin', headers: { 'X-User-Role': 'admin' } },
      { desc: 'X-User-Email of another user', headers: { 'X-User-Email': 'alice@example.com' } },
      { desc: 'X-User-Anything', headers: { 'X-User-Anything': 'mallory' } },
      { desc: 'X-Gateway-Whatever', headers: { 'X-Gateway-Whatever': 'mallory' } },
      { desc: 'X-Gateway-Timestamp from the past', headers: { 'X-Gateway-Timestamp': '1999-01-01T00:00:00.000Z' } },
      { desc: 'X-Gateway-Signature of its own', headers: { 'X-Gateway-Signature': `t=${Math.floor(Date.now() / 1000)},v2=${'A'.repeat(43)}` } },
    ];
    /** Headers the gateway writes on every forwarded request, whatever the client sent under their names. */
    const alwaysWritten: string[] = [HEADER.gatewayTimestamp, HEADER.gatewaySignature];

    /** Every `x-user-*` / `x-gateway-*` header a service saw must be the gateway's own. */
    function expectOnlyGatewayValues(seen: RecordedRequest, forged: Record<string, string>, identity: Record<string, string> | undefined): void {
      const owned = Object.keys(seen.headers).filter((name) => name.startsWith('x-user-') || name.startsWith('x-gateway-'));
      const expected = [...alwaysWritten, ...(identity ? Object.keys(identity) : [])];
      expect(owned.sort()).toEqual(expected.sort());
      if (identity) expect(seen.headers).toMatchObject(identity);
      // The gateway's signature, over exactly the identity the service saw (none on the public route), for user-service.
      expect(verifyGatewaySignature(TEST_SERVICE_KEYS.users, { audience: 'users', method: seen.method, target: seen.url }, (name) => seen.headers[name])).toBeUndefined();
      const stamped = Date.parse(String(seen.headers[HEADER.gatewayTimestamp]));
      expect(Math.abs(Date.now() - stamped)).toBeLessThan(60_000);
      for (const [name, value] of Object.entries(forged)) {
        const sawValue = seen.headers[name.toLowerCase()];
        if (identity && name.toLowerCase() in identity) expect(sawValue).toBe(identity[name.toLowerCase()]);
        else if (!alwaysWritten.includes(name.toLowerCase())) expect(sawValue).toBeUndefined();
        else expect(sawValue).not.toBe(value);
      }
    }

    it.each(forgeries)('strips $desc on the public register route: the service sees no identity at all', async ({ headers }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/auth/register', {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json', [HEADER.requestId]: requestId },
        body: JSON.stringify({ name: 'Mallory', email: `mallory-${requestId}@example.com`, password: 'long enough' }),
      });
      expect(reply.status).toBe(201);
      expect(JSON.parse(reply.text)).toMatchObject({ role: 'user' });
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      expectOnlyGatewayValues(seen[0]!, headers, undefined);
      await expectStillServing();
    });

    it.each(forgeries)('replaces $desc on an authenticated route with the identity from Bob’s token', async ({ headers }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/users/2', { headers: { ...headers, authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId } });
      expect(reply.status).toBe(200);
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      expectOnlyGatewayValues(seen[0]!, headers, { [HEADER.userId]: '2', [HEADER.userRole]: 'user', [HEADER.userEmail]: 'bob@example.com' });
      await expectStillServing();
    });

    it('reads no one else’s profile with a forged X-User-Id: Bob asking for user 1 is still Bob', async () => {
      const reply = await send(url, '/api/users/1', { headers: { authorization: `Bearer ${bob}`, 'X-User-Id': '1', 'X-User-Role': 'admin' } });
      expect(reply.status).toBe(403);
    });
  });

  describe('spoofed forwarding headers', () => {
    it.each([
      { desc: 'X-Forwarded-For: 6.6.6.6', headers: { 'X-Forwarded-For': '6.6.6.6' } },
      { desc: 'X-Forwarded-For with a chain', headers: { 'X-Forwarded-For': '6.6.6.6, 10.0.0.1' } },
      { desc: 'Forwarded: for=6.6.6.6', headers: { Forwarded: 'for=6.6.6.6;proto=https;host=evil.example' } },
      { desc: 'X-Real-IP: 6.6.6.6', headers: { 'X-Real-IP': '6.6.6.6' } },
      { desc: 'X-Forwarded-Host and -Proto', headers: { 'X-Forwarded-Host': 'evil.example', 'X-Forwarded-Proto': 'https', 'X-Forwarded-Port': '6666' } },
      { desc: 'host overrides (X-Host, X-Original-Host, X-HTTP-Host-Override)', headers: { 'X-Host': 'evil.example', 'X-Original-Host': 'evil.example', 'X-HTTP-Host-Override': 'evil.example' } },
      { desc: 'CDN client-address headers', headers: { 'CF-Connecting-IP': '6.6.6.6', 'Fastly-Client-IP': '6.6.6.6', 'Client-IP': '6.6.6.6', 'X-Cluster-Client-IP': '6.6.6.6', 'X-Originating-IP': '6.6.6.6' } },
      { desc: 'X-Forwarded-Uri', headers: { 'X-Forwarded-Uri': '/evil.example/admin' } },
    ])('never lets $desc reach the service: it sees only the gateway’s view of the peer', async ({ headers }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/users/2', { headers: { ...headers, authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId } });
      expect(reply.status).toBe(200);
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      const seenHeaders = seen[0]!.headers;
      expect(seenHeaders['x-forwarded-for']).toBe('127.0.0.1');
      expect(seenHeaders['x-forwarded-proto']).toBe('http');
      expect(seenHeaders['x-forwarded-host']).toBe(new URL(url).host);
      expect(seenHeaders.forwarded).toBeUndefined();
      expect(seenHeaders['x-real-ip']).toBeUndefined();
      expect(JSON.stringify(seenHeaders)).not.toMatch(/6\.6\.6\.6|evil\.example|6666/);
      await expectStillServing();
    });
  });

  describe('path tricks', () => {
    it.each([
      { desc: 'a plain dot-dot segment', path: '/api/users/../orders' },
      { desc: 'a trailing dot-dot segment', path: '/api/users/1/..' },
      { desc: 'a single-dot segment', path: '/api/users/./1' },
      { desc: 'percent-encoded dots (lower case)', path: '/api/users/%2e%2e/orders' },
      { desc: 'percent-encoded dots (upper case)', path: '/api/users/%2E%2E/orders' },
      { desc: 'one plain and one encoded dot', path: '/api/users/.%2e/orders' },
      { desc: 'a single encoded dot segment', path: '/api/users/%2e/1' },
      { desc: 'double-encoded dots', path: '/api/users/%252e%252e/orders' },
      { desc: 'an encoded slash after dots', path: '/api/users/..%2forders' },
      { desc: 'encoded slashes around dots', path: '/api/users%2f..%2forders' },
      { desc: 'an encoded slash in upper case', path: '/api/users%2F1' },
      { desc: 'double-encoded slash', path: '/api/users/1%252forders' },
      { desc: 'an empty segment', path: '/api/users//1' },
      { desc: 'a leading double slash', path: '//api/users/1' },
      { desc: 'a NUL byte', path: '/api/users/1%00' },
      { desc: 'an encoded CR LF', path: '/api/users/1%0d%0aX-Injected:%20yes' },
      { desc: 'overlong UTF-8 dots', path: '/api/users/%c0%ae%c0%ae/orders' },
      { desc: 'malformed percent-encoding', path: '/api/users/%zz' },
      { desc: 'a truncated UTF-8 sequence', path: '/api/users/%e2%82' },
      { desc: 'backslashes', path: '/api/users\\..\\orders' },
      { desc: 'encoded backslashes', path: '/api/users/%5c..%5corders' },
      { desc: 'a matrix parameter on the admin-only listing', path: '/api/users;jsessionid=1' },
      { desc: 'an empty matrix parameter', path: '/api/users;' },
      { desc: 'an encoded semicolon', path: '/api/users%3Bx' },
      { desc: 'a matrix parameter mid-path', path: '/api/users;x=1/2' },
      { desc: 'an encoded space after the prefix (Windows and IIS strip it)', path: '/api/users%20/1' },
      { desc: 'a trailing dot on the admin-only listing (Windows and IIS strip it)', path: '/api/users.' },
      { desc: 'a double-encoded letter', path: '/api/%2575sers' },
      // Bob, a user, was let through to /users/? on the users route: behind a hop that decodes the path (nginx's
      // $uri), the admin-only listing /users.
      { desc: 'an encoded ? after the admin-only listing', path: '/api/users/%3F' },
      { desc: 'an encoded # after the admin-only listing', path: '/api/users/%23' },
      { desc: 'a long s (ſ), which a router matching without case reads as s', path: '/api/user%C5%BF/2' },
      { desc: 'fullwidth letters, which NFKC makes ASCII', path: '/api/%EF%BD%95sers/2' },
    ])('refuses $desc ($path) with 400 bad_path, reaching no service', async ({ path }) => {
      const before = reached();
      const reply = await send(url, path, { headers: { authorization: `Bearer ${bob}` } });
      expectProblem(reply, 400, 'bad_path');
      expect(reached()).toBe(before);
      await expectStillServing();
    });

    // Too long is no ambiguity: RFC 9110 15.5.15's 414 (it was 400 bad_path).
    it('answers a path over 2048 characters with 414 uri_too_long, reaching no service', async () => {
      const before = reached();
      const reply = await send(url, `/api/users/${'a'.repeat(3000)}`, { headers: { authorization: `Bearer ${bob}` } });
      expectProblem(reply, 414, 'uri_too_long');
      // The path is not quoted back whole: its start only (a 3,000-character path made a 3,230-byte body).
      expect(JSON.parse(reply.text).instance).toMatch(/^\/api\/[^.]{251}\.\.\.$/);
      expect(reached()).toBe(before);
    });

    it('quotes no more of a long path in a 404’s detail than in its instance', async () => {
      const reply = await send(url, `/nowhere/${'a'.repeat(2000)}`);
      expectProblem(reply, 404, 'route_not_found');
      const body = JSON.parse(reply.text) as { detail: string; instance: string };
      expect(body.detail).toBe(`No route matches GET ${body.instance}.`);
      expect(reply.text.length).toBeLessThan(1000);
    });

    // Redacting the query for the access line and the span recursed once per `;`-part: past a few thousand the stack
    // overflowed, and the answer was a plain 500 with no access line and no span.
    it('answers a query of thousands of ;-separated parts as any other request, its access line written', async () => {
      const reply = await send(url, `/api/users/2?${'=;'.repeat(6_000)}`, { headers: { authorization: `Bearer ${bob}` } });
      expect(reply.status).toBe(200);
      const requestId = reply.headers[HEADER.requestId];
      await waitFor(() => stack.gatewayLogs.some((line) => line.message === ACCESS_LINE_MESSAGE && line[LOG_FIELD.requestId] === requestId), 'its access line');
    });

    it.each([
      { desc: 'a longer first segment', path: '/api/usersX/1' },
      { desc: 'a shorter segment', path: '/api/user' },
      { desc: 'the bare /api', path: '/api' },
      { desc: 'the root', path: '/' },
      { desc: 'an unknown route', path: '/admin/secrets' },
      { desc: 'the services’ internal paths', path: '/internal/credentials/verify' },
      { desc: 'a path below the exact register route', path: '/api/auth/register/extra' },
    ])('answers $desc ($path) with 404 route_not_found, reaching no service', async ({ path }) => {
      const before = reached();
      const reply = await send(url, path, { headers: { authorization: `Bearer ${bob}` } });
      expectProblem(reply, 404, 'route_not_found');
      expect(reached()).toBe(before);
      await expectStillServing();
    });
  });

  describe('the client address a dual-stack listener (::) reports', () => {
    it('tells the service an IPv4 client as its IPv4 address in X-Forwarded-For, not IPv4-mapped, and an IPv6 one as it is', async () => {
      const { logger } = memoryLogger('gateway');
      const dualStack = http.createServer(createGateway(stack.config, { logger }).callback());
      await new Promise<void>((resolve) => dualStack.listen(0, '::', resolve));
      const { port } = dualStack.address() as net.AddressInfo;
      try {
        const forwardedFor: unknown[] = [];
        for (const host of ['127.0.0.1', '::1']) {
          const requestId = nextRequestId();
          const status = await new Promise<number | undefined>((resolve, reject) => {
            const request = http.get({ host, port, path: '/api/users/2', agent: false, headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId } }, (response) => {
              response.resume();
              response.on('end', () => resolve(response.statusCode));
            });
            request.on('error', reject);
          });
          expect(status).toBe(200);
          forwardedFor.push(...seenWithRequestId(requestId).map((request) => request.headers['x-forwarded-for']));
        }
        expect(forwardedFor).toEqual(['127.0.0.1', '::1']);
      } finally {
        dualStack.closeAllConnections();
        await new Promise((resolve) => dualStack.close(resolve));
      }
    });
  });

  describe('wrong methods on routes the gateway restricts', () => {
    it.each([
      { desc: 'GET on login', method: 'GET', path: '/api/auth/login' },
      { desc: 'PUT on login', method: 'PUT', path: '/api/auth/login' },
      { desc: 'GET on register', method: 'GET', path: '/api/auth/register' },
      { desc: 'DELETE on register', method: 'DELETE', path: '/api/auth/register' },
    ])('answers $desc with 405 and Allow: POST, reaching no service', async ({ method, path }) => {
      const before = reached();
      const reply = await send(url, path, { method });
      expectProblem(reply, 405, 'method_not_allowed');
      expect(headerOf(reply, 'allow')).toBe('POST');
      expect(reached()).toBe(before);
      await expectStillServing();
    });
  });

  // A service answering TRACE echoes the request (Cookie, a forwarded Authorization) to the script that sent it.
  it.each([
    { desc: 'a route that names no methods (users)', path: '/api/users/2' },
    { desc: 'the public register route', path: '/api/auth/register' },
  ])('answers TRACE on $desc with 405, reaching no service', async ({ path }) => {
    const requestId = nextRequestId();
    const reply = await send(url, path, { method: 'TRACE', headers: { authorization: `Bearer ${bob}`, cookie: 'session=secret', [HEADER.requestId]: requestId } });
    expectProblem(reply, 405, 'method_not_allowed');
    expect(headerOf(reply, 'allow')).not.toContain('TRACE');
    expect(seenWithRequestId(requestId)).toEqual([]);
  });

  describe('other spellings of a role-restricted resource (Bob, role user, vs the admin-only listing)', () => {
    it.each([
      { desc: 'the exact path', method: 'GET', path: '/api/users' },
      { desc: 'a trailing slash', method: 'GET', path: '/api/users/' },
      { desc: 'HEAD instead of GET', method: 'HEAD', path: '/api/users' },
      { desc: 'HEAD with a trailing slash', method: 'HEAD', path: '/api/users/' },
      { desc: 'an upper-case path', method: 'GET', path: '/API/USERS' },
      { desc: 'a mixed-case path with a trailing slash', method: 'GET', path: '/Api/Users/' },
      { desc: 'a percent-encoded letter', method: 'GET', path: '/api/%75sers' },
      { desc: 'an encoded last letter, upper-case hex', method: 'GET', path: '/api/user%73' },
      { desc: 'an encoded letter in the first segment', method: 'GET', path: '/%61pi/users/' },
    ])('answers $desc ($method $path) with 403 forbidden, reaching no service', async ({ method, path }) => {
      const before = reached();
      const reply = await send(url, path, { method, headers: { authorization: `Bearer ${bob}` } });
      expect(reply.status).toBe(403);
      // RFC 6750 3: a token that does not enable access is answered with its scheme's challenge, insufficient_scope.
      expect(headerOf(reply, 'www-authenticate')).toMatch(/^Bearer realm="koa-gateway", error="insufficient_scope", error_description="[^"]+"$/);
      if (method !== 'HEAD') expectProblem(reply, 403, 'forbidden');
      expect(reached()).toBe(before);
      await expectStillServing();
    });

    it.each([
      { desc: 'POST', method: 'POST', path: '/api/users' },
      { desc: 'PUT with a trailing slash', method: 'PUT', path: '/api/users/' },
      { desc: 'DELETE in upper case', method: 'DELETE', path: '/API/USERS' },
      { desc: 'PATCH', method: 'PATCH', path: '/api/users' },
      { desc: 'OPTIONS without a preflight', method: 'OPTIONS', path: '/api/users' },
    ])('answers $desc on the exact admin route with 405 and its Allow, never the open prefix route', async ({ method, path }) => {
      const before = reached();
      const reply = await send(url, path, { method, headers: { authorization: `Bearer ${bob}`, 'content-type': 'application/json' }, body: method === 'POST' || method === 'PUT' || method === 'PATCH' ? '{}' : undefined });
      expectProblem(reply, 405, 'method_not_allowed');
      expect(headerOf(reply, 'allow')).toBe('GET, HEAD');
      expect(reached()).toBe(before);
      await expectStillServing();
    });

    it.each([
      { desc: 'an upper-case prefix', path: '/API/users/2' },
      { desc: 'an encoded letter in the prefix', path: '/api/%75sers/2' },
      { desc: 'a trailing slash', path: '/api/users/2/' },
    ])('routes $desc ($path) like its canonical form: Bob reads his own profile under the same rules', async ({ path }) => {
      const requestId = nextRequestId();
      const reply = await send(url, path, { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId } });
      expect(reply.status).toBe(200);
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      expect(seen[0]!.headers[HEADER.userId]).toBe('2');
      expect(seen[0]!.url.toLowerCase()).toMatch(/^\/users\/2\/?$/);
    });
  });

  // RFC 9110 7.6.2: every intermediary spends one of an OPTIONS request's Max-Forwards, and answers itself at 0.
  describe('Max-Forwards on OPTIONS', () => {
    it.each([
      { desc: '0', value: '0' },
      { desc: '0 with white space around it', value: ' 0\t' },
      { desc: '00', value: '00' },
      { desc: 'sixteen zeros (longer than any number it reads)', value: '0000000000000000' },
    ])('answers OPTIONS with Max-Forwards: $desc itself, 204 with the route’s Allow, reaching no service', async ({ value }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/users/2', { method: 'OPTIONS', headers: { authorization: `Bearer ${bob}`, 'max-forwards': value, [HEADER.requestId]: requestId } });
      expect(reply.status).toBe(204);
      expect(headerOf(reply, 'allow')).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
      expect(headerOf(reply, HEADER.requestId)).toBe(requestId);
      expect(seenWithRequestId(requestId)).toEqual([]);
      await expectStillServing();
    });

    // RFC 9110 7.6.2 has the gateway answer as the final recipient whatever the route forwards: on a route whose
    // methods leave OPTIONS out, it got 405 instead of the 204 the README promises.
    it('answers OPTIONS with Max-Forwards: 0 itself on a route whose methods leave OPTIONS out: 204 with that route\'s Allow', async () => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/users', { method: 'OPTIONS', headers: { authorization: `Bearer ${bob}`, 'max-forwards': '0', [HEADER.requestId]: requestId } });
      expect(reply.status).toBe(204);
      expect(headerOf(reply, 'allow')).toBe('GET, HEAD');
      expect(seenWithRequestId(requestId)).toEqual([]);
      // Any other count is still refused there: OPTIONS is not the route's to forward.
      expect((await send(url, '/api/users', { method: 'OPTIONS', headers: { authorization: `Bearer ${bob}`, 'max-forwards': '1' } })).status).toBe(405);
    });

    it('tells the service one less Max-Forwards on OPTIONS, and leaves it on other methods', async () => {
      const options = nextRequestId();
      await send(url, '/api/users/2', { method: 'OPTIONS', headers: { authorization: `Bearer ${bob}`, 'max-forwards': '3', [HEADER.requestId]: options } });
      expect(seenWithRequestId(options).map((request) => request.headers['max-forwards'])).toEqual(['2']);
      const get = nextRequestId();
      await send(url, '/api/users/2', { headers: { authorization: `Bearer ${bob}`, 'max-forwards': '3', [HEADER.requestId]: get } });
      expect(seenWithRequestId(get).map((request) => request.headers['max-forwards'])).toEqual(['3']);
    });

    // RFC 9110 7.6.2: "the lesser of" the count less one and the intermediary's own maximum.
    it.each([
      { desc: 'a count longer than a number holds', value: '99999999999999999999', forwarded: '999999999999999' },
      { desc: 'a count behind leading zeros', value: '0000000000000000007', forwarded: '6' },
    ])('tells the service a count it can read for $desc', async ({ value, forwarded }) => {
      const requestId = nextRequestId();
      await send(url, '/api/users/2', { method: 'OPTIONS', headers: { authorization: `Bearer ${bob}`, 'max-forwards': value, [HEADER.requestId]: requestId } });
      expect(seenWithRequestId(requestId).map((request) => request.headers['max-forwards'])).toEqual([forwarded]);
    });
  });

  describe('Connection headers naming headers the gateway owns', () => {
    it.each([
      { desc: 'the identity and request id', connection: 'x-user-role, x-user-id, x-request-id' },
      { desc: 'the e-mail identity header', connection: 'X-User-Email' },
      { desc: 'the gateway timestamp', connection: 'x-gateway-timestamp' },
      { desc: 'the forwarding headers', connection: 'x-forwarded-for, x-forwarded-host, x-forwarded-proto, x-forwarded-port' },
      { desc: 'Host', connection: 'host' },
      { desc: 'every owned name at once, with keep-alive', connection: 'keep-alive, x-user-id, x-user-role, x-user-email, x-request-id, x-gateway-timestamp, x-forwarded-for' },
    ])('cannot remove $desc from what the service receives', async ({ connection }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/users/2', { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId, connection } });
      expect(reply.status).toBe(200);
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      expect(seen[0]!.headers).toMatchObject({
        [HEADER.userId]: '2',
        [HEADER.userRole]: 'user',
        [HEADER.userEmail]: 'bob@example.com',
        [HEADER.requestId]: requestId,
        host: new URL(stack.users.url).host,
        'x-forwarded-for': '127.0.0.1',
        'x-forwarded-host': new URL(url).host,
        'x-forwarded-proto': 'http',
        'x-forwarded-port': new URL(url).port,
      });
      expect(seen[0]!.headers[HEADER.gatewayTimestamp]).toEqual(expect.any(String));
      await expectStillServing();
    });

    it('never forwards HTTP2-Settings, connection-specific even where Connection does not list it', async () => {
      const requestId = nextRequestId();
      await send(url, '/api/users/2', { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId, 'http2-settings': 'AAMAAABkAAQAoAAAAAIAAAAA' } });
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      expect(seen[0]!.headers['http2-settings']).toBeUndefined();
    });

    it('still removes a client header its Connection lists (a real hop-by-hop header)', async () => {
      const requestId = nextRequestId();
      await send(url, '/api/users/2', { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId, connection: 'x-hop-only', 'x-hop-only': 'one hop', 'x-end-to-end': 'kept' } });
      const seen = seenWithRequestId(requestId);
      expect(seen[0]!.headers['x-hop-only']).toBeUndefined();
      expect(seen[0]!.headers['x-end-to-end']).toBe('kept');
    });
  });

  describe('look-alike and request-rewriting headers', () => {
    /** PHP (and HHVM) make every `.` of a `$_SERVER` key `_`: behind a server that passes such a name on, `X.User.Id` is `HTTP_X_USER_ID`. */
    const dotted: { desc: string; headers: Record<string, string> }[] = [
      { desc: 'X.User.Id: 1 (PHP reads it as X-User-Id)', headers: { 'X.User.Id': '1' } },
      { desc: 'X.User-Role: admin (mixed separators)', headers: { 'X.User-Role': 'admin' } },
      { desc: 'X.Consumer.Id (no consumer on a token route: the only one a PHP service would see)', headers: { 'X.Consumer.Id': 'DELETE-consumer' } },
      { desc: 'X.Gateway_Signature (dot and underscore)', headers: { 'X.Gateway_Signature': 'DELETE-signature' } },
    ];
    const smuggled: { desc: string; headers: Record<string, string> }[] = [
      { desc: 'X_User_Id: 1', headers: { X_User_Id: '1' } },
      { desc: 'X_User_Role: admin', headers: { X_User_Role: 'admin' } },
      { desc: 'X_User_Email', headers: { X_User_Email: 'alice@example.com' } },
      { desc: 'X-User_Id (mixed separators)', headers: { 'X-User_Id': '1' } },
      { desc: 'X_Gateway_Timestamp', headers: { X_Gateway_Timestamp: '1999-01-01T00:00:00.000Z' } },
      { desc: 'X_Forwarded_For', headers: { X_Forwarded_For: '6.6.6.6' } },
      { desc: 'X_Real_IP', headers: { X_Real_IP: '6.6.6.6' } },
      { desc: 'X_Request_Id', headers: { X_Request_Id: 'smuggled-id' } },
      { desc: 'X-HTTP-Method-Override: DELETE', headers: { 'X-HTTP-Method-Override': 'DELETE' } },
      { desc: 'X-HTTP-Method: DELETE', headers: { 'X-HTTP-Method': 'DELETE' } },
      { desc: 'X-Method-Override: PUT', headers: { 'X-Method-Override': 'PUT' } },
      { desc: 'X-Original-Method: DELETE', headers: { 'X-Original-Method': 'DELETE' } },
      { desc: 'X-Original-URL: /users', headers: { 'X-Original-URL': '/users' } },
      { desc: 'X-Original-URI: /users', headers: { 'X-Original-URI': '/users' } },
      { desc: 'X-Rewrite-URL: /users', headers: { 'X-Rewrite-URL': '/users' } },
      { desc: 'X-Override-URL: /users', headers: { 'X-Override-URL': '/users' } },
      { desc: 'X-Middleware-Subrequest (Next.js skips its middleware for it, CVE-2025-29927)', headers: { 'X-Middleware-Subrequest': 'middleware:middleware:middleware:middleware:middleware-DELETE' } },
      { desc: 'X-Now-Route-Matches, X-Invoke-Path, X-Matched-Path (Next.js internal routing)', headers: { 'X-Now-Route-Matches': 'DELETE=1', 'X-Invoke-Path': '/DELETE', 'X-Invoke-Query': 'DELETE', 'X-Matched-Path': '/DELETE' } },
      { desc: 'X-Forwarded-Prefix: /evil', headers: { 'X-Forwarded-Prefix': '/evil' } },
      { desc: 'X-Client-IP and True-Client-IP', headers: { 'X-Client-IP': '6.6.6.6', 'True-Client-IP': '6.6.6.6' } },
      { desc: 'Remote-User and X-Remote-User (Apache-style auth proxies)', headers: { 'Remote-User': 'DELETE-admin', 'X-Remote-User': 'DELETE-admin' } },
      { desc: 'X-Forwarded-User and -Email (oauth2-proxy)', headers: { 'X-Forwarded-User': 'DELETE-admin', 'X-Forwarded-Email': 'DELETE-admin@example.com' } },
      { desc: 'X-Auth-Request-User and -Email (oauth2-proxy)', headers: { 'X-Auth-Request-User': 'DELETE-admin', 'X-Auth-Request-Email': 'DELETE-admin@example.com' } },
      { desc: 'X-Authenticated-Userid (Kong)', headers: { 'X-Authenticated-Userid': 'DELETE-admin' } },
      { desc: 'X-WEBAUTH-USER (Grafana)', headers: { 'X-WEBAUTH-USER': 'DELETE-admin' } },
      { desc: 'X-Forwarded-Client-Cert (Envoy, an mTLS identity)', headers: { 'X-Forwarded-Client-Cert': 'By=spiffe://x;URI=spiffe://cluster.local/ns/prod/sa/DELETE-admin' } },
      { desc: 'X-Forwarded-Tls-Client-Cert and -Info (Traefik)', headers: { 'X-Forwarded-Tls-Client-Cert': 'DELETE-admin', 'X-Forwarded-Tls-Client-Cert-Info': 'Subject=CN=DELETE-admin' } },
      { desc: 'X-Forwarded-Protocol, -Method and -Path', headers: { 'X-Forwarded-Protocol': 'https', 'X-Forwarded-Method': 'DELETE', 'X-Forwarded-Path': '/evil' } },
      { desc: 'client addresses of App Engine, Cloudflare, Envoy, Fly, Azure', headers: { 'X-AppEngine-User-IP': '6.6.6.6', 'CF-Pseudo-IPv4': '6.6.6.6', 'X-Envoy-External-Address': '6.6.6.6', 'Fly-Client-IP': '6.6.6.6', 'X-Azure-ClientIP': '6.6.6.6' } },
      { desc: 'X-Envoy-Internal (a mesh-internal mark)', headers: { 'X-Envoy-Internal': 'true' } },
      { desc: 'X-Amzn-Oidc-Identity and -Data (AWS ALB)', headers: { 'X-Amzn-Oidc-Identity': 'DELETE-admin', 'X-Amzn-Oidc-Data': 'DELETE-admin' } },
      { desc: 'X-Goog-Authenticated-User-Email (Google IAP)', headers: { 'X-Goog-Authenticated-User-Email': 'accounts.google.com:DELETE-admin@example.com' } },
      { desc: 'X-MS-Client-Principal-Name (Azure App Service)', headers: { 'X-MS-Client-Principal-Name': 'DELETE-admin', 'X-MS-Client-Principal': 'DELETE-admin' } },
      { desc: 'Cf-Access-Authenticated-User-Email (Cloudflare Access)', headers: { 'Cf-Access-Authenticated-User-Email': 'DELETE-admin@example.com' } },
      { desc: 'X-Pomerium-Claim-Email (Pomerium)', headers: { 'X-Pomerium-Claim-Email': 'DELETE-admin@example.com' } },
      { desc: 'Client-Cert and Client-Cert-Chain (RFC 9440), X-Amzn-Mtls-Clientcert (AWS ALB), X-SSL-Cert (nginx)', headers: { 'Client-Cert': ':DELETE:', 'Client-Cert-Chain': ':DELETE:', 'X-Amzn-Mtls-Clientcert': 'DELETE', 'X-Amzn-Mtls-Clientcert-Subject': 'CN=DELETE-admin', 'X-SSL-Cert': 'DELETE' } },
      { desc: 'Remote-Groups, -Email and -Name (Authelia, beside Remote-User)', headers: { 'Remote-Groups': 'DELETE-admins', 'Remote-Email': 'DELETE-admin@example.com', 'Remote-Name': 'DELETE-admin' } },
      { desc: 'X-Authentik-Username, Tailscale-User-Login, X-Vouch-User', headers: { 'X-Authentik-Username': 'DELETE-admin', 'X-Authentik-Groups': 'DELETE-admins', 'Tailscale-User-Login': 'DELETE-admin@example.com', 'X-Vouch-User': 'DELETE-admin' } },
      { desc: 'X-SSL-Client-S-DN, Ssl-Client-Cert and X-Client-Cert (client certificates passed on by nginx, Apache)', headers: { 'X-SSL-Client-S-DN': 'CN=DELETE-admin', 'X-SSL-Client-Verify': 'SUCCESS', 'Ssl-Client-Cert': 'DELETE', 'X-Client-Cert': 'DELETE' } },
      { desc: 'X-Remote-Extra-Scopes and Impersonate-User, -Group (Kubernetes request-header auth and impersonation)', headers: { 'X-Remote-Extra-Scopes': 'DELETE-admin', 'Impersonate-User': 'DELETE-admin', 'Impersonate-Group': 'DELETE-admins', 'Impersonate-Extra-Scopes': 'DELETE' } },
      { desc: 'X-Credential-Username, X-Consumer-Groups, X-Authenticated-Groups, X-Userinfo (Kong)', headers: { 'X-Credential-Username': 'DELETE-admin', 'X-Consumer-Groups': 'DELETE-admins', 'X-Authenticated-Groups': 'DELETE-admins', 'X-Userinfo': 'DELETE' } },
      { desc: 'X-Endpoint-API-UserInfo, X-Apigateway-Api-Userinfo (Google) and X-JWT-Assertion (WSO2)', headers: { 'X-Endpoint-API-UserInfo': 'DELETE', 'X-Apigateway-Api-Userinfo': 'DELETE', 'X-JWT-Assertion': 'DELETE' } },
      { desc: 'X-Client-DN, X-Client-Verified, X-SSL-Cert-Subject, X-TLS-Client-Cert (client certificates)', headers: { 'X-Client-DN': 'CN=DELETE-admin', 'X-Client-Verified': 'SUCCESS-DELETE', 'X-SSL-Cert-Subject': 'CN=DELETE-admin', 'X-TLS-Client-Cert': 'DELETE' } },
      { desc: 'l5d-dst-override (Linkerd sends the request to that service instead)', headers: { 'l5d-dst-override': 'DELETE.internal.svc.cluster.local:80', 'L5d-Ctx-Deadline': 'DELETE' } },
      { desc: 'X-Envoy-Original-Dst-Host, -Retry-On and -Max-Retries (a mesh sidecar routes and resends by them)', headers: { 'X-Envoy-Original-Dst-Host': '10.0.0.1:4001-DELETE', 'X-Envoy-Retry-On': '5xx,DELETE', 'X-Envoy-Max-Retries': '99', 'X-Envoy-Upstream-Rq-Timeout-Ms': '1' } },
      { desc: 'x_envoy_retry_on (an underscore twin)', headers: { x_envoy_retry_on: '5xx-DELETE' } },
      ...dotted,
      { desc: 'X.HTTP.Method.Override: DELETE', headers: { 'X.HTTP.Method.Override': 'DELETE' } },
      { desc: 'X.Forwarded.For and X.Real.IP', headers: { 'X.Forwarded.For': '6.6.6.6', 'X.Real.IP': '6.6.6.6' } },
      { desc: 'X.Request.Id', headers: { 'X.Request.Id': 'smuggled-id' } },
      { desc: 'Remote.User (an auth proxy’s identity)', headers: { 'Remote.User': 'DELETE-admin' } },
    ];

    it.each(smuggled)('drops $desc on an authenticated route: the service never sees it', async ({ headers }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/users/2', { headers: { ...headers, authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId } });
      expect(reply.status).toBe(200);
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      // X-Forwarded-Prefix is the gateway's own: the prefix /api/users -> /users took off.
      for (const name of Object.keys(headers)) expect(seen[0]!.headers[name.toLowerCase()]).toBe(name.toLowerCase() === HEADER.forwardedPrefix ? '/api' : undefined);
      expect(seen[0]!.headers).toMatchObject({ [HEADER.userId]: '2', [HEADER.userRole]: 'user', 'x-forwarded-for': '127.0.0.1' });
      expect(JSON.stringify(seen[0]!.headers)).not.toMatch(/6\.6\.6\.6|smuggled-id|\/evil|DELETE/);
    });

    it('drops every X-Forwarded-* name from a client that is not a trusted proxy, listed or not (generated names)', async () => {
      // The gateway's own four (rebuilt from the connection), and the prefix the route took off, are the only X-Forwarded-* a service hears.
      const REBUILT = ['x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port', HEADER.forwardedPrefix];
      const suffix = fc.stringMatching(/^[a-z0-9]{1,8}(-[a-z0-9]{1,8}){0,2}$/);
      await fc.assert(
        fc.asyncProperty(fc.uniqueArray(suffix, { minLength: 1, maxLength: 4 }), fc.constantFrom('x-forwarded-', 'X-Forwarded-', 'X-FORWARDED-'), async (suffixes, prefix) => {
          const requestId = nextRequestId();
          const forged = Object.fromEntries(suffixes.map((name) => [`${prefix}${name}`, `DELETE-${name}`]));
          const reply = await send(url, '/api/users/2', { headers: { ...forged, authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId } });
          expect(reply.status).toBe(200);
          const seen = seenWithRequestId(requestId);
          expect(seen).toHaveLength(1);
          expect(Object.keys(seen[0]!.headers).filter((name) => name.startsWith('x-forwarded-') && !REBUILT.includes(name))).toEqual([]);
          expect(JSON.stringify(seen[0]!.headers)).not.toContain('DELETE');
        }),
        { seed: 20261202, numRuns: 60 },
      );
    });

    it.each([...smuggled.slice(0, 4), ...dotted])('drops $desc on the public register route too', async ({ headers }) => {
      const requestId = nextRequestId();
      const reply = await send(url, '/api/auth/register', {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json', [HEADER.requestId]: requestId },
        body: JSON.stringify({ name: 'Mallory', email: `mallory-${requestId}@example.com`, password: 'long enough' }),
      });
      expect(reply.status).toBe(201);
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      expect(Object.keys(seen[0]!.headers).filter((name) => name.includes('_') || name.includes('.') || name.startsWith('x-user-') || name.startsWith('x-consumer-'))).toEqual([]);
    });
  });

  describe('the bearer token stops at the gateway', () => {
    it.each([
      { desc: 'on an authenticated route', method: 'GET', path: '/api/users/2', authorization: () => `Bearer ${bob}` },
      { desc: 'on the public register route', method: 'POST', path: '/api/auth/register', authorization: () => `Bearer ${bob}` },
      { desc: 'on a public route, even when it is not a valid token', method: 'POST', path: '/api/auth/register', authorization: () => 'Bearer not-a-token' },
      { desc: 'on a public route, with another scheme', method: 'POST', path: '/api/auth/register', authorization: () => 'Basic YWxpY2U6d29uZGVybGFuZA==' },
    ])('never forwards Authorization $desc', async ({ method, path, authorization }) => {
      const requestId = nextRequestId();
      const body = method === 'POST' ? JSON.stringify({ name: 'Mallory', email: `mallory-${requestId}@example.com`, password: 'long enough' }) : undefined;
      const reply = await send(url, path, { method, headers: { authorization: authorization(), 'content-type': 'application/json', [HEADER.requestId]: requestId }, body });
      expect([200, 201]).toContain(reply.status);
      const seen = seenWithRequestId(requestId);
      expect(seen).toHaveLength(1);
      expect(seen[0]!.headers.authorization).toBeUndefined();
      expect(JSON.stringify(seen[0]!.headers)).not.toContain(bob.slice(-20));
    });
  });

  describe('secrets in the URL', () => {
    it.each([
      { desc: 'an encoded parameter name', query: '%74oken=SECRET-1' },
      { desc: 'a mixed-case name', query: 'Access_Token=SECRET-2' },
      { desc: 'a repeated name', query: 'token=SECRET-3&page=1&token=SECRET-4' },
      { desc: 'a double-encoded name', query: '%2570assword=SECRET-5' },
    ])('never logs the value of $desc', async ({ query }) => {
      const requestId = nextRequestId();
      await send(url, `/api/users/2?${query}`, { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: requestId } });
      // The access line is written when the response closes: wait for it, then look at it.
      const deadline = Date.now() + 5000;
      let line: Record<string, unknown> | undefined;
      while (!(line = stack.gatewayLogs.find((entry) => entry.request_id === requestId && entry.message === 'request completed')) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(line).toBeDefined();
      expect(JSON.stringify(line)).not.toMatch(/SECRET-\d/);
      // The name kept, the value replaced by the HTTP semantic conventions' marker.
      expect(String(line!.url)).toMatch(/=REDACTED(&|$)/);
    });
  });

  describe('the request id', () => {
    it.each([
      { desc: 'a 10 KB value', value: 'a'.repeat(10 * 1024) },
      { desc: 'one character over the 128 limit', value: 'b'.repeat(129) },
      { desc: 'a value with spaces', value: 'id with spaces' },
      { desc: 'a value with quotes', value: '"quoted"\'id\'' },
      { desc: 'a script tag', value: '<script>alert(1)</script>' },
      { desc: 'a JSON fragment', value: '{"injected":true}' },
      { desc: 'an empty value', value: '' },
      { desc: 'two X-Request-Id headers', value: ['first-id', 'second-id'] },
    ])('replaces $desc with a minted 32-hex id, echoed and forwarded, never the hostile one', async ({ value }) => {
      const hostile = Array.isArray(value) ? value : [value];
      // A proxied request: the service must see the minted id, not the hostile one.
      const proxied = await send(url, '/api/users/2', { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: value } });
      expect(proxied.status).toBe(200);
      const minted = headerOf(proxied, HEADER.requestId);
      expect(minted).toMatch(MINTED_REQUEST_ID);
      expect(seenWithRequestId(minted!)).toHaveLength(1);
      // An error the gateway answers: header and body carry the same fresh id.
      const failed = await send(url, '/api/nowhere', { headers: { [HEADER.requestId]: value } });
      const problem = expectProblem(failed, 404, 'route_not_found');
      expect(problem.requestId).toMatch(MINTED_REQUEST_ID);
      expect(problem.requestId).not.toBe(minted);
      for (const reply of [proxied, failed]) {
        for (const part of hostile.filter((text) => text !== '')) {
          expect(headerOf(reply, HEADER.requestId)).not.toBe(part);
          expect(JSON.stringify(reply.headers)).not.toContain(part.slice(0, 100));
          expect(reply.text).not.toContain(part.slice(0, 100));
        }
      }
      await expectStillServing();
    });

    it('echoes a well-formed client id (abc-123_X.y:z) and forwards it to the service', async () => {
      const id = 'abc-123_X.y:z';
      const proxied = await send(url, '/api/users/2', { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: id } });
      expect(proxied.status).toBe(200);
      expect(headerOf(proxied, HEADER.requestId)).toBe(id);
      expect(seenWithRequestId(id).map((request) => request.url)).toEqual(['/users/2']);
      const failed = await send(url, '/api/nowhere', { headers: { [HEADER.requestId]: id } });
      expect(expectProblem(failed, 404, 'route_not_found').requestId).toBe(id);
    });
  });

  describe('login bodies', () => {
    it.each([
      { desc: 'a text/plain content type', contentType: 'text/plain', body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }), status: 415, code: 'unsupported_media_type' },
      { desc: 'a form-encoded body', contentType: 'application/x-www-form-urlencoded', body: 'email=alice%40example.com&password=wonderland', status: 415, code: 'unsupported_media_type' },
      { desc: 'no content type', contentType: undefined, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }), status: 415, code: 'unsupported_media_type' },
      { desc: 'a UTF-16 charset (JSON is UTF-8)', contentType: 'application/json; charset=utf-16', body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }), status: 415, code: 'unsupported_media_type' },
      { desc: 'malformed JSON', contentType: 'application/json', body: '{"email": "alice@example.com", "password": ', status: 400, code: 'invalid_body' },
      // The parser's message quotes the text around the error: here, the password.
      { desc: 'JSON with the password unquoted', contentType: 'application/json', body: '{"email":"alice@example.com","password":wonderland}', status: 400, code: 'invalid_body' },
      { desc: 'a body over 16 KiB', contentType: 'application/json', body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland', padding: 'p'.repeat(16 * 1024) }), status: 413, code: 'payload_too_large' },
      { desc: 'a missing password', contentType: 'application/json', body: JSON.stringify({ email: 'alice@example.com' }), status: 400, code: 'invalid_body' },
      { desc: 'an empty password', contentType: 'application/json', body: JSON.stringify({ email: 'alice@example.com', password: '' }), status: 400, code: 'invalid_body' },
      { desc: 'a non-string password', contentType: 'application/json', body: JSON.stringify({ email: 'alice@example.com', password: { $ne: '' } }), status: 400, code: 'invalid_body' },
      { desc: 'a JSON array', contentType: 'application/json', body: JSON.stringify(['alice@example.com', 'wonderland']), status: 400, code: 'invalid_body' },
    ])('answers login with $desc with $status $code, without asking user-service', async ({ contentType, body, status, code }) => {
      const before = reached();
      const reply = await send(url, '/api/auth/login', { method: 'POST', headers: contentType === undefined ? {} : { 'content-type': contentType }, body });
      const problem = expectProblem(reply, status, code);
      expect(problem.detail).not.toContain('wonderland');
      expect(reached()).toBe(before);
      await expectStillServing();
    });

    it.each([
      ['null', 'The request body must be a JSON object.'],
      ['5', 'The request body must be a JSON object.'],
      ['{"email": ', 'The request body is not valid JSON.'],
    ])('tells a bare JSON value (%s) from a login body that is not JSON', async (body, detail) => {
      const reply = await send(url, '/api/auth/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      expect(expectProblem(reply, 400, 'invalid_body').detail).toBe(detail);
    });

    it.each(['UTF-8', 'US-ASCII'])('takes a login body whose charset is %s (UTF-8 or a subset of it), in any case', async (charset) => {
      const reply = await send(url, '/api/auth/login', { method: 'POST', headers: { 'content-type': `application/json; charset=${charset}` }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
      expect(reply.status).toBe(200);
    });
  });

  // The parser's zlib error has no status: it must not read as the gateway's own 500 (and an error-level log line).
  // The parser stops reading at the limit: the 413 kept the connection alive with the rest of the body unread, and the
  // request behind it on the connection waited unanswered until the idle timeout (RFC 9112 9.6: say close, or read it).
  it('closes the connection after a chunked login body over auth.loginBodyLimitBytes, whose rest it does not read', async () => {
    const { host } = new URL(url);
    const overLimit = ' '.repeat(20_000);
    const reply = await sendRaw(url, `POST /api/auth/login HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${overLimit.length.toString(16)}\r\n${overLimit}\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    expect(reply.status).toBe(413);
    expect(reply.headers.connection).toBe('close');
  });

  it.each(['gzip', 'deflate', 'br'])('answers a login body whose %s encoding is corrupt with 400 bad_request, without asking user-service', async (encoding) => {
    const before = reached();
    const reply = await send(url, '/api/auth/login', { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': encoding }, body: 'not compressed' });
    expectProblem(reply, 400, 'bad_request');
    expect(reached()).toBe(before);
    await expectStillServing();
  });

  /**
   * What Node's HTTP parser refuses never reaches Koa; `runServer` (otel/lifecycle.ts) answers it. startStack
   * uses a plain `listen`, so these rows run against the same gateway app served by `runServer` instead.
   */
  describe('at the HTTP parser (gateway served by runServer)', () => {
    let served: RunningServer;
    let servedLog: Record<string, unknown>[];

    beforeAll(async () => {
      const { logger, lines } = memoryLogger('gateway');
      servedLog = lines;
      served = await runServer({ app: createGateway(stack.config, { logger }), name: 'gateway', port: 0, host: '127.0.0.1', logger, drainTimeoutMs: 1000, appChecksHost: true });
    });
    afterAll(() => served.close());

    const host = () => new URL(served.url).host;
    const get = (extraHeaderLines: string) => `GET /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\n${extraHeaderLines}Connection: close\r\n\r\n`;

    // Markers no minted request id (32 hex digits, echoed in every answer) can contain by chance: `abc` could.
    const rows = [
      { desc: 'a bare CR inside X-Request-Id', raw: () => get('X-Request-Id: evil\rdef\r\n'), status: 400, code: 'bad_request', hostile: 'evil' },
      { desc: 'a bare LF inside X-Request-Id', raw: () => get('X-Request-Id: evil\ndef\r\n'), status: 400, code: 'bad_request', hostile: 'evil' },
      { desc: 'an obs-folded X-Request-Id (CR LF SP)', raw: () => get('X-Request-Id: evil\r\n def\r\n'), status: 400, code: 'bad_request', hostile: 'evil' },
      { desc: 'a 20 KB cookie', raw: () => get(`Cookie: session=${'c'.repeat(20 * 1024)}\r\n`), status: 431, code: 'headers_too_large', hostile: 'ccccccccccccccccccc' },
      { desc: 'a garbage request line', raw: () => 'GARBAGE\r\n\r\n', status: 400, code: 'bad_request', hostile: 'GARBAGE' },
      // RFC 9110 9.1: a method the server does not recognise is 501, not a malformed request.
      { desc: 'an unknown method', raw: () => `FROBNICATE /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nX-Marker: method-marker\r\nConnection: close\r\n\r\n`, status: 501, code: 'method_not_implemented', hostile: 'method-marker' },
      { desc: 'a lower-case get', raw: () => `get /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nX-Marker: method-marker\r\nConnection: close\r\n\r\n`, status: 501, code: 'method_not_implemented', hostile: 'method-marker' },
      { desc: 'an unknown method before a target with a space in it (not a request line)', raw: () => `FROBNICATE /api/users 2 HTTP/1.1\r\nHost: ${host()}\r\n\r\n`, status: 400, code: 'bad_request', hostile: 'FROBNICATE' },
      // Versions the parser refuses: 505 as for the two it takes (below) and as the README says of any but 1.0 and 1.1,
      // not a 400 for a request that could not be parsed; one that is no HTTP-version (RFC 9112 2.3) is malformed.
      { desc: 'HTTP/1.2 in a request line', raw: () => `GET /api/users/2 HTTP/1.2\r\nHost: ${host()}\r\n\r\n`, status: 505, code: 'http_version_not_supported', hostile: '1.2' },
      { desc: 'HTTP/3.0 in a request line', raw: () => `GET /api/users/2 HTTP/3.0\r\nHost: ${host()}\r\n\r\n`, status: 505, code: 'http_version_not_supported', hostile: '3.0' },
      { desc: 'an unknown HTTP version', raw: () => `GET /api/users/2 HTTP/9.9\r\nHost: ${host()}\r\n\r\n`, status: 505, code: 'http_version_not_supported', hostile: '9.9' },
      { desc: 'a version that is not HTTP/<digit>.<digit>', raw: () => `GET /api/users/2 HTTP/1.10\r\nHost: ${host()}\r\n\r\n`, status: 400, code: 'bad_request', hostile: '1.10' },
      { desc: 'a header line without a colon', raw: () => get('NoColonHere\r\n'), status: 400, code: 'bad_request', hostile: 'NoColonHere' },
      { desc: 'whitespace before a header colon', raw: () => get('X-Request-Id : evil\r\n'), status: 400, code: 'bad_request', hostile: 'evil' },
      {
        desc: 'both Content-Length and Transfer-Encoding (request smuggling)',
        raw: () => `POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: smuggled-marker\r\nContent-Type: application/json\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/users/1 HTTP/1.1\r\nHost: ${host()}\r\n\r\n`,
        status: 400,
        code: 'bad_request',
        hostile: 'smuggled-marker',
      },
      { desc: 'two different Content-Length values', raw: () => `POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: smuggled-marker\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}`, status: 400, code: 'bad_request', hostile: 'smuggled-marker' },
      // Node answers these two itself unless runServer leaves Host to the app: a bare 400 with no request id.
      { desc: 'an HTTP/1.1 request without Host', raw: () => `GET /api/users/2 HTTP/1.1\r\nAuthorization: Bearer ${bob}\r\nX-Marker: no-host-marker\r\nConnection: close\r\n\r\n`, status: 400, code: 'bad_request', hostile: 'no-host-marker' },
      { desc: 'an absolute-form HTTP/1.1 request without Host', raw: () => `GET http://${host()}/api/users/2 HTTP/1.1\r\nAuthorization: Bearer ${bob}\r\nX-Marker: no-host-marker\r\nConnection: close\r\n\r\n`, status: 400, code: 'bad_request', hostile: 'no-host-marker' },
      // Node's parser takes these and removes only the chunking: the service would get gzip-coded bytes as plain.
      { desc: 'a gzip-coded chunked body', raw: () => `POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Marker: coded-marker\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`, status: 501, code: 'unsupported_transfer_coding', hostile: 'coded-marker', detail: 'The gateway takes request bodies as they are or chunked; no other transfer coding.' },
      { desc: 'an identity, chunked body', raw: () => `POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Marker: coded-marker\r\nContent-Type: application/json\r\nTransfer-Encoding: identity, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`, status: 501, code: 'unsupported_transfer_coding', hostile: 'coded-marker' },
      // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing. A front proxy that goes by
      // HTTP/1.0 would take the GET after the chunks for part of the body; the gateway must not run it.
      {
        desc: 'an HTTP/1.0 request with a chunked body and a request after it',
        raw: () => `POST /api/orders HTTP/1.0\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Marker: chunked-10-marker\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\n\r\n`,
        status: 400,
        code: 'bad_request',
        hostile: 'chunked-10-marker',
      },
      // RFC 9112 3.2: no request target has a fragment; Koa's parser would drop it and route what is left.
      { desc: 'a fragment after the path', raw: () => `GET /api/users/2#fragment-marker HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Marker: fragment-marker\r\nConnection: close\r\n\r\n`, status: 400, code: 'bad_request', hostile: 'fragment-marker' },
      { desc: 'a fragment that names another path', raw: () => `GET /api/orders#/../users/1 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Marker: fragment-marker\r\nConnection: close\r\n\r\n`, status: 400, code: 'bad_request', hostile: 'fragment-marker' },
      { desc: 'a fragment after the query', raw: () => `GET /api/orders?page=1#fragment-marker HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Marker: fragment-marker\r\nConnection: close\r\n\r\n`, status: 400, code: 'bad_request', hostile: 'fragment-marker' },
      // Node answers this itself unless runServer passes it on: a bare 417 with no request id.
      { desc: 'an Expect other than 100-continue', raw: () => get('Expect: evil-expectation\r\n'), status: 417, code: 'expectation_failed', hostile: 'evil-expectation' },
    ];

    /**
     * Resolves once a request sent now was served and logged. A request pipelined behind a refused one, had it run,
     * was dispatched before this one: checked only after it, its absence is no longer checked too early (the reply's
     * close came before the service and the access log would have seen it).
     */
    async function servedAfterASentinel(): Promise<void> {
      const sentinel = nextRequestId();
      expect((await send(served.url, '/api/users/2', { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: sentinel } })).status).toBe(200);
      await waitFor(() => servedLog.some((line) => line.message === 'request completed' && line.request_id === sentinel));
    }

    it.each(rows)('answers $desc with $status problem+json, reaching no service', async ({ raw, status, code, hostile, detail }) => {
      const before = reached();
      const reply = await sendRaw(served.url, raw());
      expect(reply.status).toBe(status);
      expect(headerOf(reply, 'content-type')).toBe('application/problem+json');
      expect(JSON.parse(reply.text)).toMatchObject(detail === undefined ? { status, code } : { status, code, detail });
      expect(JSON.stringify(reply.headers)).not.toContain(hostile);
      // The sentinel alone reached a service: nothing of the row did, nor anything smuggled behind it.
      await servedAfterASentinel();
      expect(reached()).toBe(before + 1);
    });

    // Kept apart from the row above so a missing id does not hide whether the rest held.
    it.each(rows)('gives the answer to $desc a minted request id, the same in header and body', async ({ raw }) => {
      const reply = await sendRaw(served.url, raw());
      const problem = JSON.parse(reply.text) as Partial<Problem>;
      expect(headerOf(reply, HEADER.requestId)).toMatch(MINTED_REQUEST_ID);
      expect(problem.requestId).toBe(headerOf(reply, HEADER.requestId));
    });

    it('serves an ordinary request through runServer', async () => {
      await expectStillServing(served.url);
    });

    /**
     * Everything the gateway sends back on one connection for `raw`, until it closes it (or 5 s pass); `afterAnswer`
     * is written once the first bytes of an answer arrived, so it reaches the gateway in a read of its own.
     */
    function exchangeRaw(raw: string, afterAnswer?: string): Promise<{ text: string; closedByGateway: boolean }> {
      const { port } = new URL(served.url);
      return new Promise((resolve) => {
        const socket = net.connect(Number(port), '127.0.0.1', () => socket.write(raw));
        const chunks: Buffer[] = [];
        if (afterAnswer !== undefined) socket.once('data', () => socket.write(afterAnswer));
        socket.on('data', (chunk: Buffer) => chunks.push(chunk));
        socket.on('error', () => undefined);
        const timer = setTimeout(() => {
          socket.destroy();
          resolve({ text: Buffer.concat(chunks).toString('latin1'), closedByGateway: false });
        }, 5000);
        socket.on('close', () => {
          clearTimeout(timer);
          resolve({ text: Buffer.concat(chunks).toString('latin1'), closedByGateway: true });
        });
      });
    }
    const answersIn = (text: string) => (text.match(/HTTP\/1\.1 \d{3} /g) ?? []).length;

    it('answers pipelined requests in order, one at a time', async () => {
      const ids = Array.from({ length: 10 }, () => nextRequestId());
      const { text } = await exchangeRaw(ids.map((id, index) => `GET /health HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: ${id}\r\n${index === ids.length - 1 ? 'Connection: close\r\n' : ''}\r\n`).join(''));
      expect(answersIn(text)).toBe(10);
      expect([...text.matchAll(/x-request-id: (\S+)/gi)].map((match) => match[1])).toEqual(ids);
    });

    it('closes a connection that pipelines more requests than it may have waiting (they were all held in memory)', async () => {
      const { text, closedByGateway } = await exchangeRaw(`GET /health HTTP/1.1\r\nHost: ${host()}\r\n\r\n`.repeat(2000));
      expect(closedByGateway).toBe(true);
      expect(answersIn(text)).toBeLessThan(100);
      await waitFor(() => servedLog.some((line) => line.message === 'closed a connection that pipelined too many requests'));
      await expectStillServing(served.url);
    });

    it('processes nothing pipelined behind an answer that closes the connection (a refused upload), not even a DELETE', async () => {
      const deleteId = nextRequestId();
      // A refused Expect: 100-continue upload is answered 401 with Connection: close; the client sent its body anyway
      // (it may), and a DELETE right behind it, all in one write.
      const reply = await sendRaw(
        served.url,
        `POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}` +
          `DELETE /api/orders/42 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${deleteId}\r\n\r\n`,
      );
      expect(reply.status).toBe(401);
      expect(reply.text.match(/HTTP\/1\.1 /g) ?? []).toEqual([]);
      // A request sent after the connection closed reaches the service; the DELETE, parsed before it, never does.
      const sentinel = nextRequestId();
      expect((await send(served.url, '/api/users/2', { headers: { authorization: `Bearer ${bob}`, [HEADER.requestId]: sentinel } })).status).toBe(200);
      await waitFor(() => servedLog.some((line) => line.message === 'request completed' && line.request_id === sentinel));
      expect(seenWithRequestId(sentinel)).toHaveLength(1);
      expect(seenWithRequestId(deleteId)).toEqual([]);
      expect(servedLog.filter((line) => line.request_id === deleteId)).toEqual([]);
    });

    it('closes the connection after refusing a request without Host: nothing pipelined behind it runs', async () => {
      const behind = nextRequestId();
      const { text, closedByGateway } = await exchangeRaw(`GET /api/users/2 HTTP/1.1\r\nAuthorization: Bearer ${bob}\r\n\r\nGET /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${behind}\r\n\r\n`);
      expect(closedByGateway).toBe(true);
      expect(answersIn(text)).toBe(1);
      expect(text).toMatch(/^HTTP\/1\.1 400 /);
      await servedAfterASentinel();
      expect(seenWithRequestId(behind)).toEqual([]);
      expect(servedLog.filter((line) => line.request_id === behind)).toEqual([]);
    });

    it('answers a request once when its body breaks after it was answered (a 401 before the upload was read)', async () => {
      const requestId = nextRequestId();
      const { text, closedByGateway } = await exchangeRaw(`POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: ${requestId}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`, 'zz\r\nabcd\r\n');
      expect(closedByGateway).toBe(true);
      expect(answersIn(text)).toBe(1);
      expect(text).toMatch(/^HTTP\/1\.1 401 /);
      expect(text).toContain(requestId);
    });

    it('serves an HTTP/1.0 request without Host', async () => {
      const reply = await sendRaw(served.url, 'GET /health HTTP/1.0\r\n\r\n');
      expect(reply.status).toBe(200);
    });

    // Node stops parsing a read at the end of a request with `Upgrade` + `Connection: upgrade`, drops the rest of
    // that read, and parses the next read as a new request: a front proxy's next request, cut apart.
    it('closes the connection after a request with Upgrade, so bytes after it are never run as requests of their own', async () => {
      const first = nextRequestId();
      const lost = nextRequestId();
      const smuggled = nextRequestId();
      const { text, closedByGateway } = await exchangeRaw(
        `GET /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${first}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n` +
          `GET /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${lost}\r\n\r\n`,
        // What a front proxy would send next on the connection (the body of its next request, say): a read of its own.
        `GET /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${smuggled}\r\n\r\n`,
      );
      expect(closedByGateway).toBe(true);
      expect(answersIn(text)).toBe(1);
      expect(text).toMatch(/\r\nConnection: close\r\n/i);
      expect(text).toContain(first);
      expect(seenWithRequestId(first)).toHaveLength(1);
      await servedAfterASentinel();
      expect(seenWithRequestId(smuggled)).toEqual([]);
      expect(seenWithRequestId(lost)).toEqual([]);
      expect(servedLog.filter((line) => line.request_id === smuggled)).toEqual([]);
      await expectStillServing(served.url);
    });

    // Node reports the bytes after a request's `Connection: close` as a parser error while that request is in flight.
    it('answers a request whose Connection: close is followed by more bytes as it deserves, not with a 400 for those bytes', async () => {
      const requestId = nextRequestId();
      const { text, closedByGateway } = await exchangeRaw(
        `GET /api/users/2 HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n` + `GET /health HTTP/1.1\r\nHost: ${host()}\r\n\r\n`,
      );
      expect(closedByGateway).toBe(true);
      expect(text).toMatch(/^HTTP\/1\.1 200 /);
      expect(answersIn(text)).toBe(1);
      await waitFor(() => servedLog.some((line) => line.message === 'request completed' && line.request_id === requestId), 'the access-log line');
      expect(servedLog.find((line) => line.message === 'request completed' && line.request_id === requestId)).toMatchObject({ status: 200, error_code: null });
      expect(servedLog.filter((line) => line.message === 'request failed' && line.request_id === requestId)).toEqual([]);
    });

    // The head was good, so the request is already in the pipeline (the proxy may have begun forwarding it) when
    // its body breaks the parser: the answer comes through the request's own response, with the id it was given.
    it.each([
      { desc: 'a chunk size line ended by a bare LF', chunks: '4\nabcd\r\n0\r\n\r\n' },
      { desc: 'a chunk size that is not hex', chunks: 'zz\r\nabcd\r\n0\r\n\r\n' },
    ])('answers a body with $desc with 400 problem+json carrying the request id, and logs the 400', async ({ chunks }) => {
      const requestId = nextRequestId();
      const reply = await sendRaw(served.url, `POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${requestId}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${chunks}`);
      expect(expectProblem(reply, 400, 'bad_request').requestId).toBe(requestId);
      expect(headerOf(reply, 'connection')).toBe('close');
      await waitFor(() => servedLog.some((line) => line.request_id === requestId), 'the access-log line');
      expect(servedLog.find((line) => line.request_id === requestId)).toMatchObject({ status: 400 });
      await expectStillServing(served.url);
    });

    // Node would answer `Expect: 100-continue` before the pipeline ran: an upload invited, then refused.
    it('answers Expect: 100-continue without a token with the 401 alone, never inviting the upload', async () => {
      const requestId = nextRequestId();
      const reply = await sendRaw(served.url, `POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: ${requestId}\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`);
      expect(expectProblem(reply, 401, 'missing_token').requestId).toBe(requestId);
      expect(reply.text).not.toContain('100 Continue');
      expect(seenWithRequestId(requestId)).toEqual([]);
    });

    // The proxy reads a body before it asks the service (proxy.requestBufferBytes): it invites the upload itself,
    // once, when it is about to read it; the service is sent the body, never the expectation (hop-by-hop here).
    it('answers Expect: 100-continue on a proxied route once, and forwards the body without the expectation', async () => {
      const requestId = nextRequestId();
      const reply = await sendRaw(served.url, `POST /api/orders HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${requestId}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n{}`);
      // The first head read is the interim one; the rest is the final answer, with no second 100 before it.
      expect(reply.status).toBe(100);
      expect(reply.text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
      expect(reply.text).toContain('"service":"order-service"');
      expect(seenWithRequestId(requestId)).toHaveLength(1);
      expect(seenWithRequestId(requestId)[0]?.headers.expect).toBeUndefined();
    });

    // RFC 9110 10.1.1 and 15.2: an HTTP/1.0 client's 100-continue is ignored, and it is sent no 1xx, which it
    // would take for the final answer (and the real one after it for garbage).
    it('sends an HTTP/1.0 client with Expect: 100-continue no 100 Continue, only the final answer', async () => {
      const requestId = nextRequestId();
      const body = JSON.stringify({ name: 'Expecting', email: `expect-${requestId}@example.com`, password: 'long enough' });
      const reply = await sendRaw(served.url, `POST /api/auth/register HTTP/1.0\r\nHost: ${host()}\r\nX-Request-Id: ${requestId}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nExpect: 100-continue\r\n\r\n${body}`);
      expect(reply.status).toBe(201);
      expect(reply.text).not.toContain('100 Continue');
      expect(seenWithRequestId(requestId)).toHaveLength(1);
    });

    // The login's parser refused these from the head alone, but only after 100 Continue had invited the upload.
    it.each([
      { desc: 'a declared length over auth.loginBodyLimitBytes', headers: 'Content-Length: 5000000\r\n', status: 413, code: 'payload_too_large' },
      // The limit counted decoded bytes only: a gzip body of 50 MB was invited and read whole (empty stored blocks
      // decode to nothing), as the README says it is not.
      { desc: 'a gzip body whose declared length is over auth.loginBodyLimitBytes', headers: 'Content-Encoding: gzip\r\nContent-Length: 50000000\r\n', status: 413, code: 'payload_too_large' },
      { desc: 'a content coding the gateway cannot decode', headers: 'Content-Encoding: compress\r\nContent-Length: 60\r\n', status: 415, code: 'unsupported_media_type' },
      { desc: 'two codings applied one after the other', headers: 'Content-Encoding: gzip, gzip\r\nContent-Length: 60\r\n', status: 415, code: 'unsupported_media_type' },
      { desc: 'an unknown coding beside identity', headers: 'Content-Encoding: identity, compress\r\nContent-Length: 60\r\n', status: 415, code: 'unsupported_media_type' },
    ])('answers Expect: 100-continue on login with $desc with the $status alone, never inviting the upload', async ({ headers, status, code }) => {
      const requestId = nextRequestId();
      const reply = await sendRaw(served.url, `POST /api/auth/login HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: ${requestId}\r\nContent-Type: application/json\r\n${headers}Expect: 100-continue\r\nConnection: close\r\n\r\n`);
      expect(expectProblem(reply, status, code).requestId).toBe(requestId);
      expect(reply.text).not.toContain('100 Continue');
      if (status === 415) expect(headerOf(reply, 'accept-encoding')).toBe('gzip, deflate, br');
    });

    // Kept alive, Node read and dropped every declared byte at the client's pace: 15 GiB in 10 s of a 100 GB body.
    // Before the media type's 415s too: a text/plain one was refused with the connection kept, and read whole as well.
    it.each(['application/json', 'text/plain'])('closes the connection after a login 413 for a declared length over the limit (%s), as the proxy does', async (contentType) => {
      const requestId = nextRequestId();
      const reply = await sendRaw(served.url, `POST /api/auth/login HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: ${requestId}\r\nContent-Type: ${contentType}\r\nContent-Length: 100000000000\r\n\r\n{"email":`);
      expect(expectProblem(reply, 413, 'payload_too_large').requestId).toBe(requestId);
      expect(headerOf(reply, 'connection')).toBe('close');
    });

    // Only a declared length bounds a coded body's bytes: chunked, 5-byte empty deflate blocks (decoding to nothing)
    // were read and inflated without end, 2.3 GB in 8 s against the 16 KiB limit, until the request timeout.
    it.each(['gzip', 'deflate', 'br'])('refuses a %s login body without Content-Length with 411, reading none of it', async (coding) => {
      const requestId = nextRequestId();
      const emptyBlocks = Buffer.concat(Array.from({ length: 64 }, () => Buffer.from([0x00, 0x00, 0x00, 0xff, 0xff])));
      const chunk = `${emptyBlocks.length.toString(16)}\r\n${emptyBlocks.toString('latin1')}\r\n`;
      const reply = await sendRaw(served.url, `POST /api/auth/login HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: ${requestId}\r\nContent-Type: application/json\r\nContent-Encoding: ${coding}\r\nTransfer-Encoding: chunked\r\n\r\n${chunk.repeat(4)}`);
      expect(expectProblem(reply, 411, 'length_required').requestId).toBe(requestId);
      expect(headerOf(reply, 'connection')).toBe('close');
    });

    // JSON.parse keeps the last of two equal keys: Alice's email first, Bob's last, logged in as Bob while anything
    // in front that read the first key saw Alice. And a password of unpaired surrogates is U+FFFD once hashed.
    it.each([
      { desc: 'an email given twice', body: '{"email":"alice@example.com","email":"bob@example.com","password":"builder"}' },
      { desc: 'a password given twice', body: '{"email":"bob@example.com","password":"wrong","password":"builder"}' },
      { desc: 'a password of unpaired surrogates', body: JSON.stringify({ email: 'bob@example.com', password: '\udc00'.repeat(8) }) },
      // Each byte that is not UTF-8 is read as U+FFFD: `d\xE9j\xE0-vu!` and `d\xFFj\xFF-vu!` were one password.
      { desc: 'a password in bytes that are not UTF-8', body: Buffer.from('{"email":"bob@example.com","password":"d\xe9j\xe0-vu!"}', 'latin1') },
      // Under the 16 KiB limit, deeper than a recursive scan for duplicate keys would survive.
      { desc: 'nesting 8,000 levels deep', body: `{"email":"bob@example.com","password":"builder","x":${'['.repeat(8000)}${']'.repeat(8000)}}` },
    ])('refuses a login body with $desc with 400 invalid_body, asking user-service nothing', async ({ body }) => {
      const before = stack.users.requests.length;
      const reply = await send(served.url, '/api/auth/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      expect(reply.status).toBe(400);
      expect(JSON.parse(reply.text)).toMatchObject({ code: 'invalid_body' });
      expect(stack.users.requests.length).toBe(before);
    });

    // A small gzip body that inflates past the limit: the parser's own "request entity too large" went out as the detail.
    it('refuses a login body that inflates past the limit with 413 naming the limit, asking user-service nothing', async () => {
      const before = stack.users.requests.length;
      const body = gzipSync(JSON.stringify({ email: 'bob@example.com', password: 'builder', padding: ' '.repeat(100_000) }));
      const reply = await send(served.url, '/api/auth/login', { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body });
      expect(reply.status).toBe(413);
      expect(JSON.parse(reply.text)).toMatchObject({ code: 'payload_too_large', detail: expect.stringMatching(/^The login body is larger than \d+ bytes\.$/) });
      expect(stack.users.requests.length).toBe(before);
    });

    // `identity` too: the parser's own match of it is as case-sensitive as of the others.
    it.each([
      { coding: 'GZIP', encode: (text: string) => gzipSync(text) },
      { coding: 'Identity', encode: (text: string) => Buffer.from(text) },
      { coding: 'IDENTITY', encode: (text: string) => Buffer.from(text) },
      // `identity` is no coding (RFC 9110 8.4.1): in a list it changes nothing.
      { coding: 'gzip, identity', encode: (text: string) => gzipSync(text) },
      { coding: 'identity, gzip', encode: (text: string) => gzipSync(text) },
      { coding: ' Identity ,GZIP ', encode: (text: string) => gzipSync(text) },
      { coding: 'identity,identity', encode: (text: string) => Buffer.from(text) },
      { coding: 'identity, br', encode: (text: string) => brotliCompressSync(text) },
    ])('takes a login body whose content coding is named in another case or beside identity ($coding: coding names are case-insensitive)', async ({ coding, encode }) => {
      const body = encode(JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }));
      const reply = await send(served.url, '/api/auth/login', { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': coding }, body });
      expect(reply.status).toBe(200);
    });

    it('sends 100 Continue once the checks passed and the body is read, then forwards the body', async () => {
      const requestId = nextRequestId();
      const body = JSON.stringify({ name: 'Expecting', email: `expect-${requestId}@example.com`, password: 'long enough' });
      const { port } = new URL(served.url);
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = net.connect(Number(port), '127.0.0.1', () =>
          socket.write(`POST /api/auth/register HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: ${requestId}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`),
        );
        let received = '';
        let sent = false;
        socket.setTimeout(5000, () => socket.destroy(new Error('no answer within 5 s')));
        socket.on('data', (chunk: Buffer) => {
          received += chunk.toString('latin1');
          // The body goes only after the interim answer: a gateway that never sends it gets no body, and times out.
          if (!sent && received.startsWith('HTTP/1.1 100 Continue\r\n\r\n')) {
            sent = true;
            socket.write(body);
          }
        });
        socket.on('error', reject);
        socket.on('close', () => resolve(received));
      });
      expect(answer).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 201 /);
      expect(seenWithRequestId(requestId)).toHaveLength(1);
    });

    it.each([
      { desc: 'OPTIONS * (the server as a whole)', line: 'OPTIONS * HTTP/1.1', status: 204 },
      { desc: 'GET *', line: 'GET * HTTP/1.1', status: 400 },
    ])('answers $desc with $status, reaching no service', async ({ line, status }) => {
      const requestId = nextRequestId();
      const reply = await sendRaw(served.url, `${line}\r\nHost: ${host()}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n`);
      if (status === 204) {
        expect(reply.status).toBe(204);
        expect(headerOf(reply, 'allow')).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
        expect(headerOf(reply, HEADER.requestId)).toBe(requestId);
      } else {
        expectProblem(reply, status, 'bad_request');
      }
      expect(seenWithRequestId(requestId)).toEqual([]);
    });

    // HTTP/1.0 may name no host: the service is told the address the client connected to, not an empty host.
    it('forwards an HTTP/1.0 request without Host with the address the client reached as X-Forwarded-Host', async () => {
      const requestId = nextRequestId();
      const reply = await sendRaw(served.url, `GET /api/users/2 HTTP/1.0\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${requestId}\r\n\r\n`);
      expect(reply.status).toBe(200);
      expect(seenWithRequestId(requestId)[0]?.headers).toMatchObject({ 'x-forwarded-host': host(), 'x-forwarded-port': new URL(served.url).port });
    });

    // Node keeps the first Host of several; a hop that keeps the last would judge another host (RFC 9112 3.2: 400).
    it.each([
      { desc: 'two different Host field lines', hosts: () => [host(), 'evil.example'] },
      { desc: 'two equal Host field lines', hosts: () => [host(), host()] },
    ])('answers $desc with 400 problem+json, reaching no service', async ({ hosts }) => {
      const requestId = nextRequestId();
      const hostLines = hosts().map((each) => `Host: ${each}\r\n`).join('');
      const reply = await sendRaw(served.url, `GET /api/users/2 HTTP/1.1\r\n${hostLines}Authorization: Bearer ${bob}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n`);
      expect(expectProblem(reply, 400, 'bad_request').requestId).toBe(requestId);
      expect(seenWithRequestId(requestId)).toEqual([]);
    });

    // Node's HTTP/1 parser takes these two versions (others it refuses: the table above); the gateway must not serve them as
    // HTTP/1.1 while its HTTP/2 rules, spans and proxy read another protocol (one such request crashed the TLS
    // listener: tls-http2.test.ts).
    it.each([
      { desc: 'HTTP/2.0 in an HTTP/1 request line', version: 'HTTP/2.0' },
      { desc: 'HTTP/0.9 in a request line', version: 'HTTP/0.9' },
    ])('answers $desc with 505 problem+json, reaching no service', async ({ version }) => {
      const requestId = nextRequestId();
      const reply = await sendRaw(served.url, `GET /api/users/2 ${version}\r\nHost: ${host()}\r\nAuthorization: Bearer ${bob}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n`);
      const problem = expectProblem(reply, 505, 'http_version_not_supported');
      expect(problem.requestId).toBe(requestId);
      // What the client may send instead: a 5xx's detail is hidden by default, and only the title went out.
      expect(problem.detail).toBe('The gateway speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (by ALPN over TLS).');
      expect(seenWithRequestId(requestId)).toEqual([]);
      await expectStillServing(served.url);
    });
  });
});

describe('CONNECT at the built gateway (an uncaught socket error ends the process)', () => {
  it.each([
    // Answered 405 (runServer's refuseConnect), then reset by the client.
    ['a CONNECT whose client then resets the connection', 'CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n', 405],
    // Node closes the connection once the answer in flight is out.
    ['a CONNECT pipelined behind a request still being answered', 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nCONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n', 200],
  ])('survives %s', async (_desc, raw, firstStatus) => {
    const gateway = spawnGateway({ NODE_ENV: 'test' });
    try {
      const { url } = (await gateway.waitForLine('gateway listening')) as { url: string };
      const socket = net.connect(Number(new URL(url).port), '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise((resolve) => socket.once('connect', resolve));
      const closed = new Promise((resolve) => socket.once('close', resolve));
      socket.write(raw);
      // Once the gateway answered or closed, the client resets its end.
      const answer = await Promise.race([new Promise<Buffer>((resolve) => socket.once('data', resolve)), closed]);
      expect(String(answer)).toMatch(new RegExp(`^HTTP/1\\.1 ${firstStatus} `));
      if (!socket.destroyed) socket.resetAndDestroy();
      await closed;
      expect((await fetch(`${url}/health`)).status).toBe(200);
      expect(gateway.child.exitCode).toBeNull();
    } finally {
      gateway.child.kill('SIGKILL');
    }
  });
});
