import http from 'node:http';
import { startInMemoryTracing, requestSpans, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { login, startStack, type TestStack } from '../helpers/stack';

/**
 * `trustTraceparent` beside `trustedProxies`: trace context is a proxy's to pass on, as `X-Forwarded-For` is. Two
 * clients reach one gateway over loopback from different addresses: 127.0.0.2, a listed proxy, and 127.0.0.1, a
 * peer the list does not name (one that reaches the gateway beside the proxy). Before, both had their
 * `traceparent`, `tracestate`, `baggage` and B3 headers continued, so the second chose its trace id, its parent
 * span and its sampling.
 */
const TRACE = '0af7651916cd43dd8448eb211c80319c';
const PARENT = 'b7ad6b7169203331';
const CLIENT_TRACE_CONTEXT = {
  traceparent: `00-${TRACE}-${PARENT}-01`,
  tracestate: 'vendor=client',
  baggage: 'tenant=client-chosen',
  b3: `${TRACE}-${PARENT}-1`,
};
const PROXY = '127.0.0.2';
const DIRECT = '127.0.0.1';

/** A GET from `localAddress` on a connection of its own; resolves once the answer is read. */
function getFrom(localAddress: string, url: string, headers: Record<string, string>): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const request = http.request(url, { headers, localAddress, agent: false }, (response) => {
      response.resume();
      response.on('end', () => resolve(response));
    });
    request.on('error', reject);
    request.end();
  });
}

describe('client trace context with trustTraceparent', () => {
  let tracing: InMemoryTracing;
  let listed: TestStack;
  let unlisted: TestStack;
  let tokens: { listed: string; unlisted: string };

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    listed = await startStack({ tracer: tracing.tracer, env: { TRUST_PROXY: 'true' }, overrides: { trustTraceparent: true, trustedProxies: [`${PROXY}/32`] } });
    unlisted = await startStack({ tracer: tracing.tracer, env: { TRUST_PROXY: 'true' }, overrides: { trustTraceparent: true } });
    tokens = { listed: await login(listed.gateway.url), unlisted: await login(unlisted.gateway.url) };
  });
  afterAll(async () => {
    await listed.close();
    await unlisted.close();
    await tracing.shutdown();
  });

  /** What users-service received for one request from `address`, and the gateway's SERVER span of it. */
  async function from(stack: TestStack, token: string, address: string) {
    const response = await getFrom(address, `${stack.gateway.url}/api/users/1`, { authorization: `Bearer ${token}`, ...CLIENT_TRACE_CONTEXT });
    expect(response.statusCode).toBe(200);
    const seen = stack.users.requests.at(-1)!.headers;
    const { server } = await requestSpans(tracing, String(response.headers['x-request-id']));
    return {
      traceId: String(seen.traceparent).split('-')[1],
      tracestate: seen.tracestate,
      clientBaggage: String(seen.baggage ?? '').includes('tenant=client-chosen'),
      b3: seen.b3,
      serverSpan: { traceId: server.spanContext().traceId, parent: server.parentSpanContext?.spanId },
      traceresponse: String(response.headers.traceresponse).split('-')[1],
    };
  }

  it('continues the trace context of a peer in trustedProxies', async () => {
    expect(await from(listed, tokens.listed, PROXY)).toEqual({
      traceId: TRACE,
      tracestate: 'vendor=client',
      clientBaggage: true,
      b3: CLIENT_TRACE_CONTEXT.b3,
      serverSpan: { traceId: TRACE, parent: PARENT },
      traceresponse: TRACE,
    });
  });

  it('restarts the trace of a peer trustedProxies does not list, and passes none of its trace context on', async () => {
    const seen = await from(listed, tokens.listed, DIRECT);
    expect(seen.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(seen.traceId).not.toBe(TRACE);
    // A new root: the client learns its id from traceresponse; the service sees the gateway's trace only.
    expect(seen).toEqual({ traceId: seen.traceId, tracestate: undefined, clientBaggage: false, b3: undefined, serverSpan: { traceId: seen.traceId, parent: undefined }, traceresponse: seen.traceId });
  });

  it('continues every peer’s trace context when no trustedProxies list is set, as before', async () => {
    for (const address of [PROXY, DIRECT]) {
      expect(await from(unlisted, tokens.unlisted, address)).toMatchObject({ traceId: TRACE, clientBaggage: true, b3: CLIENT_TRACE_CONTEXT.b3, serverSpan: { traceId: TRACE, parent: PARENT } });
    }
  });
});
