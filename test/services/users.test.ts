import { createApp } from '../../services/users/app';
import { HEADER, SERVICE_NAME } from '../../otel/wire-names';
import type { Caller } from '../../services/shared/service-app';
import { ALICE, BOB, identityHeaders } from '../helpers/callers';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';

const identity = identityHeaders;

interface Problem {
  type: string;
  status: number;
  code: string;
  detail: string;
  requestId?: string;
  service: string;
}

describe('user-service on its own', () => {
  let users: TestServer;
  let requestCount = 0;
  const nextRequestId = () => `users-test-${++requestCount}`;

  beforeAll(async () => {
    users = await listen((await createApp({ logger: memoryLogger(SERVICE_NAME.users).logger })).callback());
  });
  afterAll(() => users.close());

  async function call(method: string, path: string, init: { caller?: Caller; json?: unknown; body?: string; contentType?: string; requestId?: string } = {}): Promise<Response> {
    const headers: Record<string, string> = { [HEADER.requestId]: init.requestId ?? nextRequestId(), ...(init.caller ? identity(init.caller) : {}) };
    let body: string | undefined = init.body;
    if (init.json !== undefined) body = JSON.stringify(init.json);
    if (body !== undefined) headers['content-type'] = init.contentType ?? 'application/json';
    return fetch(`${users.url}${path}`, { method, headers, body });
  }

  async function userCount(): Promise<number> {
    const response = await call('GET', '/users', { caller: ALICE });
    return ((await response.json()) as unknown[]).length;
  }

  async function expectProblem(response: Response, status: number, code: string, requestId: string): Promise<Problem> {
    expect(response.status).toBe(status);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    const problem = (await response.json()) as Problem;
    expect(problem).toMatchObject({ status, requestId, service: SERVICE_NAME.users });
    expect(problem.code).toBe(code);
    return problem;
  }

  describe('registration', () => {
    const valid = { name: 'Dana', email: 'dana@example.com', password: 'long enough' };

    it.each([
      { desc: 'a missing name', body: JSON.stringify({ email: 'x1@example.com', password: 'long enough' }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a blank name', body: JSON.stringify({ name: '   ', email: 'x2@example.com', password: 'long enough' }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a name over 100 characters', body: JSON.stringify({ name: 'n'.repeat(101), email: 'x3@example.com', password: 'long enough' }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a name over 100 characters as sent, though not once trimmed', body: JSON.stringify({ name: `${' '.repeat(10_000)}Dana`, email: 'x3b@example.com', password: 'long enough' }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      ...['\u0000\u202eAdmin', 'Da\nna', 'Da\u0085na', 'Dana\ud83d', 'Dan\ufffd', 'Da\u2028na', 'Da\u2029na', 'Ad\u200bmin', 'Ad\ufeffmin', 'Ad\u00admin', 'Ad\u2060min', 'Dana\uffff'].map((name, index) => ({ desc: `a name of ${JSON.stringify(name)} (not plain text)`, body: JSON.stringify({ name, email: `plain${index}@example.com`, password: 'long enough' }), contentType: 'application/json', status: 400, code: 'invalid_body' })),
      { desc: 'a malformed email', body: JSON.stringify({ name: 'X', email: 'not-an-email', password: 'long enough' }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a missing email', body: JSON.stringify({ name: 'X', password: 'long enough' }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a password under 8 characters', body: JSON.stringify({ name: 'X', email: 'x4@example.com', password: 'short' }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a password over 128 characters', body: JSON.stringify({ name: 'X', email: 'x5@example.com', password: 'p'.repeat(129) }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a password that is not a string', body: JSON.stringify({ name: 'X', email: 'x6@example.com', password: 12345678 }), contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a JSON array instead of an object', body: '[]', contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a non-JSON body (text/plain)', body: 'name=X&email=x7@example.com&password=long enough', contentType: 'text/plain', status: 415, code: 'unsupported_media_type' },
      { desc: 'a form-encoded body', body: 'name=X&email=x8%40example.com&password=long+enough', contentType: 'application/x-www-form-urlencoded', status: 415, code: 'unsupported_media_type' },
      { desc: 'malformed JSON', body: '{"name": "X", "email": ', contentType: 'application/json', status: 400, code: 'invalid_body' },
      { desc: 'a body over the 1 MiB limit', body: JSON.stringify({ name: 'X', email: 'x9@example.com', password: 'long enough', padding: 'p'.repeat(1024 * 1024) }), contentType: 'application/json', status: 413, code: 'payload_too_large' },
    ])('refuses $desc with $status problem+json and stores nobody', async ({ body, contentType, status, code }) => {
      const before = await userCount();
      const requestId = nextRequestId();
      await expectProblem(await call('POST', '/users', { body, contentType, requestId }), status, code, requestId);
      expect(await userCount()).toBe(before);
    });

    it.each([
      ['null', 'The body must be a JSON object.'],
      ['5', 'The body must be a JSON object.'],
      ['"Dana"', 'The body must be a JSON object.'],
      ['{"name": ', 'The body is not valid JSON.'],
    ])('tells a bare JSON value (%s) from a body that is not JSON', async (body, detail) => {
      const requestId = nextRequestId();
      const problem = await expectProblem(await call('POST', '/users', { body, contentType: 'application/json', requestId }), 400, 'invalid_body', requestId);
      expect(problem.detail).toBe(detail);
    });

    // Plain text is every script's: joiners (Persian, Indic), combining marks, emoji sequences and flags.
    it.each(['Zoë Ångström', '李小龍', '김민준', 'محمد‌رضا', 'שרה', 'देवनागरी', 'ക്‍', 'Nguyễn', 'A\u0301na', '👩‍👩‍👧', '❤️', '🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}'])('registers the name %s', async (name) => {
      const response = await call('POST', '/users', { json: { name, email: `script-${Buffer.from(name).toString('hex').slice(0, 40)}@example.com`, password: 'long enough' } });
      expect(response.status).toBe(201);
      expect(((await response.json()) as { name: string }).name).toBe(name);
    });

    it('registers a valid user as role user and answers 201 with the public profile', async () => {
      const response = await call('POST', '/users', { json: valid });
      expect(response.status).toBe(201);
      const user = (await response.json()) as Record<string, unknown>;
      expect(user).toEqual({ id: expect.any(String), name: 'Dana', email: 'dana@example.com', role: 'user', createdAt: expect.any(String) });
    });

    it('ignores a role in the registration body: nobody registers as admin', async () => {
      const response = await call('POST', '/users', { json: { name: 'Eve', email: 'eve@example.com', password: 'long enough', role: 'admin' } });
      expect(response.status).toBe(201);
      expect(await response.json()).toMatchObject({ role: 'user' });
    });

    it('ignores an id in the registration body: nobody picks whose id (and whose tokens and orders) they get', async () => {
      const response = await call('POST', '/users', { json: { id: '1', name: 'Ivy', email: 'ivy@example.com', password: 'long enough' } });
      expect(response.status).toBe(201);
      expect(((await response.json()) as { id: string }).id).not.toBe('1');
    });

    it('never gives a registration an id given before another start of the service (the store starts empty, tokens live on: the next registrant took the id, tokens and orders of one who registered before the restart)', async () => {
      const registered = async (service: TestServer) => {
        const response = await fetch(`${service.url}/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Jo', email: 'jo@example.com', password: 'long enough' }) });
        expect(response.status).toBe(201);
        return ((await response.json()) as { id: string }).id;
      };
      const ids: string[] = [];
      // Each start of the service with the same history: the demo accounts, then the first registration.
      for (let start = 0; start < 3; start++) {
        const restarted = await listen((await createApp({ logger: memoryLogger(SERVICE_NAME.users).logger })).callback());
        try {
          ids.push(await registered(restarted));
          // The demo accounts are the same people under the same ids at every start.
          const demo = await fetch(`${restarted.url}/users`, { headers: identity(ALICE) });
          expect(((await demo.json()) as { id: string; email: string }[]).filter((user) => user.id === '1' || user.id === '2').map((user) => [user.id, user.email])).toEqual([['1', 'alice@example.com'], ['2', 'bob@example.com']]);
        } finally {
          await restarted.close();
        }
      }
      expect(new Set(ids).size).toBe(3);
      expect(ids).not.toContain('1');
      expect(ids).not.toContain('2');
    });

    it.each([
      { desc: 'the same email', email: 'frank@example.com' },
      { desc: 'the same email in other letter case', email: 'FRANK@Example.COM' },
      { desc: 'a demo account email', email: 'alice@example.com', first: false },
    ])('answers 409 email_taken for $desc', async ({ email, first = true }) => {
      if (first) await call('POST', '/users', { json: { name: 'Frank', email: 'frank@example.com', password: 'long enough' } });
      const before = await userCount();
      const requestId = nextRequestId();
      await expectProblem(await call('POST', '/users', { json: { name: 'Frank again', email, password: 'another one' }, requestId }), 409, 'email_taken', requestId);
      expect(await userCount()).toBe(before);
    });
  });

  it('never puts the password, its hash or its salt in any response', async () => {
    const password = 'Sup3r-Secret-Passw0rd!';
    const texts: string[] = [];
    const register = await call('POST', '/users', { json: { name: 'Grace', email: 'grace@example.com', password } });
    texts.push(await register.text());
    const { id } = JSON.parse(texts[0]!) as { id: string };
    const grace: Caller = { id, role: 'user', email: 'grace@example.com' };
    for (const response of [
      await call('POST', '/users', { json: { name: 'Grace', email: 'grace@example.com', password } }),
      await call('GET', '/users', { caller: ALICE }),
      await call('GET', `/users/${id}`, { caller: grace }),
      await call('GET', `/users/${id}`, { caller: ALICE }),
      await call('POST', '/internal/credentials/verify', { json: { email: 'grace@example.com', password } }),
      await call('POST', '/internal/credentials/verify', { json: { email: 'grace@example.com', password: `${password}x` } }),
    ]) {
      texts.push(await response.text());
    }
    for (const text of texts) {
      expect(text).not.toContain(password);
      expect(text).not.toMatch(/"(password|passwordHash|salt|hash)"/);
    }
  });

  describe('listing users', () => {
    it('lists every user, without secrets, for an admin', async () => {
      const response = await call('GET', '/users', { caller: ALICE });
      expect(response.status).toBe(200);
      const list = (await response.json()) as Record<string, unknown>[];
      expect(list).toEqual(expect.arrayContaining([expect.objectContaining({ id: '1', email: 'alice@example.com', role: 'admin' }), expect.objectContaining({ id: '2', email: 'bob@example.com', role: 'user' })]));
      for (const user of list) expect(Object.keys(user).sort()).toEqual(['createdAt', 'email', 'id', 'name', 'role']);
    });

    it.each([
      { desc: 'a caller with role user', caller: BOB, status: 403, code: 'forbidden' },
      { desc: 'a caller with an unknown role', caller: { ...BOB, role: 'superuser' }, status: 403, code: 'forbidden' },
      { desc: 'a request without identity headers', caller: undefined, status: 401, code: 'missing_identity' },
    ])('refuses $desc with $status', async ({ caller, status, code }) => {
      const requestId = nextRequestId();
      const problem = await expectProblem(await call('GET', '/users', { caller, requestId }), status, code, requestId);
      expect(JSON.stringify(problem)).not.toContain('alice@example.com');
    });
  });

  describe('reading one user', () => {
    it.each([
      { desc: 'a user reads their own profile', caller: BOB, id: '2', status: 200 },
      { desc: 'an admin reads another profile', caller: ALICE, id: '2', status: 200 },
      { desc: 'an admin reads their own profile', caller: ALICE, id: '1', status: 200 },
    ])('answers 200 when $desc', async ({ caller, id, status }) => {
      const response = await call('GET', `/users/${id}`, { caller });
      expect(response.status).toBe(status);
      expect(await response.json()).toMatchObject({ id });
    });

    it.each([
      { desc: 'a user reads another profile', caller: BOB, id: '1', status: 403, code: 'forbidden' },
      { desc: 'a user probes an unknown id', caller: BOB, id: '999', status: 403, code: 'forbidden' },
      { desc: 'an admin reads an unknown id', caller: ALICE, id: '999', status: 404, code: 'user_not_found' },
      { desc: 'there are no identity headers', caller: undefined, id: '1', status: 401, code: 'missing_identity' },
    ])('answers $status $code when $desc', async ({ caller, id, status, code }) => {
      const requestId = nextRequestId();
      await expectProblem(await call('GET', `/users/${id}`, { caller, requestId }), status, code, requestId);
    });
  });

  describe('the credential check the gateway calls', () => {
    it.each([
      { desc: 'the right password', json: { email: 'alice@example.com', password: 'wonderland' } },
      { desc: 'the right password and the email in other letter case', json: { email: 'Alice@Example.com', password: 'wonderland' } },
    ])('answers 200 with id, email and role for $desc', async ({ json }) => {
      const response = await call('POST', '/internal/credentials/verify', { json });
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ id: '1', email: 'alice@example.com', role: 'admin' });
    });

    it.each([
      { desc: 'a wrong password', json: { email: 'alice@example.com', password: 'wonderlanD' }, status: 401, code: 'invalid_credentials' },
      { desc: 'an unknown email', json: { email: 'nobody@example.com', password: 'wonderland' }, status: 401, code: 'invalid_credentials' },
      { desc: 'an empty password', json: { email: 'alice@example.com', password: '' }, status: 401, code: 'invalid_credentials' },
      { desc: 'a missing password', json: { email: 'alice@example.com' }, status: 400, code: 'invalid_body' },
      { desc: 'a password that is not a string', json: { email: 'alice@example.com', password: ['wonderland'] }, status: 400, code: 'invalid_body' },
    ])('answers $status $code for $desc', async ({ json, status, code }) => {
      const requestId = nextRequestId();
      const response = await call('POST', '/internal/credentials/verify', { json, requestId });
      // Every 401 carries a challenge (RFC 9110 11.6.1); this one had none.
      expect(response.headers.get('www-authenticate')).toBe(status === 401 ? 'Bearer realm="koa-gateway"' : null);
      const problem = await expectProblem(response, status, code, requestId);
      expect(JSON.stringify(problem)).not.toContain('wonderland');
    });
  });

  it('echoes the request id on success and answers its own health check', async () => {
    const response = await call('GET', '/health', { requestId: 'users-health-1' });
    expect(response.status).toBe(200);
    expect(response.headers.get(HEADER.requestId)).toBe('users-health-1');
    expect(await response.json()).toEqual({ status: 'ok', service: SERVICE_NAME.users });
  });
});
