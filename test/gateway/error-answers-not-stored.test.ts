import { HEADER } from '../../otel/wire-names';
import { login, startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';

/**
 * An error answer's body names the request it answers (`requestId`). A 404 is cacheable by default (RFC 9111
 * 4.2.2): stored by the gateway's cache on a cached route, every later caller got the first caller's request id in
 * the body beside its own in X-Request-Id, and support quoting the body looked up another client's trace. The
 * services and the gateway send such answers with `Cache-Control: no-store`.
 */
describe('error answers that name their request', () => {
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    const routes = (shippedConfigFile().routes as Record<string, unknown>[]).map((route) => (route.name === 'users' ? { ...route, cache: { ttlSeconds: 60 } } : route));
    stack = await startStack({ overrides: { routes } });
    token = await login(stack.gateway.url);
  });
  afterAll(() => stack.close());

  it('a cached route in front of user-service gives each caller of a missing user its own request id in the body', async () => {
    const answers = [];
    for (let attempt = 0; attempt < 2; attempt++) {
      const response = await fetch(`${stack.gateway.url}/api/users/999`, { headers: { authorization: `Bearer ${token}` } });
      const body = (await response.json()) as { code: string; requestId: string };
      answers.push({ status: response.status, code: body.code, bodyId: body.requestId, headerId: response.headers.get(HEADER.requestId), cache: response.headers.get('x-cache'), cacheControl: response.headers.get('cache-control') });
    }
    expect(answers.map((answer) => answer.bodyId)).toEqual(answers.map((answer) => answer.headerId));
    expect(answers.map((answer) => answer.cache)).not.toContain('HIT');
    for (const answer of answers) expect(answer).toMatchObject({ status: 404, code: 'user_not_found', cacheControl: 'no-store' });
    expect(answers[0]!.headerId).not.toBe(answers[1]!.headerId);
  });

  it('leaves a cached route\'s ordinary answers cacheable', async () => {
    const first = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}` } });
    await first.body?.cancel();
    const second = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}` } });
    await second.body?.cancel();
    expect([first.status, second.status, second.headers.get('x-cache'), second.headers.get('cache-control')]).toEqual([200, 200, 'HIT', null]);
  });

  it.each([
    { desc: 'a path no route serves (404)', method: 'GET', path: '/nowhere', status: 404 },
    { desc: 'a request without a token (401)', method: 'GET', path: '/api/orders', status: 401 },
    { desc: 'a method the route does not take (405)', method: 'DELETE', path: '/api/users', status: 405 },
  ])('the gateway answers $desc with Cache-Control: no-store, its body naming the request', async ({ method, path, status }) => {
    const response = await fetch(`${stack.gateway.url}${path}`, { method });
    const body = (await response.json()) as { requestId: string };
    expect([response.status, response.headers.get('cache-control')]).toEqual([status, 'no-store']);
    expect(body.requestId).toBe(response.headers.get(HEADER.requestId));
  });
});
