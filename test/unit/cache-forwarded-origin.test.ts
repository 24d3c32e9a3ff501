import http from 'node:http';
import net from 'node:net';
import fc from 'fast-check';
import Koa from 'koa';
import { isForwardingHeader } from '../../otel/wire-names';
import { forwardedOrigin, forwardedWithoutClients, heardByService } from '../../src/cache-forwarded-origin';
import { cacheKey } from '../../src/response-cache';
import { upstreamHeadersFor } from '../../src/upstream-headers';

/**
 * The response cache keys the forwarding headers a service is sent (src/cache-forwarded-origin.ts) so that two
 * requests the service may answer differently never share a copy. Held for generated requests from a trusted proxy
 * (the headers as createTrustedProxies leaves them): any two with the same key part are forwarded alike, client
 * addresses aside (X-Forwarded-For and `Forwarded`'s `for=` are left out of the key on purpose).
 */
describe('the cache key of the forwarding headers', () => {
  const app = new Koa();
  app.proxy = true;

  function context(headers: http.IncomingHttpHeaders): Koa.Context {
    const req = new http.IncomingMessage(new net.Socket());
    req.headers = { host: 'gateway.example', ...headers };
    req.method = 'GET';
    req.url = '/api/items';
    req.httpVersion = '1.1';
    const ctx = app.createContext(req, new http.ServerResponse(req));
    ctx.state.requestId = 'request-1';
    return ctx;
  }

  /** What the service is sent of the forwarding family, as the key may see it (client addresses left out). */
  function forwardedToService(ctx: Koa.Context): string {
    const sent = upstreamHeadersFor(ctx, 'service:8080', { underscores: 'drop', forwardAuthorization: false, strippedPrefix: '/api', request: { audience: 'items', method: 'GET', target: '/items' } });
    return Object.keys(sent)
      .filter((name) => isForwardingHeader(name) && name !== 'x-forwarded-for')
      .sort()
      .map((name) => `${name}: ${name === 'forwarded' ? forwardedWithoutClients(String(sent[name])) : String(sent[name])}`)
      .join('\n');
  }

  const names = ['x-forwarded-prefix', 'x-forwarded-port', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-for', 'x-forwarded-server', 'x-forwarded-path', 'forwarded'] as const;
  // Few values each, so that generated requests meet under one key often.
  const values: Record<(typeof names)[number], readonly string[]> = {
    'x-forwarded-prefix': ['/shop', '/evil', '/shop/', '/a,/b'],
    'x-forwarded-port': ['443', '8443'],
    'x-forwarded-host': ['shop.example', 'evil.example'],
    'x-forwarded-proto': ['https', 'http'],
    'x-forwarded-for': ['198.51.100.7', '203.0.113.9'],
    'x-forwarded-server': ['edge-1', 'edge-2'],
    'x-forwarded-path': ['/x', '/y'],
    forwarded: ['for=198.51.100.7;host=shop.example', 'for=203.0.113.9;host=shop.example', 'host=evil.example'],
  };
  const request = fc
    .record({
      present: fc.subarray([...names]),
      picks: fc.array(fc.nat({ max: 3 }), { minLength: names.length, maxLength: names.length }),
      connection: fc.option(fc.subarray([...names, 'keep-alive'], { minLength: 1 }), { nil: undefined }),
    })
    .map(({ present, picks, connection }) => {
      const headers: http.IncomingHttpHeaders = {};
      for (const name of present) {
        const choices = values[name];
        headers[name] = choices[picks[names.indexOf(name)]! % choices.length]!;
      }
      if (connection !== undefined) headers.connection = connection.join(', ');
      return headers;
    });

  /** A second request near the first: another Connection, or one header dropped or spelled otherwise; or any other. */
  const pair = fc.oneof(
    fc.tuple(request, request),
    fc.tuple(request, fc.option(fc.subarray([...names, 'keep-alive'], { minLength: 1 }), { nil: undefined })).map(([headers, connection]) => {
      const other: http.IncomingHttpHeaders = { ...headers };
      delete other.connection;
      if (connection !== undefined) other.connection = connection.join(', ');
      return [headers, other] as const;
    }),
    fc.tuple(request, fc.constantFrom(...names), fc.nat({ max: 3 })).map(([headers, name, pick]) => {
      const other: http.IncomingHttpHeaders = { ...headers };
      if (pick === 3) delete other[name];
      else other[name] = values[name][pick % values[name].length];
      return [headers, other] as const;
    }),
  );

  it('gives one key to requests forwarded alike only, whatever their Connection names', () => {
    let sameKey = 0;
    fc.assert(
      fc.property(pair, ([first, second]) => {
        const [a, b] = [context(first), context(second)];
        if (cacheKey(forwardedOrigin(a, heardByService(a.req.headers))) !== cacheKey(forwardedOrigin(b, heardByService(b.req.headers)))) return;
        sameKey++;
        expect(forwardedToService(b)).toBe(forwardedToService(a));
      }),
      { seed: 1207, numRuns: 3000 },
    );
    // Pairs met under one key often: the property was tested, not passed for want of them.
    expect(sameKey).toBeGreaterThan(300);
  });

  it('keys a prefix its Connection names as the prefix it is forwarded (it was keyed as none)', () => {
    const named = context({ 'x-forwarded-prefix': '/evil', connection: 'x-forwarded-prefix' });
    const none = context({});
    expect(forwardedToService(named)).toContain('x-forwarded-prefix: /evil/api');
    expect(cacheKey(forwardedOrigin(named, heardByService(named.req.headers)))).not.toBe(cacheKey(forwardedOrigin(none, heardByService(none.req.headers))));
  });
});
