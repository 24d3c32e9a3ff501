import http from 'node:http';
import { SpanKind } from '@opentelemetry/api';
import { ATTR } from '../../otel/wire-names';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { listen, refusedOrigin, type TestServer } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** An order-service stand-in that records what reached it and answers with awkward HTTP by path. */
async function startEchoUpstream(): Promise<TestServer & { seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = await listen((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString() });
      if (req.url === '/orders/no-content') {
        res.writeHead(204, 'Nothing Here').end();
        return;
      }
      res.writeHead(201, 'Made It', [
        ['content-type', 'application/json'],
        ['keep-alive', 'timeout=1'],
        ['connection', 'keep-alive, x-upstream-hop'],
        ['x-upstream-hop', 'for the gateway only'],
        ['set-cookie', 'a=1'],
        ['set-cookie', 'b=2'],
        ['x-service', 'orders'],
      ]);
      res.end(JSON.stringify({ ok: true }));
    });
  });
  return Object.assign(server, { seen });
}

/** A raw request, so hop-by-hop headers and bodies on GET go out exactly as written. */
function rawRequest(url: string, init: { method?: string; headers?: http.OutgoingHttpHeaders; body?: string[] }): Promise<{ status: number; statusMessage: string; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: init.method ?? 'GET', headers: init.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, statusMessage: res.statusMessage!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    for (const chunk of init.body ?? []) req.write(chunk);
    req.end();
  });
}

describe('what the proxy forwards, both ways', () => {
  let upstream: Awaited<ReturnType<typeof startEchoUpstream>>;
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    upstream = await startEchoUpstream();
    stack = await startStack({ serviceUrls: { orders: upstream.url } });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await upstream.close();
  });

  it('drops the hop-by-hop request headers, including those the client lists in Connection', async () => {
    await rawRequest(`${stack.gateway.url}/api/orders/1`, {
      headers: { authorization: `Bearer ${token}`, connection: 'keep-alive, x-client-hop', 'x-client-hop': 'secret for the gateway', 'keep-alive': 'timeout=5', 'proxy-authorization': 'Basic Zm9vOmJhcg==', te: 'trailers', 'x-end-to-end': 'kept' },
    });
    const { headers } = upstream.seen.at(-1)!;
    expect(headers['x-client-hop']).toBeUndefined();
    expect(headers['keep-alive']).toBeUndefined();
    expect(headers['proxy-authorization']).toBeUndefined();
    expect(headers.te).toBeUndefined();
    expect(headers['x-end-to-end']).toBe('kept');
    // The target's Host, the client's as X-Forwarded-Host.
    expect(headers.host).toBe(new URL(upstream.url).host);
    expect(headers['x-forwarded-host']).toBe(new URL(stack.gateway.url).host);
    expect(headers['x-forwarded-port']).toBe(new URL(stack.gateway.url).port);
  });

  it('passes status, reason phrase, repeated headers and body back, without the hop-by-hop ones', async () => {
    const response = await rawRequest(`${stack.gateway.url}/api/orders`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: ['{"items":[]}'] });
    expect(response.status).toBe(201);
    expect(response.statusMessage).toBe('Made It');
    expect(response.body).toBe('{"ok":true}');
    expect(response.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    expect(response.headers['x-service']).toBe('orders');
    expect(response.headers['x-upstream-hop']).toBeUndefined();
    expect(response.headers['keep-alive']).not.toBe('timeout=1');
    expect(response.headers['x-request-id']).toEqual(expect.any(String));
    expect(upstream.seen.at(-1)).toMatchObject({ method: 'POST', url: '/orders', body: '{"items":[]}' });
  });

  it('streams a chunked body on, framed for the service (even on a method without a default body)', async () => {
    const response = await rawRequest(`${stack.gateway.url}/api/orders/search`, { method: 'DELETE', headers: { authorization: `Bearer ${token}`, 'transfer-encoding': 'chunked' }, body: ['part one,', 'part two'] });
    expect(response.status).toBe(201);
    const seen = upstream.seen.at(-1)!;
    expect(seen.body).toBe('part one,part two');
    // Chunked again, or with its length when the whole body was in before the upstream connection was.
    if (seen.headers['content-length'] === undefined) expect(seen.headers['transfer-encoding']).toBe('chunked');
    else expect(seen.headers['content-length']).toBe('17');
  });

  it('passes 204 and HEAD answers through without a body', async () => {
    const noContent = await rawRequest(`${stack.gateway.url}/api/orders/no-content`, { headers: { authorization: `Bearer ${token}` } });
    expect(noContent).toMatchObject({ status: 204, statusMessage: 'Nothing Here', body: '' });
    const head = await rawRequest(`${stack.gateway.url}/api/orders/1`, { method: 'HEAD', headers: { authorization: `Bearer ${token}` } });
    expect(head.status).toBe(201);
    expect(head.body).toBe('');
    expect(upstream.seen.at(-1)!.method).toBe('HEAD');
  });

  describe('after a retry on another instance', () => {
    let withDead: TestStack;
    let tracing: InMemoryTracing;
    beforeAll(async () => {
      tracing = startInMemoryTracing();
      withDead = await startStack({ tracer: tracing.tracer, serviceUrls: { orders: `${await refusedOrigin()},${upstream.url}` } });
    });
    afterAll(async () => {
      await withDead.close();
      await tracing.shutdown();
    });

    it('forwards X-Forwarded-For once, not once per attempt', async () => {
      const bearer = await login(withDead.gateway.url);
      // Round robin alternates over the two instances, so whichever it starts at, one of two GETs is refused at
      // the dead one and retried; the trace (one CLIENT span per attempt) says which.
      let retried: Seen | undefined;
      for (let i = 0; i < 2 && !retried; i++) {
        const response = await rawRequest(`${withDead.gateway.url}/api/orders/1?try=${i}`, { headers: { authorization: `Bearer ${bearer}` } });
        expect(response.status).toBe(201);
        const inTrace = () => tracing.spans().filter((span) => span.spanContext().traceId === response.headers['x-request-id']);
        // The server span ends last, once every attempt's span has.
        for (let wait = 0; wait < 200 && !inTrace().some((span) => span.kind === SpanKind.SERVER); wait++) await new Promise((resolve) => setTimeout(resolve, 10));
        const attempts = inTrace()
          .filter((span) => span.kind === SpanKind.CLIENT)
          .map((span) => [span.attributes[ATTR.upstreamAttempts], span.attributes[ATTR.upstreamOutcome]]);
        if (attempts.length > 1) {
          expect(attempts).toEqual([
            [1, 'refused'],
            [2, 'ok'],
          ]);
          retried = upstream.seen.find((seen) => seen.url === `/orders/1?try=${i}`);
        }
      }
      expect(retried).toBeDefined();
      expect(retried!.headers['x-forwarded-for']).toBe('127.0.0.1');
      expect(retried!.headers['x-forwarded-proto']).toBe('http');
    });
  });
});
