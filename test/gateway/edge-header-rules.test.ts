import http from 'node:http';
import fc from 'fast-check';
import { HEADER, isForwardingHeader } from '../../otel/wire-names';
import { isForbiddenClientHeader, upstreamRequestHeaders, type UnderscoreHeaderPolicy } from '../../src/upstream-headers';
import { sendRaw } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown>;
}

/** One request with the Host and other headers exactly as given (fetch would not let Host through). */
async function send(origin: string, path: string, headers: http.OutgoingHttpHeaders, method = 'GET'): Promise<Reply> {
  const { status, headers: replyHeaders, text } = await sendRaw(origin, path, headers, method);
  return { status, headers: replyHeaders, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

describe('allowed hosts', () => {
  let stack: TestStack;
  let token: string;
  let requestCount = 0;
  const seen = (requestId: string) => stack.serviceRequests().filter((request) => request.headers[HEADER.requestId] === requestId);

  /** GET (or `method`) `target` as Bob with this Host: the gateway's own `status` `code`, with the request id, and no service asked. */
  async function expectRefused(target: string, host: string, status: number, code: string, method = 'GET'): Promise<Reply> {
    const requestId = `host-${++requestCount}`;
    const reply = await send(stack.gateway.url, target, { host, authorization: `Bearer ${token}`, [HEADER.requestId]: requestId }, method);
    expect(reply.status).toBe(status);
    expect(reply.body).toMatchObject({ code, requestId });
    expect(seen(requestId)).toHaveLength(0);
    return reply;
  }

  beforeAll(async () => {
    stack = await startStack({ env: { ALLOWED_HOSTS: 'api.example.test, *.apps.example.test, 127.0.0.1, [2001:db8:0:0:0:0:0:1]' } });
    token = await login(stack.gateway.url, 'bob@example.com', 'builder');
  });
  afterAll(() => stack.close());

  it.each([
    { desc: 'another IPv6 address', host: '[2001:db8::2]' },
    { desc: 'an unknown host', host: 'evil.example' },
    { desc: 'an allowed name as a prefix of another', host: 'api.example.test.evil.example' },
    { desc: 'the apex of a wildcard', host: 'apps.example.test' },
    { desc: 'an unknown host in upper case', host: 'EVIL.EXAMPLE' },
    { desc: 'a look-alike suffix', host: 'evilapps.example.test' },
    { desc: 'an empty Host', host: '' },
  ])('answers $desc ($host) with 421 host_not_allowed, reaching no service', async ({ host }) => {
    await expectRefused('/api/users/2', host, 421, 'host_not_allowed');
  });

  it.each([
    { desc: 'a path after the name', host: 'api.example.test/evil' },
    { desc: 'userinfo before the name', host: 'evil.example@api.example.test' },
    { desc: 'a space', host: 'api.example.test evil.example' },
    { desc: 'an IPv6 address without brackets', host: '::1:8080' },
  ])('answers a Host with $desc with 400 bad_request, reaching no service (RFC 9112 3.2)', async ({ host }) => {
    await expectRefused('/api/users/2', host, 400, 'bad_request');
  });

  // Answered before the host guard ran, `OPTIONS *` got its 204 for any Host.
  it('answers OPTIONS * for a host it does not serve with 421, and for one it serves with 204', async () => {
    await expectRefused('*', 'evil.example', 421, 'host_not_allowed', 'OPTIONS');
    const served = await send(stack.gateway.url, '*', { host: 'api.example.test' }, 'OPTIONS');
    expect(served.status).toBe(204);
    expect(served.headers.allow).toContain('OPTIONS');
  });

  // RFC 9112 3.2.2: a server accepts an absolute-form target and goes by its authority, not by Host.
  it('judges an absolute-form target by its authority: an unknown one gets 421 whatever Host says', async () => {
    const reply = await expectRefused('http://evil.example/api/users/2', 'api.example.test', 421, 'host_not_allowed');
    expect(reply.body).toMatchObject({ instance: '/api/users/2' });
  });

  it('serves an absolute-form target naming an allowed host, routed on its path and forwarded with its authority', async () => {
    const requestId = `host-${++requestCount}`;
    const reply = await send(stack.gateway.url, 'http://api.example.test:8443/api/users/2?view=full', { host: 'evil.example', authorization: `Bearer ${token}`, [HEADER.requestId]: requestId });
    expect(reply.status).toBe(200);
    const [request] = seen(requestId);
    expect(request?.url).toBe('/users/2?view=full');
    expect(request?.headers['x-forwarded-host']).toBe('api.example.test:8443');
  });

  it.each([
    { desc: 'another scheme', target: 'ftp://api.example.test/api/users/2' },
    { desc: 'userinfo', target: 'http://evil.example@api.example.test/api/users/2' },
  ])('refuses an absolute-form target with $desc (400)', async ({ target }) => {
    await expectRefused(target, 'api.example.test', 400, 'bad_request');
  });

  it.each([
    { desc: 'an allowed name', host: 'api.example.test', forwardedHost: 'api.example.test' },
    { desc: 'an allowed name with a port', host: 'api.example.test:8443', forwardedHost: 'api.example.test:8443' },
    { desc: 'an allowed name in upper case', host: 'API.Example.TEST', forwardedHost: 'API.Example.TEST' },
    { desc: 'a subdomain of a wildcard', host: 'tenant-1.apps.example.test', forwardedHost: 'tenant-1.apps.example.test' },
    // The entry is written long, the clients short or in capitals: one address (RFC 5952), one answer. It was a 421.
    { desc: 'an allowed IPv6 address in its short form', host: '[2001:db8::1]', forwardedHost: '[2001:db8::1]' },
    { desc: 'an allowed IPv6 address in capitals, with a port', host: '[2001:DB8:0::1]:8443', forwardedHost: '[2001:DB8:0::1]:8443' },
  ])('serves $desc and forwards it as X-Forwarded-Host', async ({ host, forwardedHost }) => {
    const requestId = `host-${++requestCount}`;
    const reply = await send(stack.gateway.url, '/api/users/2', { host, authorization: `Bearer ${token}`, [HEADER.requestId]: requestId, 'x-forwarded-host': 'evil.example' });
    expect(reply.status).toBe(200);
    const [request] = seen(requestId);
    expect(request?.headers['x-forwarded-host']).toBe(forwardedHost);
    expect(request?.headers['x-forwarded-proto']).toBe('http');
  });

  it('still answers health probes that address the gateway by another name', async () => {
    expect((await send(stack.gateway.url, '/health', { host: '10.1.2.3:3000' })).status).toBe(200);
  });
});

describe('X-Forwarded-Host and -Proto from a trusted proxy', () => {
  let stack: TestStack;

  beforeAll(async () => {
    stack = await startStack({ overrides: { trustProxy: true, trustedProxies: ['127.0.0.1/32'], allowedHosts: ['api.example.test'] } });
  });
  afterAll(() => stack.close());

  it('forwards what the trusted proxy said, and checks that host against the allowed ones', async () => {
    const allowed = await send(stack.gateway.url, '/api/auth/register', { host: 'internal-lb:3000', 'x-forwarded-host': 'api.example.test', 'x-forwarded-proto': 'https', [HEADER.requestId]: 'trusted-1' }, 'GET');
    expect(allowed.status).toBe(405); // reached the route: the host was accepted
    const refused = await send(stack.gateway.url, '/api/users/2', { host: 'api.example.test', 'x-forwarded-host': 'evil.example', [HEADER.requestId]: 'trusted-2' });
    expect(refused.status).toBe(421);
  });
});

describe('header names with underscores, policy reject', () => {
  let stack: TestStack;

  beforeAll(async () => {
    stack = await startStack({ env: { HEADERS_WITH_UNDERSCORES: 'reject' } });
  });
  afterAll(() => stack.close());

  it.each([
    { desc: 'X_User_Id', name: 'X_User_Id' },
    { desc: 'a harmless-looking name', name: 'my_header' },
    { desc: 'X.User.Id (PHP reads it as X-User-Id)', name: 'X.User.Id' },
    { desc: 'a harmless-looking name with a dot', name: 'my.header' },
  ])('answers $desc with 400 header_not_allowed, reaching no service', async ({ name }) => {
    const before = stack.serviceRequests().length;
    const reply = await send(stack.gateway.url, '/api/auth/register', { [name]: '1' }, 'POST');
    expect(reply.status).toBe(400);
    expect(reply.body).toMatchObject({ code: 'header_not_allowed' });
    expect(stack.serviceRequests().length).toBe(before);
  });
});

describe('routes that opt in to forwardAuthorization', () => {
  let stack: TestStack;

  beforeAll(async () => {
    const routes = (shippedConfigFile().routes as { name: string }[]).map((route) => (route.name === 'orders' ? { ...route, forwardAuthorization: true } : route));
    stack = await startStack({ overrides: { routes } });
  });
  afterAll(() => stack.close());

  it('passes the token on to that route only', async () => {
    const token = await login(stack.gateway.url);
    await send(stack.gateway.url, '/api/orders', { authorization: `Bearer ${token}`, [HEADER.requestId]: 'fwd-orders' });
    await send(stack.gateway.url, '/api/users/1', { authorization: `Bearer ${token}`, [HEADER.requestId]: 'fwd-users' });
    const byId = (id: string) => stack.serviceRequests().find((request) => request.headers[HEADER.requestId] === id);
    expect(byId('fwd-orders')?.headers.authorization).toBe(`Bearer ${token}`);
    expect(byId('fwd-users')).toBeDefined();
    expect(byId('fwd-users')?.headers.authorization).toBeUndefined();
  });
});

describe('upstream request headers (property over generated client headers)', () => {
  /** Names a client might try: owned ones in every case and separator, rewriting ones, forwarding ones, ordinary ones. */
  const nameArbitrary = fc.oneof(
    fc.constantFrom('x-user-id', 'x-user-role', 'x-user-email', 'x-user-anything', 'x-gateway-timestamp', 'x-gateway-x', 'x-request-id', 'authorization', 'host'),
    fc.constantFrom('x_user_id', 'x-user_role', 'x_gateway_timestamp', 'x_request_id', 'x-request_id', 'x_api_key', 'x_forwarded_for', 'x_forwarded_host', 'x_real_ip', 'x_forwarded_client_cert'),
    // `.` twins: PHP makes every `.` of a `$_SERVER` key `_`, so `x.user.id` is `HTTP_X_USER_ID` there.
    fc.constantFrom('x.user.id', 'x.user-role', 'x-consumer.id', 'x.gateway_signature', 'x.request.id', 'x.api.key', 'x.forwarded.for', 'x.real.ip', 'x.http.method.override', 'remote.user', 'x.custom'),
    fc.constantFrom('x-http-method-override', 'x-original-url', 'x-rewrite-url', 'x-method-override'),
    fc.constantFrom('x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port'),
    fc.constantFrom('accept', 'content-type', 'x-custom', 'cookie', 'keep-alive', 'te', 'upgrade'),
  );

  it('always carries exactly the gateway’s owned values, whatever the client sent or listed in Connection', () => {
    fc.assert(
      fc.property(
        fc.dictionary(nameArbitrary, fc.stringMatching(/^[ -~]{0,20}$/), { maxKeys: 12 }),
        fc.array(nameArbitrary, { maxLength: 6 }),
        fc.constantFrom<UnderscoreHeaderPolicy>('drop', 'reject', 'allow'),
        fc.boolean(),
        fc.boolean(),
        (client, listed, underscores, authenticated, forwardAuthorization) => {
          const input = { ...client, ...(listed.length ? { connection: listed.join(', ') } : {}) };
          const user = authenticated ? { id: '2', role: 'user', email: 'bob@example.com' } : undefined;
          const headers = upstreamRequestHeaders({
            client: input,
            underscores,
            forwardAuthorization,
            targetHost: 'users:4001',
            requestId: 'gateway-id',
            user,
            peerAddress: '127.0.0.1',
            publicHost: 'api.example.test',
            publicProto: 'https',
            publicPort: '443',
            timestamp: '2026-12-01T00:00:00.000Z',
          });
          expect(headers).toMatchObject({ host: 'users:4001', [HEADER.requestId]: 'gateway-id', 'x-forwarded-host': 'api.example.test', 'x-forwarded-proto': 'https', 'x-forwarded-port': '443', [HEADER.gatewayTimestamp]: '2026-12-01T00:00:00.000Z' });
          const owned = Object.keys(headers).filter((name) => name.startsWith('x-user-') || name.startsWith('x-gateway-'));
          expect(owned.sort()).toEqual([HEADER.gatewayTimestamp, ...(user ? [HEADER.userEmail, HEADER.userId, HEADER.userRole] : [])].sort());
          if (user) expect(headers).toMatchObject({ [HEADER.userId]: '2', [HEADER.userRole]: 'user', [HEADER.userEmail]: 'bob@example.com' });
          // The chain is the (untrusted-free) client chain plus this peer; nothing else of the client's.
          expect(String(headers['x-forwarded-for']).endsWith('127.0.0.1')).toBe(true);
          for (const name of Object.keys(headers)) {
            if (underscores !== 'allow') expect(name.includes('_') || name.includes('.')).toBe(false);
            // The name as CGI-style servers read it: `_` as `-`, and `.` as `_` too in PHP's `$_SERVER`.
            const twin = name.replace(/[_.]/g, '-');
            if (twin !== name) {
              // Under `allow` too, no such twin of an owned or rewriting name.
              expect(isForbiddenClientHeader(twin, 'drop')).toBe(false);
              // Nor of a forwarding header, which only a trusted proxy may send (and never in that spelling).
              expect(isForwardingHeader(twin)).toBe(false);
              // Nor of a header the gateway writes or reads itself (the request id it sets, the API key it checks).
              expect([HEADER.requestId, HEADER.apiKey, 'host']).not.toContain(twin);
            }
            expect(['x-http-method-override', 'x-original-url', 'x-rewrite-url', 'x-method-override', 'connection', 'keep-alive', 'te', 'upgrade']).not.toContain(name);
          }
          expect('authorization' in headers).toBe(forwardAuthorization && 'authorization' in client && !listed.includes('authorization'));
        },
      ),
      { seed: 20261201, numRuns: 500 },
    );
  });
});
