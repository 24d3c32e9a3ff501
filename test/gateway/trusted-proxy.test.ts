import http from 'node:http';
import { ATTR_CLIENT_ADDRESS } from '@opentelemetry/semantic-conventions';
import fc from 'fast-check';
import { parseConfig } from '../../src/config';
import { startInMemoryTracing } from '../helpers/in-memory-tracing';
import { startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';

/** Rate-limit buckets follow the client address; which address counts decides who can dodge the limit. */
describe('client addresses behind proxies', () => {
  const statuses = async (stack: TestStack, forwardedFor: string[]) => {
    const result: number[] = [];
    for (const value of forwardedFor) {
      const response = await fetch(`${stack.gateway.url}/api/unknown-but-limited`, { headers: { 'x-forwarded-for': value } });
      await response.arrayBuffer();
      result.push(response.status);
    }
    return result;
  };

  it('ignores X-Forwarded-For when no proxy is trusted: spoofed addresses share one bucket', async () => {
    const stack = await startStack({ env: { RATE_LIMIT_MAX: '2' }, overrides: { routes: [{ name: 'limited', prefix: '/api/unknown-but-limited', service: 'users', upstreamPath: '/health', auth: 'public' }] } });
    try {
      expect(await statuses(stack, ['1.1.1.1', '2.2.2.2', '3.3.3.3'])).toEqual([200, 200, 429]);
      // And the service never sees the forged header.
      expect(stack.users.requests.every((request) => request.headers['x-forwarded-for'] === '127.0.0.1')).toBe(true);
    } finally {
      await stack.close();
    }
  });

  it('with one trusted hop, takes the right-most address: entries a client prepends are ignored', async () => {
    const stack = await startStack({
      env: { RATE_LIMIT_MAX: '2', TRUST_PROXY: 'true', TRUSTED_PROXY_HOPS: '1' },
      overrides: { routes: [{ name: 'limited', prefix: '/api/unknown-but-limited', service: 'users', upstreamPath: '/health', auth: 'public' }] },
    });
    try {
      // Same real client (203.0.113.7, written by the trusted proxy), different spoofed prefixes: one bucket.
      expect(await statuses(stack, ['6.6.6.6, 203.0.113.7', '7.7.7.7, 203.0.113.7', '8.8.8.8, 203.0.113.7'])).toEqual([200, 200, 429]);
      // Another real client has its own bucket.
      expect(await statuses(stack, ['6.6.6.6, 198.51.100.9'])).toEqual([200]);
    } finally {
      await stack.close();
    }
  });
  const limitedRoute = { routes: [{ name: 'limited', prefix: '/api/unknown-but-limited', service: 'users', upstreamPath: '/health', auth: 'public' }] };

  it('with trustedProxies, ignores X-Forwarded-* from a peer not on the list: it cannot pick its bucket', async () => {
    // The test client connects from 127.0.0.1, which is not a listed proxy.
    const stack = await startStack({ env: { RATE_LIMIT_MAX: '2', TRUST_PROXY: 'true' }, overrides: { ...limitedRoute, trustedProxies: ['10.0.0.0/8', 'fd00::/8'] } });
    try {
      expect(await statuses(stack, ['6.6.6.6, 203.0.113.7', '7.7.7.7, 198.51.100.9', '8.8.8.8'])).toEqual([200, 200, 429]);
      // What reaches the service is the gateway's own view: the peer, no client-chosen proto or host.
      const forwarded = await fetch(`${stack.gateway.url}/api/unknown-but-limited`, { headers: { 'x-forwarded-for': '192.0.2.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example', forwarded: 'for=192.0.2.1' } });
      await forwarded.arrayBuffer();
      const seen = stack.users.requests.at(-1)!.headers;
      expect(seen).toMatchObject({ 'x-forwarded-for': '127.0.0.1', 'x-forwarded-proto': 'http', 'x-forwarded-host': new URL(stack.gateway.url).host });
      expect(seen.forwarded).toBeUndefined();
    } finally {
      await stack.close();
    }
  });

  it('with trustedProxies, honours X-Forwarded-For from a listed peer (IPv4 CIDR)', async () => {
    const stack = await startStack({ env: { RATE_LIMIT_MAX: '2', TRUST_PROXY: 'true' }, overrides: { ...limitedRoute, trustedProxies: ['127.0.0.0/8'] } });
    try {
      expect(await statuses(stack, ['6.6.6.6, 203.0.113.7', '6.6.6.6, 203.0.113.7', '6.6.6.6, 203.0.113.7', '6.6.6.6, 198.51.100.9'])).toEqual([200, 200, 429, 200]);
    } finally {
      await stack.close();
    }
  });

  it.each([
    { desc: 'a prefix', sent: '/edge', told: '/edge/api' },
    { desc: 'a prefix with a trailing slash', sent: '/edge/', told: '/edge/api' },
    { desc: 'a list from two proxies', sent: '/outer, /edge', told: '/outer/edge/api' },
  ])('puts the route’s own prefix after $desc a trusted proxy sent in X-Forwarded-Prefix', async ({ sent, told }) => {
    const stack = await startStack({ env: { TRUST_PROXY: 'true' }, overrides: { routes: [{ name: 'stripped', prefix: '/api/stripped', service: 'users', upstreamPath: '/stripped', auth: 'public' }], trustedProxies: ['127.0.0.0/8'] } });
    try {
      await (await fetch(`${stack.gateway.url}/api/stripped/1`, { headers: { 'x-forwarded-prefix': sent } })).arrayBuffer();
      expect(stack.users.requests.map((request) => [request.url, request.headers['x-forwarded-prefix']])).toEqual([['/stripped/1', told]]);
    } finally {
      await stack.close();
    }
  });

  it.each([
    { desc: 'one trusted hop: the right-most entries', hops: '1', sent: { 'x-forwarded-host': 'evil.example, api.example', 'x-forwarded-proto': 'http, https', 'x-forwarded-port': '1, 8443', forwarded: 'host=evil.example;proto=http, for=192.0.2.1;host=api.example;ext="a, b"' }, told: { 'x-forwarded-host': 'api.example', 'x-forwarded-proto': 'https', 'x-forwarded-port': '8443', forwarded: 'for=192.0.2.1;host=api.example;ext="a, b"' } },
    { desc: 'two trusted hops: the outer proxy’s entries', hops: '2', sent: { 'x-forwarded-host': 'evil.example,api.example , inner.internal', 'x-forwarded-proto': 'http, HTTPS, http', 'x-forwarded-port': '1, 8443, 80', forwarded: 'host="evil.example, x",for=192.0.2.1;host=api.example , for=10.0.0.1;host=inner.internal' }, told: { 'x-forwarded-host': 'api.example', 'x-forwarded-proto': 'https', 'x-forwarded-port': '8443', forwarded: 'for=192.0.2.1;host=api.example, for=10.0.0.1;host=inner.internal' } },
    { desc: 'two trusted hops, one entry each', hops: '2', sent: { 'x-forwarded-host': 'api.example', 'x-forwarded-proto': 'https', 'x-forwarded-port': '8443', forwarded: 'for=192.0.2.1;host=api.example' }, told: { 'x-forwarded-host': 'api.example', 'x-forwarded-proto': 'https', 'x-forwarded-port': '8443', forwarded: 'for=192.0.2.1;host=api.example' } },
  ])('with $desc of X-Forwarded-Host/-Proto/-Port and Forwarded, not the ones a client prepended', async ({ hops, sent, told }) => {
    const stack = await startStack({ env: { TRUST_PROXY: 'true', TRUSTED_PROXY_HOPS: hops }, overrides: { ...limitedRoute, trustedProxies: ['127.0.0.0/8'], allowedHosts: ['api.example'] } });
    try {
      // The host guard reads the same host: the client's `evil.example` would be a 421.
      const response = await fetch(`${stack.gateway.url}/api/unknown-but-limited`, { headers: sent });
      await response.arrayBuffer();
      expect(response.status).toBe(200);
      expect(stack.users.requests.at(-1)!.headers).toMatchObject(told);
    } finally {
      await stack.close();
    }
  });

  // The trusted entry replaces Host for the host guard, and a `*.` entry matched by its end alone: a browser reads
  // `evil.com\.example.com` as evil.com, and the service built links and the gateway rewrote `Location` with it.
  it.each([
    { desc: 'a backslash before the allowed suffix', host: 'evil.com\\.example.com' },
    { desc: 'a slash before the allowed suffix', host: 'evil.com/.example.com' },
    { desc: 'userinfo', host: 'evil.com@api.example.com' },
    { desc: 'a space', host: 'evil.com .example.com' },
  ])('refuses an X-Forwarded-Host with $desc from a trusted proxy (400), as it would as Host', async ({ host }) => {
    const stack = await startStack({ env: { TRUST_PROXY: 'true' }, overrides: { ...limitedRoute, trustedProxies: ['127.0.0.0/8'], allowedHosts: ['*.example.com'] } });
    try {
      const response = await fetch(`${stack.gateway.url}/api/unknown-but-limited`, { headers: { 'x-forwarded-host': host } });
      expect(response.status).toBe(400);
      expect(((await response.json()) as { detail: string }).detail).toMatch(/X-Forwarded-Host/);
      // The same host, well formed, passes: the refusal is the syntax's, not the guard's.
      const fine = await fetch(`${stack.gateway.url}/api/unknown-but-limited`, { headers: { 'x-forwarded-host': 'evil.example.com' } });
      await fine.arrayBuffer();
      expect(fine.status).toBe(200);
      expect(stack.users.requests.map((request) => request.headers['x-forwarded-host'])).toEqual(['evil.example.com']);
    } finally {
      await stack.close();
    }
  });

  // A quote the client left open (or escaped shut) hid the proxy's comma when quotes were read by a toggle: the
  // whole value was one element and went on as it came, the client's `host` first (what Spring reads).
  describe('Forwarded whose quotes do not parse, behind a proxy that appends its own element', () => {
    const proxyElement = 'for=192.0.2.1;host=api.example;proto=https';
    let stack: TestStack;
    beforeAll(async () => {
      stack = await startStack({ env: { TRUST_PROXY: 'true', RATE_LIMIT_MAX: '100000' }, overrides: { ...limitedRoute, trustedProxies: ['127.0.0.0/8'], allowedHosts: ['api.example'] } });
    });
    afterAll(() => stack.close());
    const forwardedSeen = async (clientPart: string) => {
      const response = await fetch(`${stack.gateway.url}/api/unknown-but-limited`, { headers: { 'x-forwarded-host': 'api.example', forwarded: `${clientPart}, ${proxyElement}` } });
      await response.arrayBuffer();
      expect(response.status).toBe(200);
      return stack.users.requests.at(-1)!.headers.forwarded;
    };

    it.each([
      { desc: 'an unclosed quote at the end', clientPart: 'host=evil.example"' },
      { desc: 'a quoted string escaped shut', clientPart: 'host="evil.example\\"' },
      { desc: 'a quote inside a token', clientPart: 'host=evil"x' },
      { desc: 'a quote before a name', clientPart: '"host=evil.example' },
      { desc: 'text after a closing quote', clientPart: 'host="evil.example"x' },
    ])('drops the field for $desc, never passes the client’s element on', async ({ clientPart }) => {
      expect(await forwardedSeen(clientPart)).toBeUndefined();
    });

    it('keeps the proxy’s element after a client element whose quotes parse', async () => {
      expect(await forwardedSeen('host="evil.example, \\"x\\"";proto=http')).toBe(proxyElement);
    });

    it('passes on the proxy’s element or nothing, whatever the client prepends (generated)', async () => {
      const unit = fc.constantFrom(...'"\\,;= \tab=h'.split(''), 'host=', 'for=', '"x,y"', 'evil.example');
      await fc.assert(
        fc.asyncProperty(fc.array(unit, { minLength: 1, maxLength: 12 }).map((units) => units.join('').trim()), async (clientPart) => {
          fc.pre(clientPart !== '');
          const seen = await forwardedSeen(clientPart);
          expect(seen === undefined || seen === proxyElement).toBe(true);
        }),
        { seed: 35, numRuns: 150 },
      );
    });
  });

  it.each([
    { desc: 'a list from two proxies', sent: '/outer, /edge', told: '/outer/edge' },
    { desc: 'a prefix with a trailing slash', sent: '/edge/', told: '/edge' },
    { desc: 'one prefix', sent: '/edge', told: '/edge' },
  ])('passes on $desc a trusted proxy sent in X-Forwarded-Prefix as one prefix where the route takes none off', async ({ sent, told }) => {
    const stack = await startStack({ env: { TRUST_PROXY: 'true' }, overrides: { routes: [{ name: 'whole', prefix: '/api/whole', service: 'users', upstreamPath: '/elsewhere', auth: 'public' }], trustedProxies: ['127.0.0.0/8'] } });
    try {
      await (await fetch(`${stack.gateway.url}/api/whole/1`, { headers: { 'x-forwarded-prefix': sent } })).arrayBuffer();
      expect(stack.users.requests.map((request) => [request.url, request.headers['x-forwarded-prefix']])).toEqual([['/elsewhere/1', told]]);
    } finally {
      await stack.close();
    }
  });

  // fetch refuses to send `Connection`; Node's client sends it as given.
  const sendWithConnection = (origin: string, path: string, headers: http.OutgoingHttpHeaders) =>
    new Promise<number>((resolve, reject) => {
      const { hostname, port } = new URL(origin);
      http.request({ host: hostname, port: Number(port), path, headers, agent: false }, (response) => {
        response.resume();
        response.on('end', () => resolve(response.statusCode!));
      }).on('error', reject).end();
    });

  // A proxy that passed its client's `Connection` on would let the client name the chain hop-by-hop: were the gateway
  // to drop what it names, the client would erase X-Forwarded-For and be taken for the proxy itself (its limits, the
  // address services see). The chain stays as the trusted proxy wrote it.
  it.each([
    { desc: 'X-Forwarded-For', connection: 'X-Forwarded-For' },
    { desc: 'X-Forwarded-For among others', connection: 'keep-alive, x-forwarded-for,X-FORWARDED-HOST' },
  ])('keeps $desc a trusted proxy’s Connection names: no client erases the chain to pose as the proxy', async ({ connection }) => {
    const stack = await startStack({ env: { TRUST_PROXY: 'true', RATE_LIMIT_MAX: '1' }, overrides: { ...limitedRoute, trustedProxies: ['127.0.0.0/8'] } });
    try {
      const headers = { connection, 'x-forwarded-for': '203.0.113.7' };
      expect(await sendWithConnection(stack.gateway.url, '/api/unknown-but-limited', headers)).toBe(200);
      expect(stack.users.requests.at(-1)!.headers['x-forwarded-for']).toBe('203.0.113.7,127.0.0.1');
      // The client's bucket was spent, not the proxy's.
      expect(await statuses(stack, ['203.0.113.7', '127.0.0.1'])).toEqual([429, 200]);
    } finally {
      await stack.close();
    }
  });

  it('passes a trusted Envoy’s forwarding marks (X-Envoy-Internal, -External-Address) on, never its routing or retry orders', async () => {
    const stack = await startStack({ env: { TRUST_PROXY: 'true' }, overrides: { routes: [{ name: 'open', prefix: '/api/open', service: 'users', upstreamPath: '/open', auth: 'public' }], trustedProxies: ['127.0.0.0/8'] } });
    try {
      const headers = { 'x-envoy-internal': 'true', 'x-envoy-external-address': '203.0.113.7', 'x-envoy-retry-on': '5xx', 'x-envoy-original-dst-host': '10.0.0.1:4001', 'l5d-dst-override': 'admin.internal:80' };
      await (await fetch(`${stack.gateway.url}/api/open/1`, { headers })).arrayBuffer();
      const [seen] = stack.users.requests;
      expect(Object.keys(seen!.headers).filter((name) => name.startsWith('x-envoy-') || name.startsWith('l5d-')).sort()).toEqual(['x-envoy-external-address', 'x-envoy-internal']);
    } finally {
      await stack.close();
    }
  });

  // Koa caches ctx.ip on first read and tracing reads it first: the decision has to come before it.
  it('puts the settled client address on the server span, not a spoofed one', async () => {
    const tracing = startInMemoryTracing();
    const stack = await startStack({ tracer: tracing.tracer, env: { TRUST_PROXY: 'true' }, overrides: { ...limitedRoute, trustedProxies: ['10.0.0.0/8'] } });
    try {
      await statuses(stack, ['6.6.6.6']);
      await new Promise((resolve) => setTimeout(resolve, 50));
      const server = tracing.spans().find((span) => span.name.endsWith('/api/unknown-but-limited/*') || span.name.endsWith('/api/unknown-but-limited'));
      expect(server?.attributes[ATTR_CLIENT_ADDRESS]).toBe('127.0.0.1');
    } finally {
      await stack.close();
      await tracing.shutdown();
    }
  });

  it.each([
    { desc: 'trustedProxies without trustProxy', file: { trustedProxies: ['10.0.0.0/8'] }, message: /^config: trustedProxies: need trustProxy true/ },
    { desc: 'a trusted proxy that is a host name', file: { trustProxy: true, trustedProxies: ['proxy.internal'] }, message: /^config: trustedProxies\.0: must be an IP address or CIDR range/ },
    { desc: 'a CIDR prefix out of range', file: { trustProxy: true, trustedProxies: ['10.0.0.0/33'] }, message: /^config: trustedProxies\.0: must be an IP address or CIDR range/ },
  ])('refuses $desc at startup, naming the key', ({ file, message }) => {
    expect(() => parseConfig({ ...shippedConfigFile(), ...file })).toThrow(message);
  });
});
