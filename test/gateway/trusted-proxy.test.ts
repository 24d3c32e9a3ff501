import { startStack, type TestStack } from '../helpers/stack';

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
});
