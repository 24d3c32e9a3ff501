import Koa from 'koa';
import { HEADER } from '../../otel/wire-names';
import { ERROR_CATALOG, GatewayError, upstreamFailure } from '../../src/errors';
import { createErrorHandler } from '../../src/middleware/errors';
import { createRequestId } from '../../src/middleware/request-id';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';

/**
 * No request through the assembled gateway reaches an `internal` error (every failure it knows of is typed),
 * so the gateway's own error handler and request id run here, over HTTP, in front of a step that throws
 * whatever the row names: exactly what the handler would catch from a middleware with a bug.
 */
const SECRET = 'db-password=hunter2@10.1.2.3';

function connectionRefused(): Error {
  return Object.assign(new Error(`connect ECONNREFUSED ${SECRET}`), { code: 'ECONNREFUSED' });
}

const thrown: Record<string, () => unknown> = {
  '/plain-error': () => new Error(`query failed: ${SECRET}`),
  '/type-error': () => {
    try {
      (JSON.parse('null') as { route: { name: string } }).route.name.trim();
    } catch (error) {
      return Object.assign(error as Error, { message: `${(error as Error).message} ${SECRET}` });
    }
  },
  '/internal-gateway-error': () => new GatewayError('internal', `The route table is inconsistent: ${SECRET}`),
  '/exposed-5xx-http-error': () => Object.assign(new Error(`upstream pool: ${SECRET}`), { status: 500, expose: true }),
  '/non-error-value': () => `thrown string ${SECRET}`,
  '/store-down': () => new GatewayError('rate_limit_unavailable', `Redis at ${SECRET} did not answer.`, { cause: new Error(SECRET) }),
  '/upstream-refused': () => upstreamFailure('orders', connectionRefused()),
  '/upstream-timeout': () => new GatewayError('upstream_timeout', 'The orders service sent nothing for 200 ms.', { cause: new Error(`headers timeout ${SECRET}`) }),
};

describe('error details in 5xx answers', () => {
  let server: TestServer;
  let logs: Record<string, unknown>[];

  beforeAll(async () => {
    const { logger, lines } = memoryLogger('gateway');
    logs = lines;
    const app = new Koa();
    app.use(createRequestId());
    app.use(createErrorHandler({ logger }));
    app.use(async function failing(ctx) {
      throw thrown[ctx.path]!();
    });
    server = await listen(app.callback());
  });
  afterAll(() => server.close());

  async function call(path: string) {
    const response = await fetch(`${server.url}${path}`);
    const text = await response.text();
    return { response, text, body: JSON.parse(text) as Record<string, unknown> };
  }

  it.each([
    { desc: 'a plain Error', path: '/plain-error', code: 'internal' as const, logged: true },
    { desc: 'a TypeError from a programming mistake', path: '/type-error', code: 'internal' as const, logged: true },
    { desc: "a GatewayError 'internal' with its own words", path: '/internal-gateway-error', code: 'internal' as const, logged: true },
    { desc: 'an http error with status 500 that claims expose', path: '/exposed-5xx-http-error', code: 'internal' as const, logged: true },
    // Only an Error cause is described in the log line (describeCause); a bare value is not.
    { desc: 'a thrown value that is not an Error', path: '/non-error-value', code: 'internal' as const, logged: false },
    { desc: 'a 503 that is not about an upstream', path: '/store-down', code: 'rate_limit_unavailable' as const, logged: true },
  ])('answers $desc with the catalog title only, never the internal detail (which the log keeps)', async ({ path, code, logged }) => {
    const logsBefore = logs.length;
    const { response, text, body } = await call(path);
    const { status, title } = ERROR_CATALOG[code];
    expect(response.status).toBe(status);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(body).toEqual({ type: `urn:koa-gateway:problem:${code}`, title, status, detail: title, code, requestId: response.headers.get(HEADER.requestId), instance: path });
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('10.1.2.3');
    if (logged) {
      const failures = logs.slice(logsBefore).filter((entry) => entry.message === 'request failed');
      expect(failures).toEqual([expect.objectContaining({ code, error: expect.stringContaining(SECRET) })]);
    }
  });

  it.each([
    { desc: 'upstream_refused', path: '/upstream-refused', code: 'upstream_refused' as const, detail: 'The orders service refused the connection.' },
    { desc: 'upstream_timeout', path: '/upstream-timeout', code: 'upstream_timeout' as const, detail: 'The orders service sent nothing for 200 ms.' },
  ])("answers $desc with the gateway's own words about its upstream, but never the cause's", async ({ path, code, detail }) => {
    const { response, text, body } = await call(path);
    expect(response.status).toBe(ERROR_CATALOG[code].status);
    expect(body).toMatchObject({ code, detail, requestId: response.headers.get(HEADER.requestId) });
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('10.1.2.3');
  });
});
