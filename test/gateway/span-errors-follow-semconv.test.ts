import { SpanStatusCode } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { ATTR_ERROR_TYPE, ATTR_HTTP_RESPONSE_STATUS_CODE } from '@opentelemetry/semantic-conventions';
import fc from 'fast-check';
import { HEADER } from '../../otel/wire-names';
import { requestSpans, startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { refusedOrigin, scriptedUpstream, type ScriptedAnswer, type TestServer } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { signToken } from '../helpers/tokens';

/**
 * OpenTelemetry HTTP semantic conventions, span status: a 4xx answer is an error on a CLIENT span (the call
 * failed) and not on a SERVER span (the client erred); 5xx is an error on both; `error.type` names what failed
 * (the status code as a string, or the failure when no status came). The gateway's CLIENT spans used to mark
 * only 5xx, and none of its spans carried `error.type` (audit 19, finding 2).
 */
describe('gateway span status and error.type follow the HTTP semantic conventions', () => {
  let tracing: InMemoryTracing;
  let upstream: TestServer;
  let stack: TestStack;
  let token: string;
  let answer: ScriptedAnswer = { status: 200, body: '' };

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    upstream = await scriptedUpstream(() => answer);
    // The proxied routes and the login's credential check all meet the scripted upstream.
    stack = await startStack({ tracer: tracing.tracer, serviceUrls: { users: upstream.url, orders: upstream.url } });
    token = await signToken();
  });
  afterAll(async () => {
    await stack.close();
    await upstream.close();
    await tracing.shutdown();
  });

  const spansOf = (requestId: string) => requestSpans(tracing, requestId);

  const errorOf = (span: ReadableSpan) => ({ status: span.status.code, errorType: span.attributes[ATTR_ERROR_TYPE] });

  it('marks the proxy CLIENT span Error with error.type for every 4xx and 5xx answer, and the SERVER span only for 5xx', async () => {
    let path = 0;
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 200, max: 599 }), async (status) => {
        answer = { status, body: '' };
        const response = await fetch(`${stack.gateway.url}/api/orders/p${++path}`, { headers: { authorization: `Bearer ${token}` } });
        await response.arrayBuffer();
        const { server, clients } = await spansOf(response.headers.get(HEADER.requestId)!);
        expect(clients).toHaveLength(1);
        const client = clients[0]!;
        expect(client.attributes[ATTR_HTTP_RESPONSE_STATUS_CODE]).toBe(status);
        expect(errorOf(client)).toEqual(status >= 400 ? { status: SpanStatusCode.ERROR, errorType: String(status) } : { status: SpanStatusCode.UNSET, errorType: undefined });
        const answered = response.status;
        expect(server.attributes[ATTR_HTTP_RESPONSE_STATUS_CODE]).toBe(answered);
        expect(errorOf(server)).toEqual(answered >= 500 ? { status: SpanStatusCode.ERROR, errorType: String(answered) } : { status: SpanStatusCode.UNSET, errorType: undefined });
      }),
      // The class boundaries always, beside the draws: 40 of 400 values rarely land on 399/400 or 499/500, where an
      // off-by-one (`> 400`, `>= 501`) would show.
      { seed: 19, numRuns: 40, examples: [[399], [400], [499], [500]] },
    );
  });

  it.each([
    { desc: 'wrong credentials (401)', status: 401 },
    { desc: 'an account that may not log in (403)', status: 403 },
  ])('marks the login credential check CLIENT span Error for $desc, and leaves the 4xx SERVER span alone', async ({ status }) => {
    answer = { status, headers: { 'content-type': 'application/problem+json' }, body: '{"code":"x"}' };
    const response = await fetch(`${stack.gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'nope' }) });
    await response.arrayBuffer();
    expect(response.status).toBe(status);
    const { server, clients } = await spansOf(response.headers.get(HEADER.requestId)!);
    expect(clients.map((client) => [client.name, errorOf(client)])).toEqual([['POST', { status: SpanStatusCode.ERROR, errorType: String(status) }]]);
    expect(errorOf(server)).toEqual({ status: SpanStatusCode.UNSET, errorType: undefined });
  });

  it('names the failure as error.type when a call got no answer (refused), and the 502 on the SERVER span', async () => {
    const refusing = await startStack({ tracer: tracing.tracer, serviceUrls: { orders: await refusedOrigin() } });
    try {
      const response = await fetch(`${refusing.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
      await response.arrayBuffer();
      expect(response.status).toBe(502);
      const { server, clients } = await spansOf(response.headers.get(HEADER.requestId)!);
      expect(clients.map(errorOf)).toEqual([{ status: SpanStatusCode.ERROR, errorType: 'refused' }]);
      expect(errorOf(server)).toEqual({ status: SpanStatusCode.ERROR, errorType: '502' });
    } finally {
      await refusing.close();
    }
  });
});
