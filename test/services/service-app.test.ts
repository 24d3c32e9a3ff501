import Router from '@koa/router';
import { HEADER } from '../../otel/wire-names';
import { createServiceApp, ServiceError } from '../../services/shared/service-app';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';

/**
 * The bootstrap every service shares (services/shared/service-app.ts): whatever a service answers with an error,
 * the client gets problem+json with its request id, never Koa's plain-text status line or a 500 for its own mistake.
 */
describe('the services\' shared app', () => {
  let server: TestServer;
  const { logger, lines } = memoryLogger('test-service');

  beforeAll(async () => {
    const router = new Router();
    router.get('/things/:id', (ctx) => void (ctx.body = { id: ctx.params.id }));
    router.post('/things', (ctx) => void (ctx.body = ctx.request.body));
    router.get('/busy', () => {
      throw new ServiceError(503, 'dependency_unavailable', 'The other service is unavailable; try again.');
    });
    server = await listen(createServiceApp({ serviceName: 'test-service', logger, router, signatureAudience: 'test' }).callback());
  });
  afterAll(() => server.close());

  async function problemOf(response: Response) {
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    return (await response.json()) as Record<string, unknown>;
  }

  it.each([
    { desc: 'a path no route serves', method: 'GET', path: '/things/1/extra', status: 404, code: 'not_found', allow: null },
    { desc: 'a method the route does not take', method: 'DELETE', path: '/things/1', status: 405, code: 'method_not_allowed', allow: 'HEAD, GET' },
    { desc: 'a method no route knows', method: 'PURGE', path: '/things/1', status: 501, code: 'not_implemented', allow: 'HEAD, GET' },
    // /health answered every method 200 `ok` (a DELETE too), where every other path enforced its methods.
    { desc: 'a DELETE of /health', method: 'DELETE', path: '/health', status: 405, code: 'method_not_allowed', allow: 'GET, HEAD' },
    { desc: 'a POST to /health', method: 'POST', path: '/health', status: 405, code: 'method_not_allowed', allow: 'GET, HEAD' },
  ])('answers $desc with $status problem+json and the request id (Koa sent text/plain)', async ({ method, path, status, code, allow }) => {
    const response = await fetch(`${server.url}${path}`, { method, headers: { [HEADER.requestId]: `svc-${code}` } });
    expect(response.status).toBe(status);
    expect(response.headers.get('allow')).toBe(allow);
    const problem = await problemOf(response);
    expect(problem).toMatchObject({ type: `urn:koa-gateway:problem:${code}`, status, code, requestId: `svc-${code}`, service: 'test-service' });
    // The service's own path is not the public one its gateway's client sent, and the gateway passes this answer on.
    expect(JSON.stringify(problem)).not.toContain(path);
  });

  it.each(['gzip', 'deflate', 'br'])('answers a body labelled Content-Encoding: %s that is not encoded with 400, not 500', async (coding) => {
    const linesBefore = lines.length;
    const response = await fetch(`${server.url}/things`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': coding, [HEADER.requestId]: `svc-${coding}` }, body: '{"a":1}' });
    expect(response.status).toBe(400);
    expect(await problemOf(response)).toMatchObject({ code: 'bad_request', requestId: `svc-${coding}` });
    // A client's mistake is no error of the service's.
    expect(lines.slice(linesBefore).filter((line) => line.level === 'error')).toEqual([]);
  });

  it('still reads a body that is encoded as it says', async () => {
    const { gzipSync } = await import('node:zlib');
    const response = await fetch(`${server.url}/things`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body: gzipSync('{"a":1}') });
    expect([response.status, await response.json()]).toEqual([200, { a: 1 }]);
  });

  it.each([
    { desc: 'text/plain', contentType: 'text/plain' },
    { desc: 'a form', contentType: 'application/x-www-form-urlencoded' },
    { desc: 'XML', contentType: 'application/xml' },
    { desc: 'no Content-Type at all', contentType: undefined },
  ])('answers a body sent as $desc with 415 naming JSON, not 400 for fields it never read', async ({ contentType }) => {
    const headers: Record<string, string> = { [HEADER.requestId]: 'svc-415' };
    if (contentType) headers['content-type'] = contentType;
    const response = await fetch(`${server.url}/things`, { method: 'POST', headers, body: Buffer.from('{"a":1}') });
    expect(response.status).toBe(415);
    expect(await problemOf(response)).toMatchObject({ code: 'unsupported_media_type', requestId: 'svc-415', detail: expect.stringContaining('application/json') });
  });

  it.each([
    { desc: 'application/json', contentType: 'application/json' },
    { desc: 'application/json with a charset', contentType: 'application/json; charset=utf-8' },
    { desc: 'a +json type', contentType: 'application/merge-patch+json' },
  ])('reads a JSON body sent as $desc', async ({ contentType }) => {
    const response = await fetch(`${server.url}/things`, { method: 'POST', headers: { 'content-type': contentType }, body: '{"a":1}' });
    expect([response.status, await response.json()]).toEqual([200, { a: 1 }]);
  });

  // The body was judged before routing: a wrong method with a text body was 415, with broken JSON 400, a path no
  // route serves with a body over the limit 413.
  it.each([
    { desc: 'a PUT with a text body to a route that takes POST', method: 'PUT', path: '/things', contentType: 'text/plain', body: 'x', status: 405, allow: 'POST' },
    { desc: 'a POST with broken JSON to a route that takes GET', method: 'POST', path: '/things/1', contentType: 'application/json', body: '{', status: 405, allow: 'HEAD, GET' },
    { desc: 'a POST of 2 MiB of JSON to a path no route serves', method: 'POST', path: '/nothing', contentType: 'application/json', body: `[${'1,'.repeat(1024 * 1024)}1]`, status: 404, allow: null },
  ])('answers $desc with the router\'s $status, not a verdict on the body', async ({ method, path, contentType, body, status, allow }) => {
    const response = await fetch(`${server.url}${path}`, { method, headers: { 'content-type': contentType }, body });
    expect([response.status, response.headers.get('allow')]).toEqual([status, allow]);
  });

  // /health is answered unsigned: the id a peer sent was echoed and logged whatever it was.
  it.each([
    { desc: '10 KB', id: 'r'.repeat(10_000) },
    { desc: 'a space and a quote', id: 'a b"c' },
    { desc: 'non-ASCII bytes', id: Buffer.from('idé', 'utf8').toString('latin1') },
  ])('answers a request id of $desc with one of its own, logged in its place', async ({ id }) => {
    const before = lines.length;
    const response = await fetch(`${server.url}/health`, { headers: { [HEADER.requestId]: id } });
    const minted = response.headers.get(HEADER.requestId);
    expect(minted).toMatch(/^[0-9a-f]{32}$/);
    await response.arrayBuffer();
    expect(lines.slice(before).find((line) => line.message === 'request handled')).toMatchObject({ request_id: minted });
  });

  it('takes a POST without a body, whatever its Content-Type says', async () => {
    const response = await fetch(`${server.url}/things`, { method: 'POST', headers: { 'content-type': 'text/plain' } });
    expect(response.status).toBe(200);
  });

  it.each([
    { desc: 'a path no route serves (404)', method: 'GET', path: '/things/1/extra', status: 404 },
    { desc: 'a method the route does not take (405)', method: 'DELETE', path: '/things/1', status: 405 },
    { desc: 'a body that is not JSON (415)', method: 'POST', path: '/things', status: 415, body: 'text' },
    { desc: 'a ServiceError (503)', method: 'GET', path: '/busy', status: 503 },
  ])('answers $desc with Cache-Control: no-store: its body names the request, no shared cache may give it to another', async ({ method, path, status, body }) => {
    const response = await fetch(`${server.url}${path}`, { method, body, headers: { [HEADER.requestId]: 'svc-no-store', 'content-type': 'text/plain' } });
    expect([response.status, response.headers.get('cache-control')]).toEqual([status, 'no-store']);
    expect(await problemOf(response)).toMatchObject({ requestId: 'svc-no-store' });
  });

  it('leaves the caching of an ordinary answer to the route', async () => {
    const response = await fetch(`${server.url}/things/1`, { headers: { [HEADER.requestId]: 'svc-ok' } });
    expect([response.status, response.headers.get('cache-control')]).toEqual([200, null]);
  });

  it('sends Retry-After with a 503, as the gateway does', async () => {
    const response = await fetch(`${server.url}/busy`);
    expect([response.status, response.headers.get('retry-after')]).toEqual([503, '1']);
    expect(await problemOf(response)).toMatchObject({ code: 'dependency_unavailable' });
  });
});
